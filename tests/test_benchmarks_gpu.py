"""``benchmarks/gpu.sh`` stays runnable where no GPU is lent: its shell is valid and its driver
runs every check on the CPU at tiny sizes (``--dry-run``), CUDA-only rows marked skipped.

The GPU numbers themselves come from a run on a GPU node (see README "Benchmarks").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

ROWS = (
    "candidate: eager NCHW fp32 + loss.item() per step",
    "candidate: plan chosen by the autotuner",
    "reference pipeline: DataLoader",
    "evaluation network",
    "worker process group, world size 1",
    "AMP fp16 with the grad scaler",
    "memory bank on the device",
    "no host sync inside a training step",
    "real CUDA OOM -> PRUNED, memory released",
    "end-to-end search (launch/search.py)",
    "the CUDA tests that skip on CPU",
)


def test_the_gpu_scripts_parse() -> None:
    for script in ("gpu.sh", "gpu_prepare.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], check=True)


@pytest.mark.cost(25)
def test_gpu_sh_dry_run_runs_every_check_on_the_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run", "--data", "/nonexistent.npz"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / "gpu_results.md").read_text()
    for row in ROWS:
        assert f"| {row}" in table, row
    assert "FAILED" not in table and "| FAIL |" not in table, table
    assert "| PASS |" in table  # the CPU-capable paths really ran
