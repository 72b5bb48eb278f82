"""A worker's process memory does not grow with the number of trials it runs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cnas_hpc.search.observer import TrialInfo
from cnas_hpc.search.worker import run_worker
from cnas_hpc.study.lifecycle import bootstrap_study
from tests.helpers import tiny_settings


def rss_mb() -> float:
    with Path(f"/proc/{os.getpid()}/statm").open() as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class MemoryRecorder:
    """A tracker that samples the resident set size after every trial."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def trial_started(self, info: TrialInfo, *, n_params: int, macs: int) -> None:
        pass

    def step(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        pass

    def trial_finished(self, state: str, value: float | None, summary: Mapping[str, Any]) -> None:
        self.samples.append(rss_mb())

    def study_updated(self, complete: int, best: float | None) -> None:
        pass

    def close(self) -> None:
        pass


def test_memory_stays_flat_over_many_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = MemoryRecorder()
    s = tiny_settings(tmp_path, "search.n_trials=14", "data.fraction=0.1", "train.batch_size=16")
    bootstrap_study(s)
    run_worker(s, observers=lambda study: [recorder])
    assert len(recorder.samples) == 14
    warm = recorder.samples[3]  # allocator pools and caches are warm after a few trials
    growth = max(recorder.samples[4:]) - warm
    assert growth < 40, f"RSS grew by {growth:.0f} MiB over 10 trials: {recorder.samples}"
