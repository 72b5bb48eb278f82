"""Fan-out to observers whose failures must never break the observed work (tracking is best
effort: the study, not a tracker, is the source of truth)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


class ObserverGroup:
    """Observers called together; a failing observer never breaks the work it observes.

    The apps (search, evaluation) hold one each, on global rank 0 only. The observers follow
    the app's own protocol; this class only fans a call out and contains failures.
    """

    def __init__(self, observers: Sequence[object] = ()) -> None:
        self.observers = list(observers)

    def notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call ``method`` on every observer; an exception is logged, not raised."""
        for observer in self.observers:
            try:
                getattr(observer, method)(*args, **kwargs)
            except Exception:  # tracking is best effort by contract
                log.warning("observer %s.%s failed", type(observer).__name__, method, exc_info=True)
