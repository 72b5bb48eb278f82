"""Retrying study operations through database outages.

Contract: rank 0 wraps every study operation of the worker loop (claim, attributes, tell) in
:func:`with_db_retry`. Transient failures (connection refused or reset, server restart,
serialization failure) are retried with exponential backoff and full jitter until
``deadline_s`` has passed since the first failure; then :class:`DatabaseUnavailableError` is
raised. Anything else (a bug, a logic error) propagates at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy

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


def with_db_retry(
    operation: Callable[[], T],
    *,
    what: str,
    deadline_s: float,
    base_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
) -> T:
    """Run ``operation``, retrying transient database failures until ``deadline_s``.

    Args:
        operation: the study call (no arguments; use a lambda).
        what: a few words for the log ("tell trial 3").
        deadline_s: give up this long after the first failure.
        base_delay_s: first backoff; doubled per attempt, capped by ``max_delay_s``, jittered.

    Raises:
        DatabaseUnavailableError: still failing at the deadline (the message has no secrets).
    """
    first_failure: float | None = None
    attempt = 0
    while True:
        try:
            return operation()
        except Exception as exc:
            if not is_transient(exc):
                raise
            now = time.monotonic()
            first_failure = first_failure or now
            waited = now - first_failure
            if waited >= deadline_s:
                raise DatabaseUnavailableError(
                    f"database unreachable for {waited:.0f} s during {what}"
                ) from None
            delay = random.uniform(0, min(max_delay_s, base_delay_s * 2**attempt))
            delay = min(delay, max(0.0, deadline_s - waited))
            attempt += 1
            log.warning(
                "%s failed (%s); retry %d in %.1f s",
                what,
                str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__,
                attempt,
                delay,
            )
            time.sleep(delay)
