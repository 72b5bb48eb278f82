"""The ask/tell heartbeat on a real SQLite study: it beats, releases, survives a locked database."""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import optuna
import sqlalchemy

from cnas_hpc.study.heartbeat import Heartbeat


def _running_trial(path: Path, busy_timeout_s: float) -> tuple[optuna.storages.RDBStorage, int]:
    """A storage on ``path`` (its SQLite busy timeout ``busy_timeout_s``) and a RUNNING trial id."""
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{path}",
        engine_kwargs={"connect_args": {"timeout": busy_timeout_s}},
        heartbeat_interval=60,
    )
    study = optuna.create_study(storage=storage, study_name="hb")
    number = study.ask().number
    study_id = storage.get_study_id_from_name("hb")
    return storage, storage.get_trial_id_from_study_id_trial_number(study_id, number)


def _last_beat(path: Path, trial_id: int) -> datetime | None:
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            value = conn.execute(
                sqlalchemy.text("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :t"),
                {"t": trial_id},
            ).scalar()
    finally:
        engine.dispose()
    return None if value is None else datetime.fromisoformat(str(value))


def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_beats_every_interval_releases_after_each_and_stops_on_exit(tmp_path: Path) -> None:
    path = tmp_path / "hb.db"
    storage, trial_id = _running_trial(path, busy_timeout_s=5.0)
    released: list[float] = []
    with Heartbeat(storage, trial_id, 0.2, release=lambda: released.append(time.monotonic())):
        _until(lambda: len(released) >= 3)  # the first beat is at once, then one per interval
    beats = len(released)
    assert _last_beat(path, trial_id) is not None
    gaps = [b - a for a, b in itertools.pairwise(released)]
    assert min(gaps) >= 0.15, gaps  # paced by the interval, not a busy loop
    time.sleep(0.5)
    assert len(released) == beats  # the thread ended with the block


def test_a_locked_database_is_survived_and_beats_resume_when_it_frees(tmp_path: Path) -> None:
    path = tmp_path / "hb.db"
    storage, trial_id = _running_trial(path, busy_timeout_s=0.2)
    # Another process holds the write lock: every heartbeat write fails ("database is locked").
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    heartbeat = Heartbeat(storage, trial_id, 30.0)
    with heartbeat:
        _until(lambda: heartbeat.failures >= 2)  # retried after ~2 s, not after the 30 s interval
        holder.execute("ROLLBACK")
        _until(lambda: heartbeat.failures == 0)
        assert _last_beat(path, trial_id) is not None
    holder.close()
