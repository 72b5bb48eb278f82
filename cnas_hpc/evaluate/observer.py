"""The evaluation app's observer protocol: what it tells trackers (terminal, W&B) about cells.

The app owns this protocol and knows trackers only through it: the command-line layer builds
the observers and hands them to :func:`cnas_hpc.evaluate.app.run_evaluation`.

Contract: only global rank 0 holds observers. For every cell it trains, the app calls
``cell_started`` once, then ``epoch`` any number of times, then ``cell_finished`` exactly once
(also when training raised or was preempted); ``close`` once when it stops. Observers never
raise into the app (the app also guards every call).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cnas_hpc.space.genotype import Genotype

#: ``job_type`` of an evaluation's W&B runs (the search's are ``search-trial``).
EVALUATION_JOB_TYPE = "evaluation"


@dataclass(frozen=True)
class EvalInfo:
    """Identity of one cell's evaluation on one task (no secrets: safe to log anywhere)."""

    name: str
    cell_index: int
    cell_key: str
    genotype: Genotype
    method: str
    protocol_name: str
    epochs: int
    worker: str
    world_size: int
    study_name: str | None = None
    trial_number: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: 0 for a fresh start; k > 0 for the k-th resumed segment.
    segment: int = 0
    #: the epoch training resumes from (0 for a fresh start).
    start_epoch: int = 0


class EvalObserver(Protocol):
    """Receives the life of each evaluated cell on rank 0."""

    def cell_started(self, info: EvalInfo, *, n_params: int, macs: int) -> None:
        """Training of ``info``'s cell begins (or resumes)."""

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        """Per-epoch metrics (train_loss, train_accuracy, test_accuracy, lr, images_per_s)."""

    def cell_finished(self, state: str, summary: Mapping[str, Any]) -> None:
        """The cell ended in ``state`` (COMPLETE, FAIL, INTERRUPTED) with its results."""

    def close(self) -> None:
        """The app stops: release what the observer holds."""
