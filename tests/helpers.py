"""Shared helpers of the test suite (not fixtures: those live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cnas_hpc.config import Settings, settings_from_config
from hydra_plugins.cnas_hpc_launcher.cluster_launcher import HELD_STATES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

#: Overrides that make a search run in seconds on a 2-core CPU.
TINY = (
    "debug=tiny",
    "search.poll_seconds=0.5",
)


def compose_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose the real search config with ``overrides`` and return it resolved (no hydra node)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="search", overrides=list(overrides))
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container  # type: ignore[return-value]


def tiny_settings(tmp_path: Path, *overrides: str) -> Settings:
    """Validated settings of a tiny search whose SQLite study lives under ``tmp_path``."""
    return settings_from_config(compose_config([*TINY, f"output_dir={tmp_path}", *overrides]))


def run_launch(
    script: str,
    args: Sequence[str],
    *,
    home: Path,
    cwd: Path = ROOT,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``launch/<script>`` as a user would, in a subprocess (stdout/stderr captured)."""
    full_env = {**os.environ, "CNAS_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "launch" / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_search(
    args: Sequence[str], *, home: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``launch/search.py`` as a user would (see :func:`run_launch`)."""
    return run_launch("search.py", args, home=home, timeout=timeout, env=env)


def sacct_array_tasks(array_job_id: str, timeout: float = 120.0) -> list[str]:
    """``JobID|State`` per array task once no task is still settling.

    submitit reads a task as done as soon as its result file exists; the task's process and
    slurmctld's report to slurmdbd can lag that by seconds on a loaded node, so this polls for the
    final accounting states instead of reading them once.
    """
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", array_job_id, "-o", "JobID,State"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        tasks = [line for line in out.splitlines() if line.strip()]
        settling = [t for t in tasks if t.rpartition("|")[2].strip().split(" ")[0] in HELD_STATES]
        if not settling or time.monotonic() > deadline:
            return tasks
        time.sleep(1.0)


#: The real CIFAR-10 arrays shared with the project (``../shared/data/cifar10``).
CIFAR10_DIR = ROOT.parent / "shared" / "data" / "cifar10"


def cifar10_npz() -> tuple[Path, Path]:
    """``(train_10k, test)`` npz paths; skip when absent (a user's machine), FAIL in CI."""
    train, test = CIFAR10_DIR / "cifar10_train_10k.npz", CIFAR10_DIR / "cifar10_test.npz"
    if not (train.is_file() and test.is_file()):
        reason = f"the CIFAR-10 arrays are not in {CIFAR10_DIR}"
        if os.environ.get("CI", "").strip().lower() in {"true", "1"}:
            pytest.fail(f"{reason} (CI=true: they must be there)", pytrace=False)
        pytest.skip(reason)
    return train, test


def run_evaluate(
    args: Sequence[str], *, home: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``launch/evaluate.py`` as a user would (see :func:`run_launch`)."""
    return run_launch("evaluate.py", args, home=home, timeout=timeout, env=env)
