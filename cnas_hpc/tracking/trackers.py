"""The trackers a worker's rank 0 reports trials to, besides the terminal."""

from __future__ import annotations

from cnas_hpc.config import Settings
from cnas_hpc.tracking.observer import TrialObserver


def make_trackers(settings: Settings) -> list[TrialObserver]:
    """Trackers configured in ``settings`` (none yet: W&B joins here)."""
    del settings
    return []
