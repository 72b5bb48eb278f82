"""Database retries: transient failures are retried with backoff until the deadline, others not."""

from __future__ import annotations

import logging
import time

import optuna
import pytest
import sqlalchemy

from cnas_hpc.common.errors import StudyUnreachableError
from cnas_hpc.study.retry import (
    DatabaseUnavailableError,
    RetryStoppedError,
    describe_failure,
    is_transient,
    with_db_retry,
)


def _refused() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))


def test_transient_failures_are_retried_until_the_operation_succeeds() -> None:
    calls = {"n": 0}

    def flaky() -> int:
        calls["n"] += 1
        if calls["n"] < 3:
            raise _refused()
        return 42

    assert with_db_retry(flaky, what="probe", deadline_s=5, base_delay_s=0.01) == 42
    assert calls["n"] == 3


def test_an_outage_past_the_deadline_raises_one_clear_error() -> None:
    def down() -> None:
        raise _refused()

    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match=r"unreachable for \d s during tell trial 3"):
        with_db_retry(down, what="tell trial 3", deadline_s=1, base_delay_s=0.05, max_delay_s=0.2)
    # It gives up when the next attempt would come after the deadline: never sleeps past it. The
    # 0.1 s over the deadline is the last wake-up's latency on a loaded machine (1.0000006 s
    # once under the full suite); a sleep past the deadline overshoots by up to max_delay_s.
    assert 0.6 <= time.monotonic() - started <= 1.1


def test_a_bug_is_not_retried() -> None:
    calls = {"n": 0}

    def bug() -> None:
        calls["n"] += 1
        raise KeyError("no such column")

    with pytest.raises(KeyError):
        with_db_retry(bug, what="probe", deadline_s=5)
    assert calls["n"] == 1
    assert is_transient(_refused()) and not is_transient(KeyError("x"))


def _wrapped_by_optuna(driver_message: str) -> optuna.exceptions.StorageInternalError:
    """What Optuna raises when a commit fails: its own error, the driver's as the cause."""
    try:
        try:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception(driver_message))
        except sqlalchemy.exc.OperationalError as exc:
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit. This typically happens due to "
                "invalid data in the commit, e.g. exceeding max length."
            ) from exc
    except optuna.exceptions.StorageInternalError as outer:
        return outer


def test_a_stop_request_cuts_a_retry_short() -> None:
    """Seen: a preemption signal was never acted on while a report retried a down database."""
    started = time.monotonic()

    def down() -> None:
        raise _refused()

    stop_at = started + 0.5
    with pytest.raises(RetryStoppedError, match="while retrying report"):
        with_db_retry(
            down,
            what="report",
            deadline_s=60,
            base_delay_s=2,
            max_delay_s=10,
            should_stop=lambda: time.monotonic() > stop_at,
        )
    assert time.monotonic() - started < 2.0


def test_one_notion_of_transient(caplog: pytest.LogCaptureFixture) -> None:
    wrapped = _wrapped_by_optuna("connection to server at 127.0.0.1 failed: Connection refused")
    assert is_transient(wrapped)
    assert is_transient(
        StudyUnreachableError("cannot use study storage x: the server is unreachable")
    )
    refused = sqlalchemy.exc.OperationalError(
        "connect", {}, Exception('password authentication failed for user "me"')
    )
    assert not is_transient(refused)  # no wait cures a wrong password
    integrity = sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
    try:
        raise optuna.exceptions.StorageInternalError("commit failed") from integrity
    except optuna.exceptions.StorageInternalError as bug:
        assert not is_transient(bug)
    # The retry's log names the driver's error, not Optuna's "invalid data in the commit".
    calls = {"n": 0}

    def flaky() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise wrapped

    caplog.set_level(logging.WARNING, logger="cnas_hpc.study.retry")
    with_db_retry(flaky, what="tell trial 3", deadline_s=5, base_delay_s=0.01)
    assert "tell trial 3 failed (connection to server at 127.0.0.1 failed" in caplog.text
    assert "invalid data" not in caplog.text


def test_failure_lines_never_show_a_password() -> None:
    line = describe_failure(
        Exception("could not connect to postgresql://me:s3cr3t@db/x password=s3cr3t")
    )
    assert "s3cr3t" not in line and "me:***@db" in line
