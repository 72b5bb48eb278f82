"""Database retries: transient failures are retried with backoff until the deadline, others not."""

from __future__ import annotations

import time

import pytest
import sqlalchemy

from cnas_hpc.study.retry import DatabaseUnavailableError, is_transient, with_db_retry


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
    with pytest.raises(DatabaseUnavailableError, match="unreachable for 1 s during tell trial 3"):
        with_db_retry(down, what="tell trial 3", deadline_s=1, base_delay_s=0.05, max_delay_s=0.2)
    assert 1.0 <= time.monotonic() - started < 2.0


def test_a_bug_is_not_retried() -> None:
    calls = {"n": 0}

    def bug() -> None:
        calls["n"] += 1
        raise KeyError("no such column")

    with pytest.raises(KeyError):
        with_db_retry(bug, what="probe", deadline_s=5)
    assert calls["n"] == 1
    assert is_transient(_refused()) and not is_transient(KeyError("x"))
