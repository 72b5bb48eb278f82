"""Train found cells from scratch and compare them with published cells (the evaluation phase).

python launch/evaluate.py eval.from_study=cnas-digits-compact eval.top_k=2 eval.presets=[DARTS_V2]
python launch/evaluate.py -m hydra/launcher=submitit_slurm study=postgres eval.from_study=nas \\
    eval.top_k=4 eval.presets=[DARTS_V2] data.root=/data        # ONE array, one cell per task
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import hydra_plugins.cnas_hpc_launcher.cluster_launcher  # noqa: F401 - silences the schema-matching warning
from cnas_hpc.cli.evaluate import run_evaluate_task
from cnas_hpc.cli.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> int:
    """Hydra task: every array task (and every rank of it) runs this."""
    return run_evaluate_task(cfg)


if __name__ == "__main__":
    # A typo in an override: one error line (exit 2) instead of Hydra's multi-line report.
    check_overrides(Path(__file__).resolve().parent.parent / "configs", "evaluate", sys.argv[1:])
    main()
