"""The trackers a worker's rank 0 reports trials to, besides the terminal."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cnas_hpc.config import Settings
from cnas_hpc.tracking.observer import TrialObserver
from cnas_hpc.tracking.wandb_tracker import WandbTracker, wandb_config_of

if TYPE_CHECKING:
    import optuna


def make_trackers(
    settings: Settings, *, study: Callable[[], optuna.Study] | None = None
) -> list[TrialObserver]:
    """Trackers configured in ``settings``: a :class:`WandbTracker` unless W&B is disabled.

    Args:
        settings: the search's settings (``settings.wandb`` picks the W&B mode).
        study: returns the worker's already loaded study, so the W&B study view reuses its
            connection; default: the tracker loads the study itself when it first needs it.

    Returns:
        The trackers, in the order they are called (empty when nothing is configured).
    """
    if not wandb_config_of(settings).enabled:
        return []
    return [WandbTracker(settings, study=study)]
