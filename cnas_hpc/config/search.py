"""The ``search`` section: the study's budget and objective, shared by every worker."""

from __future__ import annotations

from dataclasses import dataclass

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.common.objectives import OBJECTIVES


@dataclass(frozen=True)
class SearchConfig:
    """The study's budget and objective, shared by every worker.

    ``enqueue`` lists known cells (preset names such as ``DARTS_V2``, or genotype JSON files)
    that the study evaluates first: warm-starting TPE with good cells, or re-scoring them under
    a new proxy. They are enqueued once per study (a rerun does not add them again) and count
    toward ``n_trials``.
    """

    n_trials: int = 8
    objective: str = "val_contrastive_loss"
    max_consecutive_failures: int = 3
    poll_seconds: float = 5.0
    enqueue: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n_trials <= 0:
            raise ConfigError(f"search.n_trials must be > 0, got {self.n_trials}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"search.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        if len(self.enqueue) > self.n_trials:
            raise ConfigError(
                f"search.enqueue lists {len(self.enqueue)} cells, more than search.n_trials="
                f"{self.n_trials}: the budget would be overshot"
            )
        if self.max_consecutive_failures < 1:
            raise ConfigError(
                f"search.max_consecutive_failures must be >= 1, got {self.max_consecutive_failures}"
            )
