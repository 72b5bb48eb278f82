"""Status and pictures of a search: who runs what, what a resume would do, the best cells so far.

python launch/report.py                                    # the default search's study
python launch/report.py study=postgres experiment=csnas_paper report.top_k=10

Give it the same overrides as the search: they address the same study. Read-only: a missing
study is an error (exit 2), never created.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import hydra_plugins.cnas_hpc_launcher.cluster_launcher  # noqa: F401 - silences the schema-matching warning
from cnas_hpc.cli.overrides import check_overrides
from cnas_hpc.cli.report import report_task


@hydra.main(version_base="1.3", config_path="../configs", config_name="report")
def main(cfg: DictConfig) -> int:
    """Hydra task: print the status and write the report (see ``cnas_hpc.analysis.report``)."""
    return report_task(cfg)


if __name__ == "__main__":
    # A typo in an override: one error line (exit 2) instead of Hydra's multi-line report.
    check_overrides(Path(__file__).resolve().parent.parent / "configs", "report", sys.argv[1:])
    main()
