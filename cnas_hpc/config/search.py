"""The ``search`` section: the study's budget and objective, shared by every worker."""

from __future__ import annotations

from dataclasses import dataclass

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.common.objectives import OBJECTIVES

#: ``none``, or the zero-cost proxy that screens proposals before contrastive training.
SCREENS = ("none", "naswot", "synflow")

#: ``none``, or an Optuna pruner asked after every epoch (multi-fidelity search).
PRUNERS = ("none", "median", "successive_halving", "hyperband")


@dataclass(frozen=True)
class SearchConfig:
    """The study's budget and objective, shared by every worker.

    ``enqueue`` lists known cells (preset names such as ``DARTS_V2``, or genotype JSON files)
    that the study evaluates first: warm-starting TPE with good cells, or re-scoring them under
    a new proxy. They are enqueued once per study (a rerun does not add them again) and count
    toward ``n_trials``.

    Multi-fidelity pruning (opt-in): with ``pruner`` set, rank 0 reports the objective after
    every epoch and asks the pruner whether to stop the candidate; a pruned candidate is told
    PRUNED (its last epoch's value is what TPE learns from) and does not count toward
    ``n_trials``.

    Attributes:
        enqueue: known cells evaluated first (see above).
        pruner: ``none`` | ``median`` (stop a trial worse than the median of earlier trials at
            the same epoch) | ``successive_halving`` (keep the best ``1/reduction_factor`` at
            each rung) | ``hyperband`` (several successive-halving brackets).
        pruner_startup_trials: median: trials that finish before any is pruned.
        pruner_warmup_epochs: median: epochs a trial trains before it may be pruned.
        pruner_min_epochs: successive_halving / hyperband: epochs of the first rung.
        pruner_reduction_factor: successive_halving / hyperband: 1 in this many trials is
            promoted to the next rung.
        screen: Two-stage search (opt-in): ``naswot`` | ``synflow`` scores every proposal's
            untrained cell first (seconds); one below the ``1 - screen_keep`` quantile of the
            study's earlier proposals is told PRUNED without contrastive training
            (``cnas:screened``; like a pruned trial it does not count toward ``n_trials`` and
            TPE learns to avoid it). ``none``: every proposal is trained. Moot for a zero-cost
            objective (nothing is trained). ``configs/search.yaml`` turns it on (``naswot``):
            README "Does the proxy work?" says why.
        screen_keep: Share of proposals the screen lets through, in ``(0, 1]``.
        screen_startup: Proposals scored before the screen refuses any.
    """

    n_trials: int = 8
    objective: str = "val_contrastive_loss"
    max_consecutive_failures: int = 3
    poll_seconds: float = 5.0
    enqueue: tuple[str, ...] = ()
    pruner: str = "none"
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 1
    pruner_min_epochs: int = 1
    pruner_reduction_factor: int = 3
    screen: str = "none"
    screen_keep: float = 0.5
    screen_startup: int = 8

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
        if self.screen not in SCREENS:
            raise ConfigError(
                f"search.screen must be one of {', '.join(SCREENS)}, got {self.screen!r}"
            )
        if not 0.0 < self.screen_keep <= 1.0:
            raise ConfigError(f"search.screen_keep must be in (0, 1], got {self.screen_keep}")
        if isinstance(self.screen_startup, bool) or self.screen_startup < 0:
            raise ConfigError(
                f"search.screen_startup must be an integer >= 0, got {self.screen_startup!r}"
            )
        if self.pruner not in PRUNERS:
            raise ConfigError(
                f"search.pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}"
            )
        for key, minimum in (
            ("pruner_startup_trials", 0),
            ("pruner_warmup_epochs", 0),
            ("pruner_min_epochs", 1),
            ("pruner_reduction_factor", 2),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"search.{key} must be an integer >= {minimum}, got {value!r}")
