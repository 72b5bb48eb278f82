"""Preemption and timeout: turn submitit's checkpoint signal into a clean stop of the trial.

submitit installs a USR2 handler in every task of a job; on global rank 0 it calls the
launcher's ``checkpoint()`` (Hydra's submitit launcher resubmits the same task), requeues the
job and exits at once — in the middle of whatever the process was doing. This module wraps that
handler: the signal only raises a flag; the training loop polls it every step, so all ranks agree
to stop at a step boundary (a signal that reaches only rank 0 still stops every rank), the trial
state is checkpointed, and only then does rank 0 hand over to submitit's handler to requeue.
After the requeue, the Hydra task function starts from the top and the worker resumes the same
trial from its checkpoint (see :meth:`cnas_hpc.search.owner.TrialOwner.adopt_in_flight`).

With ``interrupt=True`` (the evaluation's local runs) a first SIGINT (Ctrl-C) raises the same
flag, and :attr:`Preemption.interrupted` says so: the caller checkpoints, hands its work back
and exits 130 instead of printing a traceback. A second SIGINT is Python's KeyboardInterrupt
again (the user insists).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


class Preemption:
    """Owns the USR2 handler of this process while a worker runs.

    Use as ``with Preemption() as preemption: ... preemption.requested ...``.
    """

    SIGNAL = signal.SIGUSR2

    def __init__(self, *, interrupt: bool = False) -> None:
        self.requested = False
        #: a SIGINT (not a preemption) asked to stop: nothing is requeued
        self.interrupted = False
        self._interrupt = interrupt
        self._previous: Any = None
        self._previous_int: Any = None
        self._frame: FrameType | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.warning("received %s: stopping at the next step boundary", signal.Signals(signum).name)
        self.requested = True
        self._frame = frame

    def _handle_interrupt(self, signum: int, frame: FrameType | None) -> None:
        # Logged only: the caller prints the one line the user reads.
        log.info("SIGINT: stopping at the next step boundary")
        self.requested = self.interrupted = True
        signal.signal(signal.SIGINT, self._previous_int or signal.default_int_handler)

    def __enter__(self) -> Preemption:
        self._previous = signal.getsignal(self.SIGNAL)
        signal.signal(self.SIGNAL, self._handle)
        if self._interrupt:
            self._previous_int = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(self.SIGNAL, self._previous or signal.SIG_DFL)
        if self._interrupt:
            signal.signal(signal.SIGINT, self._previous_int or signal.default_int_handler)

    def hand_over(self) -> None:
        """Run the handler that was there before (submitit's: checkpoint, requeue, exit).

        Without one (a local run), raise :class:`KeyboardInterrupt`-like ``SystemExit``: the
        trial stays RUNNING with its checkpoint and is resumed by its retry.
        """
        previous = self._previous
        signal.signal(self.SIGNAL, previous or signal.SIG_DFL)
        if callable(previous):
            log.info("handing over to the job's checkpoint handler (requeue)")
            previous(self.SIGNAL, self._frame)
        raise SystemExit(
            f"stopped by {self.SIGNAL.name}; the trial will resume from its checkpoint"
        )
