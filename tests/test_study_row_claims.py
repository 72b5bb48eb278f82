"""Row claims: one live worker per cell, on SQLite and PostgreSQL, judged by the real SLURM."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table

from cnas_hpc.distributed.jobs import job_is_held
from cnas_hpc.study.row_claims import Claim, RowHeartbeat, array_of_worker, claim_row

METADATA = MetaData()
CELLS = Table(
    "cells",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("worker", String(255)),
    Column("updated_at", DateTime),
)
KEY = CELLS.c.id == 1


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sqlalchemy.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'claims.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")
    engine = sqlalchemy.create_engine(url)
    METADATA.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.insert(CELLS).values(id=1, state="PENDING"))
    yield engine
    engine.dispose()


def _row(engine: sqlalchemy.Engine) -> tuple[str, str | None, datetime.datetime | None]:
    with engine.connect() as conn:
        row = conn.execute(sqlalchemy.select(CELLS).where(KEY)).one()
    return row.state, row.worker, row.updated_at


def _age(engine: sqlalchemy.Engine, seconds: float) -> None:
    """Make the row's heartbeat ``seconds`` old (a worker that went silent that long ago)."""
    old = datetime.datetime.now() - datetime.timedelta(seconds=seconds)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.update(CELLS).where(KEY).values(updated_at=old))


def _claim(engine: sqlalchemy.Engine, worker: str, grace_s: float = 60) -> Claim:
    return claim_row(engine, CELLS, KEY, worker=worker, grace_s=grace_s, what="cell 1")


def test_of_workers_racing_for_a_free_row_exactly_one_gets_it(engine: sqlalchemy.Engine) -> None:
    barrier = threading.Barrier(8)
    results: dict[str, bool] = {}

    def race(worker: str) -> None:
        barrier.wait()
        results[worker] = _claim(engine, worker).claimed

    threads = [threading.Thread(target=race, args=(f"local:h:{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [worker for worker, claimed in results.items() if claimed]
    assert len(winners) == 1
    assert _row(engine)[:2] == ("RUNNING", winners[0])


def test_a_live_owner_keeps_its_row_and_a_silent_one_loses_it(engine: sqlalchemy.Engine) -> None:
    assert _claim(engine, "local:h:1").claimed
    refused = _claim(engine, "local:h:2")
    assert not refused.claimed and "worked by local:h:1" in refused.reason
    # The owner itself (a requeued job keeps its label) takes its row back at once.
    assert _claim(engine, "local:h:1").claimed
    # Silent past the grace period, a worker of another host is judged by its heartbeat alone.
    _age(engine, 120)
    taken = _claim(engine, "local:h:2")
    assert taken.claimed and "taken over from local:h:1: no heartbeat" in taken.reason
    assert _row(engine)[:2] == ("RUNNING", "local:h:2")


def test_a_row_of_a_local_process_that_ended_is_taken_at_once(engine: sqlalchemy.Engine) -> None:
    dead = subprocess.Popen(["true"])  # a process id that no longer runs
    dead.wait()
    owner = f"local:{socket.gethostname()}:{dead.pid}"
    assert _claim(engine, owner).claimed
    # Its heartbeat is fresh, but its process is gone (killed -9, say): no need to wait.
    taken = _claim(engine, f"local:{socket.gethostname()}:{os.getpid()}")
    assert taken.claimed and "its process" in taken.reason


def test_the_heartbeat_keeps_a_row_fresh_and_notices_a_takeover(engine: sqlalchemy.Engine) -> None:
    assert _claim(engine, "local:h:1").claimed
    _age(engine, 120)
    with RowHeartbeat(engine, CELLS, KEY, worker="local:h:1", interval=0.2, what="c") as beat:
        time.sleep(0.6)
        assert not _claim(engine, "local:h:2").claimed
        with engine.begin() as conn:  # another worker took it (e.g. it judged us dead)
            conn.execute(sqlalchemy.update(CELLS).where(KEY).values(worker="local:h:3"))
        time.sleep(0.6)
        assert beat.lost


def test_a_complete_row_is_never_claimed(engine: sqlalchemy.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sqlalchemy.update(CELLS).where(KEY).values(state="COMPLETE"))
    claim = _claim(engine, "local:h:1")
    assert not claim.claimed and claim.state == "COMPLETE"


def test_array_of_a_worker_label() -> None:
    assert array_of_worker("slurm:1234_3") == "1234"
    assert array_of_worker("slurm:1234") is None
    assert array_of_worker("local:host:1234_3") is None
    assert array_of_worker(None) is None


@pytest.mark.slurm
def test_a_silent_row_is_kept_while_slurm_holds_its_job_and_taken_once_it_ended(
    tmp_path: Path,
) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'claims.db'}")
    METADATA.create_all(engine)
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--time=5", f"--output={tmp_path}/%j.out", "--wrap", "sleep 300"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    job = submitted.stdout.strip().split(";")[0]
    try:
        old = datetime.datetime.now() - datetime.timedelta(seconds=600)
        with engine.begin() as conn:
            conn.execute(
                sqlalchemy.insert(CELLS).values(
                    id=1, state="RUNNING", worker=f"slurm:{job}", updated_at=old
                )
            )
        # Silent for 10 minutes, but its job is queued or running (a requeue, a suspension):
        # the row stays its. Once the job ended, the row is taken at once.
        kept = _claim(engine, "slurm:999_1")
        assert not kept.claimed and f"slurm:{job}" in kept.reason
    finally:
        subprocess.run(["scancel", job], check=False)
    deadline = time.monotonic() + 60
    while job_is_held(job) and time.monotonic() < deadline:
        time.sleep(0.5)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.update(CELLS).where(KEY).values(updated_at=datetime.datetime.now()))
    taken = _claim(engine, "slurm:999_1")
    assert taken.claimed and f"job {job} ended" in taken.reason
    engine.dispose()
