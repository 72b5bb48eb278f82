"""TPE vs random sampling (and the encodings) at equal budgets, over several seeds.

python launch/compare_samplers.py debug=tiny compare.n_trials=8
python launch/compare_samplers.py -m hydra/launcher=submitit_slurm study=postgres ...  # ONE array
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import hydra_plugins.cnas_hpc_launcher.cluster_launcher  # noqa: F401 - silences the schema-matching warning
from cnas_hpc.cli.compare_samplers import run_compare_task
from cnas_hpc.cli.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../configs", config_name="compare_samplers")
def main(cfg: DictConfig) -> int:
    """Hydra task: every array task runs this."""
    return run_compare_task(cfg)


if __name__ == "__main__":
    # A typo in an override: one error line (exit 2) instead of Hydra's multi-line report.
    check_overrides(
        Path(__file__).resolve().parent.parent / "configs", "compare_samplers", sys.argv[1:]
    )
    main()
