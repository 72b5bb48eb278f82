"""Does the label-free score rank cells the way accuracy does? Measure it on your data.

python launch/fidelity.py data=npz data.path=cifar_train.npz data.test_path=cifar_test.npz
python launch/fidelity.py -m hydra/launcher=submitit_slurm study=postgres ...   # ONE array
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import hydra_plugins.cnas_hpc_launcher.cluster_launcher  # noqa: F401 - silences the schema-matching warning
from cnas_hpc.cli.fidelity import run_fidelity_task
from cnas_hpc.cli.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../configs", config_name="fidelity")
def main(cfg: DictConfig) -> int:
    """Hydra task: every array task (and every rank of it) runs this."""
    return run_fidelity_task(cfg)


if __name__ == "__main__":
    # A typo in an override: one error line (exit 2) instead of Hydra's multi-line report.
    check_overrides(Path(__file__).resolve().parent.parent / "configs", "fidelity", sys.argv[1:])
    main()
