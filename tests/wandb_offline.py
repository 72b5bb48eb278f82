"""Reading W&B offline runs back, as the tests check what a run really wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class OfflineRun:
    """What one offline run holds, merged from its transaction log's records."""

    folder: Path
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    def series(self, key: str) -> list[Any]:
        """The values of ``key`` in history order (rows without it skipped)."""
        return [row[key] for row in self.history if key in row]


def read_run(folder: Path) -> OfflineRun:
    """Read an offline run folder with ``wandb leet inspect --json`` (one JSON record a line)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    # The reader is the test's instrument, not the code under test: under .ci/floors.py (which
    # puts the floor releases first on PYTHONPATH) it is the project environment's newest wandb,
    # since `wandb leet` is younger than the wandb floor the code itself needs.
    floors_dir = os.environ.get("CNAS_FLOORS_DIR")
    if floors_dir:
        paths = env.get("PYTHONPATH", "").split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p and p != floors_dir)
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    run = OfflineRun(folder)
    for line in out.splitlines():
        record = json.loads(line)
        kind = record["type"]
        body = record.get(kind, {})
        if kind == "run":
            run.name = body.get("display_name", "")
            run.group = body.get("run_group", "")
            run.job_type = body.get("job_type", "")
            run.tags = list(body.get("tags", []))
            run.config.update(body.get("config", {}).get("update", {}))
        elif kind == "config":
            run.config.update(body.get("update", {}))
        elif kind == "history":
            run.history.append(body["item"])
        elif kind == "summary":
            run.summary.update(body.get("update", {}))
        elif kind == "exit":
            run.exit_code = int(body.get("exit_code", 0))
    return run


def offline_runs(root: Path) -> list[OfflineRun]:
    """Every offline run under the ``dir`` given to wandb, by start time."""
    return [read_run(folder) for folder in sorted((root / "wandb").glob("offline-run-*"))]
