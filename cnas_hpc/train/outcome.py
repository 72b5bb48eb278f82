"""What training reports: per-epoch metrics, the final result, and why it stopped early."""

from __future__ import annotations

from dataclasses import dataclass, field


class TrainingAbortedError(RuntimeError):
    """Training stopped early for a reason that is not a bug of the caller.

    Every rank of a process group raises it together, with the same reason (the decision was
    agreed across ranks first).

    Attributes:
        reason: short machine-readable reason: ``non_finite_loss``, ``out_of_memory``,
            ``pruned`` (the caller's epoch callback asked for it, e.g. a multi-fidelity
            pruner) or ``stopped`` (a stop request; the state was checkpointed first).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class EpochMetrics:
    """Metrics of one finished epoch of the proxy task (identical on every rank)."""

    epoch: int
    train_loss: float
    val_loss: float | None
    knn_accuracy: float | None
    images_per_s: float
    lr: float


@dataclass
class TrainResult:
    """Outcome of a finished candidate; ``objective(name)`` picks the value a study is told."""

    train_loss: float
    val_loss: float | None
    knn_accuracy: float | None
    epochs_done: int
    steps: int
    wall_s: float
    images_per_s: float
    history: list[EpochMetrics] = field(default_factory=list)
    #: the epoch training resumed from (None: trained from scratch).
    resumed_from_epoch: int | None = None
    #: how the steps ran (:attr:`cnas_hpc.train.plan.StepPlan.name`).
    plan: str = ""

    def objective(self, name: str) -> float:
        """The value of objective ``name`` (see :mod:`cnas_hpc.common.objectives`)."""
        value = {
            "train_contrastive_loss": self.train_loss,
            "val_contrastive_loss": self.val_loss,
            "knn_accuracy": self.knn_accuracy,
        }[name]
        if value is None:
            raise ValueError(f"objective {name} was not computed for this trial")
        return value
