"""Retrying study operations through database outages.

Contract: rank 0 wraps every study operation of the worker loop (claim, attributes, tell) in
:func:`with_db_retry`. Transient failures (connection refused or reset, server restart,
serialization failure) are retried (tenacity) with exponential backoff and full jitter until
``deadline_s`` has passed; then :class:`DatabaseUnavailableError` is raised. Anything else (a
bug, a logic error) propagates at once.
"""

from __future__ import annotations

import logging
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
    stop_after_delay,
    wait_random_exponential,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class DatabaseUnavailableError(RuntimeError):
    """The database stayed unreachable for longer than the retry deadline."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database failure worth retrying."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return True
    if isinstance(exc, optuna.exceptions.StorageInternalError):
        return True
    text = str(exc).lower()
    return any(
        needle in text
        for needle in (
            "could not serialize access",
            "server closed the connection",
            "connection refused",
            "terminating connection",
            "database system is shutting down",
            "database system is starting up",
        )
    )


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        text = str(exc).strip().splitlines()[0][:120] if exc and str(exc).strip() else ""
        log.warning(
            "%s failed (%s); retry %d in %.1f s",
            what,
            text or type(exc).__name__,
            state.attempt_number,
            state.upcoming_sleep,
        )

    return before_sleep


def with_db_retry(
    operation: Callable[[], T],
    *,
    what: str,
    deadline_s: float,
    base_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
) -> T:
    """Run ``operation``, retrying transient database failures until ``deadline_s``.

    Backoff is exponential with full jitter (tenacity's ``wait_random_exponential``), capped by
    ``max_delay_s``; the deadline counts from the first attempt.

    Args:
        operation: the study call (no arguments; use a lambda).
        what: a few words for the log ("tell trial 3").
        deadline_s: give up this long after the first attempt.
        base_delay_s: scale of the first backoff; doubled per attempt, jittered.

    Raises:
        DatabaseUnavailableError: still failing at the deadline (the message has no secrets).
    """
    started = time.monotonic()
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=base_delay_s, max=max_delay_s),
        stop=stop_after_delay(deadline_s),
        before_sleep=_log_retry(what),
        reraise=False,
    )
    try:
        return retrying(operation)
    except RetryError:
        waited = time.monotonic() - started
        raise DatabaseUnavailableError(
            f"database unreachable for {waited:.0f} s during {what}"
        ) from None
