"""The search worker's observer protocol: what it tells trackers (terminal, W&B) about trials.

The worker owns this protocol and knows trackers only through it: the observers are built by
the command-line layer and handed to :func:`cnas_hpc.search.worker.run_worker`, so no tracker
(nor any study analysis) is imported by a worker.

Contract: only global rank 0 of a worker holds observers and calls them. The worker calls
``study_updated`` after every claim; for every trial it trains, ``trial_started`` once, then
``step``/``epoch`` any number of times, then ``trial_finished`` exactly once, also when
training raised (a trial that fails before it starts training gets ``trial_finished`` alone);
and ``close`` once when it stops. An observer must never raise into the worker (the worker
also guards every call): tracking is best effort, the study is the source of truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cnas_hpc.space.genotype import Genotype


@dataclass(frozen=True)
class TrialInfo:
    """Identity of one trial run by one worker (no secrets: safe to log anywhere)."""

    study_name: str
    number: int
    genotype: Genotype
    params: Mapping[str, Any]
    worker: str
    worker_index: int
    world_size: int
    array_job_id: str | None = None
    array_task_id: int | None = None
    hparams: Mapping[str, Any] = field(default_factory=dict)
    #: 0 for a fresh trial; k > 0 for the k-th resumed segment of the same trial.
    segment: int = 0
    #: the epoch training resumes from (0 for a fresh trial).
    start_epoch: int = 0


class TrialObserver(Protocol):
    """Receives the life of each trial on rank 0."""

    def trial_started(self, info: TrialInfo, *, n_params: int, macs: int) -> None:
        """Training of ``info`` begins."""

    def step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Per-step metrics (loss, lr, images_per_s, memory_mb)."""

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        """Per-epoch metrics (train_loss, val_loss, knn_accuracy, objective)."""

    def trial_finished(self, state: str, value: float | None, summary: Mapping[str, Any]) -> None:
        """The trial ended in ``state`` (COMPLETE, FAIL, PRUNED, INTERRUPTED).

        ``summary["trial"]`` is always its number (also when it failed before
        ``trial_started``, e.g. while its network was built); ``fail_reason``, ``wall_s`` (all
        its segments), sizes and losses when known.
        """

    def study_updated(self, complete: int, best: float | None) -> None:
        """The study holds ``complete`` COMPLETE trials (all workers), best value ``best``."""

    def close(self) -> None:
        """The worker stops: release what the observer holds (bars, runs)."""
