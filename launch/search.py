"""Run a label-free architecture search (one worker; or an array of them with ``-m``).

python launch/search.py                                   # embedded default, local CPU
python launch/search.py -m hydra/launcher=submitit_slurm 'worker=range(16)' study=postgres
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import hydra_plugins.cnas_hpc_launcher.cluster_launcher  # noqa: F401 - silences the schema-matching warning
from cnas_hpc.cli.overrides import check_overrides
from cnas_hpc.cli.search import run_search_task


@hydra.main(version_base="1.3", config_path="../configs", config_name="search")
def main(cfg: DictConfig) -> int:
    """Hydra task: every worker (and every rank of it) runs this."""
    return run_search_task(cfg)


if __name__ == "__main__":
    # A typo in an override: one error line (exit 2) instead of Hydra's multi-line report.
    check_overrides(Path(__file__).resolve().parent.parent / "configs", "search", sys.argv[1:])
    main()
