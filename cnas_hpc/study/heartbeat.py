"""A heartbeat for ask/tell workers.

Optuna records heartbeats only inside ``study.optimize``; our workers use ask/tell, so a
background thread records them while a trial trains. Unlike Optuna's own thread, this one
survives database errors: it logs, backs off and keeps trying, so a short outage does not
leave a trial without heartbeats while it still trains. A trial is declared stale by other
workers after ``study.grace_period`` seconds without a heartbeat: that period is therefore the
longest database outage a running trial survives (README, "Fault tolerance").

Only global rank 0 runs a heartbeat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from optuna.storages import RDBStorage

from cnas_hpc.study.retry import describe_failure

log = logging.getLogger(__name__)


class BeatThread:
    """Context manager running :meth:`_run` on a daemon thread between entry and exit.

    The base of every heartbeat (a trial's, :class:`Heartbeat`; a claimed row's,
    ``study.row_claims.RowHeartbeat``). A subclass implements :meth:`_run`, which must return
    soon after :attr:`_stop` is set. Exit sets it and waits at most 10 s for the thread: a beat
    stuck on an unreachable database must not hold the worker (the thread is a daemon).

    Args:
        name: the thread's name (shown in stack dumps).
    """

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Heartbeat(BeatThread):
    """Context manager recording heartbeats of one RUNNING trial every ``interval`` seconds."""

    def __init__(
        self,
        storage: RDBStorage,
        trial_id: int,
        interval: float,
        release: Callable[[], None] | None = None,
    ) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._interval = interval
        #: called after each beat: a trial that trains for hours holds no idle connection
        self._release = release
        self.failures = 0
        super().__init__("cnas-heartbeat")

    def _beat(self) -> None:
        try:
            self._storage.record_heartbeat(self._trial_id)
            self.failures = 0
        except Exception as exc:  # an outage must not kill the thread
            self.failures += 1
            log.warning(
                "heartbeat of trial id %d failed (%s); retrying",
                self._trial_id,
                describe_failure(exc),
            )
        finally:
            if self._release is not None:
                self._release()

    def _run(self) -> None:
        while True:
            self._beat()
            # Retry sooner after a failure, so the outage costs at most a few seconds of grace.
            wait = self._interval if self.failures == 0 else min(self._interval, 2.0)
            if self._stop.wait(wait):
                return
