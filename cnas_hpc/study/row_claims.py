"""Claims on the rows of the apps' own tables: one live worker per cell or measurement.

The evaluation and fidelity apps plan rows (``evaluations``, ``fidelity_measurements``) that any
task may work on: a rerun of the same command, a requeued job, a second array. A row is trained
by the worker that CLAIMED it, and by no other while that worker lives.

Contract:
    * A row's ``state``, ``worker`` and ``updated_at`` columns are the claim: a RUNNING row
      belongs to ``worker``, and ``updated_at`` is its heartbeat (refreshed every
      ``study.heartbeat_interval`` s by :class:`RowHeartbeat` while the worker trains).
    * :func:`claim_row` takes a row that is not COMPLETE when it is free (PENDING, FAIL), when
      it is this worker's own (a requeued SLURM job keeps its job id, hence its label), or when
      its owner is gone (:func:`owner_gone`): its SLURM job ended (asked through
      :mod:`cnas_hpc.distributed.jobs`, as :mod:`cnas_hpc.study.stale` does for trials; a
      suspended or requeued job keeps its row however long SLURM holds it), its local process
      ended, or, when neither can be told, no heartbeat for ``study.grace_period`` s.
    * The take is ONE conditional ``UPDATE`` on what was read (state, worker, heartbeat): of two
      workers that race for a row, exactly one gets it; the other is told who owns it.
    * Times are the writer's ``datetime.now()``, as every other write of these tables.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from sqlalchemy import ColumnElement, Table

from cnas_hpc.distributed.jobs import job_is_held, job_state
from cnas_hpc.study.heartbeat import BeatThread

log = logging.getLogger(__name__)

RUNNING, COMPLETE = "RUNNING", "COMPLETE"


@dataclass(frozen=True)
class Claim:
    """The outcome of :func:`claim_row`.

    Attributes:
        claimed: this worker now owns the row (RUNNING, its label, a fresh heartbeat).
        state: the row's state as read (``COMPLETE``: nothing to do).
        owner: the worker that holds the row when it was not claimed.
        reason: one line saying why the row was not claimed (empty when it was), or, for a
            takeover, whose row it was.
    """

    claimed: bool
    state: str
    owner: str | None = None
    reason: str = ""


def _now() -> datetime.datetime:
    return datetime.datetime.now()


def slurm_job_of_worker(worker: str | None) -> str | None:
    """The SLURM job id in a worker label (``"slurm:1234_3"`` -> ``"1234_3"``), else None.

    Only ``slurm:`` labels name SLURM jobs: a local submitit job id is a process id.
    """
    if worker is None or not worker.startswith("slurm:"):
        return None
    job = worker.split(":", 1)[1]
    return job or None


def array_of_worker(worker: str | None) -> str | None:
    """The SLURM array of a worker label (``"slurm:1234_3"`` -> ``"1234"``), else None."""
    job = slurm_job_of_worker(worker)
    if job is None or "_" not in job:
        return None
    return job.split("_", 1)[0]


def _local_process_gone(worker: str | None) -> bool:
    """Whether a ``local:<host>:<pid>`` worker of THIS host has no process any more."""
    parts = (worker or "").split(":")
    if len(parts) != 3 or parts[0] != "local" or parts[1] != socket.gethostname():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, OSError):
        return False
    return False


def owner_gone(worker: str | None, age_s: float, grace_s: float) -> str | None:
    """Why the owner of a RUNNING row is gone (a reason), or None while it may still work it.

    A SLURM worker is gone once SLURM no longer holds its job (at once: a killed task's row is
    resumed by the next run), and never while SLURM holds it (queued, requeued, suspended),
    however silent. A local process of this host is gone when its process is. Otherwise (or
    when SLURM cannot be asked) the heartbeat decides: silent for ``grace_s``.
    """
    job = slurm_job_of_worker(worker)
    if job is not None:
        held = job_is_held(job)
        if held:
            return None
        if held is False:
            return f"job {job} ended ({job_state(job)})"
    elif _local_process_gone(worker):
        return f"its process {worker} ended"
    if age_s < grace_s:
        return None
    return f"no heartbeat for {age_s:.0f} s"


def claim_row(
    engine: sqlalchemy.Engine,
    table: Table,
    key: ColumnElement[bool],
    *,
    worker: str,
    grace_s: float,
    what: str,
    **values: Any,
) -> Claim:
    """Claim the row of ``table`` selected by ``key`` for ``worker`` (see the module docstring).

    Args:
        engine: the database.
        table: a table with ``state``, ``worker`` and ``updated_at`` columns.
        key: the WHERE clause that selects exactly one row.
        worker: this worker's label (:attr:`cnas_hpc.distributed.env.DistEnv.worker_label`).
        grace_s: how long a silent owner keeps its row before SLURM is asked about its job.
        what: the row in words, for the log (``"cell 1 of 'ev'"``).
        values: more columns to set when the row is claimed (e.g. ``fail_reason=None``).

    Raises:
        LookupError: no row matches ``key``.
    """
    columns = table.c
    query = sqlalchemy.select(columns.state, columns.worker, columns.updated_at).where(key)
    with engine.connect() as conn:
        found = conn.execute(query).first()
    if found is None:
        raise LookupError(f"{what} is not in {table.name}")
    state, owner, beat = str(found.state), found.worker, found.updated_at
    if state == COMPLETE:
        return Claim(False, state, owner, "already complete")
    taken_from = ""
    if state == RUNNING and owner != worker:
        age = (_now() - beat).total_seconds() if beat is not None else float("inf")
        gone = owner_gone(owner, age, grace_s)
        if gone is None:
            return Claim(
                False, state, owner, f"worked by {owner} (heartbeat {max(age, 0):.0f} s ago)"
            )
        taken_from = f"taken over from {owner}: {gone}"
    # Exactly what was read, or the UPDATE changes nothing (another worker was faster).
    same = [
        columns.state == state,
        columns.worker.is_(None) if owner is None else columns.worker == owner,
        columns.updated_at.is_(None) if beat is None else columns.updated_at == beat,
    ]
    update = (
        sqlalchemy.update(table)
        .where(key, *same)
        .values(state=RUNNING, worker=worker, updated_at=_now(), **values)
    )
    with engine.begin() as conn:
        taken = conn.execute(update).rowcount == 1
    if not taken:
        with engine.connect() as conn:
            now = conn.execute(query).first()
        holder = now.worker if now is not None else None
        return Claim(False, str(now.state) if now else state, holder, f"claimed by {holder} first")
    if taken_from:
        log.warning("%s: %s", what, taken_from)
    return Claim(True, RUNNING, worker, taken_from)


def beat_row(
    engine: sqlalchemy.Engine, table: Table, key: ColumnElement[bool], *, worker: str
) -> bool:
    """Refresh the heartbeat of ``worker``'s RUNNING row; False when the row is no longer its."""
    columns = table.c
    update = (
        sqlalchemy.update(table)
        .where(key, columns.state == RUNNING, columns.worker == worker)
        .values(updated_at=_now())
    )
    with engine.begin() as conn:
        return bool(conn.execute(update).rowcount == 1)


class RowHeartbeat(BeatThread):
    """Context manager: :func:`beat_row` every ``interval`` s while a claimed row trains.

    A database error is logged and retried at the next beat (an outage shorter than the grace
    period costs nothing). A row found taken by another worker is logged once: :attr:`lost`.
    """

    def __init__(
        self,
        engine: sqlalchemy.Engine,
        table: Table,
        key: ColumnElement[bool],
        *,
        worker: str,
        interval: float,
        what: str,
    ) -> None:
        self._engine, self._table, self._key, self._what = engine, table, key, what
        self._worker, self._interval = worker, interval
        self.lost = False
        super().__init__("cnas-row-heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                held = beat_row(self._engine, self._table, self._key, worker=self._worker)
            except sqlalchemy.exc.SQLAlchemyError as exc:
                log.warning("heartbeat of %s failed (%s); retrying", self._what, exc)
                continue
            if not held and not self.lost:
                self.lost = True
                log.error("%s was taken over while %s trained it", self._what, self._worker)
