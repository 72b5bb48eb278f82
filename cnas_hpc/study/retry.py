"""Retrying study operations through database outages: the ONE notion of a transient failure.

Contract:
    * :func:`is_transient` is the only place that decides whether a database failure is worth
      retrying; the storage layer (:mod:`cnas_hpc.study.storage`,
      :mod:`cnas_hpc.study.lifecycle`) raises :class:`~cnas_hpc.common.errors.StudyUnreachableError`
      for what it calls transient, so a worker that starts while the database is down waits for
      it instead of exiting.
    * Rank 0 wraps every study operation of the worker loop (load, claim, attributes, tell) in
      :func:`with_db_retry`. Transient failures (connection refused or reset, server restart,
      serialization failure) are retried (tenacity) with exponential backoff and full jitter until
      ``deadline_s`` has passed; then :class:`DatabaseUnavailableError` is raised. Anything else
      (a bug, a logic error, refused credentials) propagates at once.
    * A stop request (``should_stop``, e.g. SLURM's preemption signal) is honoured between
      attempts: the wait is cut short and :class:`RetryStoppedError` raised, so a worker that is
      being preempted while the database is down still checkpoints and requeues in time.
    * Log lines name the driver's own error (``connection refused``), never Optuna's wrapper
      (``An exception is raised during the commit``), and never a password.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_before_delay,
    wait_random_exponential,
)

from cnas_hpc.common.errors import StudyUnreachableError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often a waiting retry looks at its stop request (seconds).
STOP_POLL_S = 0.2

#: Driver messages of failures that pass: the server is down, restarting, or dropped us.
_TRANSIENT_TEXT = (
    "could not serialize access",
    "server closed the connection",
    "connection refused",
    "could not connect",
    "connection timed out",
    "timeout expired",
    "terminating connection",
    "connection reset",
    "connection already closed",
    "database system is shutting down",
    "database system is starting up",
    "database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many connections",
    "remaining connection slots are reserved",
    "database is locked",
    "ssl syscall error",
    "server is unreachable",
    "lock timeout",
    "idle-in-transaction timeout",
)
#: Driver messages of failures no wait will cure (a connection error on its face).
_PERMANENT_TEXT = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "does not exist",
    "permission denied",
    "unable to open database file",
    "no such table",
)
_PASSWORD_FIELD = re.compile(r"(password\s*=\s*)\S+", re.IGNORECASE)
_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


class DatabaseUnavailableError(RuntimeError):
    """The database stayed unreachable for longer than the retry deadline (one-line message)."""


class RetryStoppedError(RuntimeError):
    """A stop request (preemption) cut a database retry short; nothing was lost by stopping."""


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, then its causes (SQLAlchemy's ``.orig``, ``__cause__``, ``__context__``)."""
    seen: set[int] = set()
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException):
            current = orig
        else:
            current = current.__cause__ or current.__context__
    return chain


def root_cause(exc: BaseException) -> BaseException:
    """The DB-API error under ``exc`` (SQLAlchemy's ``.orig``, through ``__cause__`` and
    ``__context__``), or ``exc`` itself when there is none.

    Optuna wraps driver errors (``StorageInternalError: An exception is raised during the
    commit``); what the operator needs to read is the driver's own message.
    """
    for link in _chain(exc):
        orig = getattr(link, "orig", None)
        if isinstance(orig, BaseException):
            return orig
    return exc


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database failure worth retrying (see the module docstring)."""
    chain = _chain(exc)
    if any(isinstance(link, StudyUnreachableError) for link in chain):
        return True
    text = " ".join(str(link) for link in chain).lower()
    if any(needle in text for needle in _PERMANENT_TEXT):
        return False
    # Optuna wraps every failed commit; an integrity or programming error under it is a bug.
    bugs = (
        sqlalchemy.exc.IntegrityError,
        sqlalchemy.exc.ProgrammingError,
        sqlalchemy.exc.DataError,
    )
    if any(isinstance(link, bugs) for link in chain):
        return False
    for link in chain:
        if isinstance(link, sqlalchemy.exc.DBAPIError) and link.connection_invalidated:
            return True
        if isinstance(link, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
    if isinstance(exc, optuna.exceptions.StorageInternalError):
        return True
    return any(needle in text for needle in _TRANSIENT_TEXT)


def describe_failure(exc: BaseException | None) -> str:
    """One short line naming the driver's error of ``exc``, scrubbed of anything password-like."""
    if exc is None:
        return "unknown error"
    detail = getattr(exc, "detail", "")
    if isinstance(exc, StudyUnreachableError) and detail:
        return str(detail)
    cause = root_cause(exc)
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    text = _PASSWORD_IN_URL.sub(r"\1***@", _PASSWORD_FIELD.sub(r"\1***", text))
    return text[:160]


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "%s failed (%s); retry %d in %.1f s",
            what,
            describe_failure(exc),
            state.attempt_number,
            state.upcoming_sleep,
        )

    return before_sleep


def _stoppable_sleep(should_stop: Callable[[], bool] | None, what: str) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            if should_stop is not None and should_stop():
                raise RetryStoppedError(f"stop requested while retrying {what}")
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(STOP_POLL_S, left))

    return sleep


def with_db_retry(
    operation: Callable[[], T],
    *,
    what: str,
    deadline_s: float,
    base_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Run ``operation``, retrying transient database failures until ``deadline_s``.

    Backoff is exponential with full jitter (tenacity's ``wait_random_exponential``), capped by
    ``max_delay_s``; the deadline counts from the first attempt. The first attempt is always
    made; ``should_stop`` is polled while waiting for the next one.

    Args:
        operation: the study call (no arguments; use a lambda).
        what: a few words for the log ("tell trial 3").
        deadline_s: give up this long after the first attempt.
        base_delay_s: scale of the first backoff; doubled per attempt, jittered.
        max_delay_s: the longest single wait.
        should_stop: polled every :data:`STOP_POLL_S` s while waiting; True cuts the retry short.

    Raises:
        DatabaseUnavailableError: still failing at the deadline (the message has no secrets).
        RetryStoppedError: ``should_stop`` turned True while waiting for the next attempt.
    """
    started = time.monotonic()
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=base_delay_s, max=max_delay_s),
        # Never sleep past the deadline: give up when the next attempt would come after it.
        stop=stop_before_delay(deadline_s),
        before_sleep=_log_retry(what),
        sleep=_stoppable_sleep(should_stop, what),
        reraise=False,
    )
    try:
        return retrying(operation)
    except RetryError as exc:
        waited = time.monotonic() - started
        last = exc.last_attempt.exception() if exc.last_attempt is not None else None
        raise DatabaseUnavailableError(
            f"database unreachable for {waited:.0f} s during {what} ({describe_failure(last)})"
        ) from None
