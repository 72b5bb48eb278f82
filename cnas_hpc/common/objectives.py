"""The value a trial reports to the study, and which way is better (ground floor: pure data)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

Direction = Literal["minimize", "maximize"]

#: objective name -> study direction. The first is the default.
OBJECTIVES: Final[dict[str, Direction]] = {
    # Contrastive loss on held-out unlabeled images, same fixed views for every trial.
    "val_contrastive_loss": "minimize",
    # Mean contrastive loss of the last training epoch (what the reference code reports).
    "train_contrastive_loss": "minimize",
    # Leave-one-out kNN accuracy on a small labeled split: NOT label-free, off by default.
    "knn_accuracy": "maximize",
    # Zero-cost proxies of the untrained network (seconds per cell, no contrastive training):
    # NASWOT's log-determinant of the activation-code kernel, and data-free synflow (log).
    "naswot": "maximize",
    "synflow": "maximize",
}

#: Objectives computed on the untrained network: a trial with one of these trains nothing.
ZERO_COST_OBJECTIVES: Final = ("naswot", "synflow")

#: The cell's cost at EVALUATION size (``cost`` section), all minimised: parameters (as DARTS
#: counts them, auxiliary head excluded), multiply-adds of one image, and the median forward
#: latency on ``cost.device``. Objectives of ``search.objectives`` and the names a
#: ``search.constraints`` limit may use.
COST_OBJECTIVES: Final[dict[str, Direction]] = {
    "params": "minimize",
    "macs": "minimize",
    "latency_ms": "minimize",
}

#: Costs known before a cell is trained AND cheap: a constraint on them is checked first.
STATIC_COSTS: Final = ("params", "macs")

#: Every name ``search.objectives`` may list (besides ``score``, the alias of search.objective).
SEARCH_OBJECTIVES: Final[dict[str, Direction]] = {**OBJECTIVES, **COST_OBJECTIVES}


def ranked_by_mean_rank(objectives: Sequence[str]) -> bool:
    """Whether a study of ``objectives`` ranks its cells by their mean rank over them: several
    label-free objectives, no cost (the default ``[val_contrastive_loss, naswot]``)."""
    return len(objectives) > 1 and all(name in OBJECTIVES for name in objectives)


def is_cost(objective: str) -> bool:
    """Whether ``objective`` is a cost of the evaluation-size network (no training needed)."""
    return objective in COST_OBJECTIVES


def is_trained(objective: str) -> bool:
    """Whether ``objective`` needs the cell's contrastive proxy training."""
    return objective in OBJECTIVES and not is_zero_cost(objective)


def is_zero_cost(objective: str) -> bool:
    """Whether ``objective`` is a zero-cost proxy (no contrastive training needed)."""
    return objective in ZERO_COST_OBJECTIVES


def direction_of(objective: str) -> Direction:
    """Study direction for ``objective``.

    Raises:
        ValueError: unknown objective.
    """
    try:
        return SEARCH_OBJECTIVES[objective]
    except KeyError:
        raise ValueError(
            f"unknown objective {objective!r} (known: {', '.join(SEARCH_OBJECTIVES)})"
        ) from None
