"""The study's trial budget, claimed atomically by asynchronous workers.

Contract:
    * The budget is ``search.n_trials`` COMPLETE trials over the whole study, not per worker.
    * A worker claims a slot under a study-wide lock (a PostgreSQL advisory lock, or a file lock
      next to a SQLite file): inside it, stale trials are failed (and re-enqueued with the same
      parameters), the trials are counted, and a new trial is asked only while
      ``COMPLETE + RUNNING + WAITING < n_trials``. Two workers can therefore never overshoot the
      budget, and no worker waits for another between trials (the lock is held for one ask).
    * A WAITING trial (a retry of a stale one) is always handed out: it already holds its slot.
    * When every remaining slot is held by a running trial the claim says ``WAIT``: the worker
      polls, because a running trial may still fail and free its slot (no undershoot).
    * Only global rank 0 of a worker calls anything here.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import fcntl
import hashlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial

from cnas_hpc.common import attrs
from cnas_hpc.study.optuna_internals import (
    count_by_state,
    engine_of,
    fail_trial,
    grace_period_of,
    running_without_heartbeat,
)

log = logging.getLogger(__name__)

# We deliberately run heartbeats with ask/tell (see cnas_hpc.study.heartbeat), and rely on
# Optuna's heartbeat storage API, which it still flags as experimental.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class ClaimStatus(enum.Enum):
    """Outcome of :func:`claim_trial`."""

    CLAIMED = "claimed"
    WAIT = "wait"
    DONE = "done"


@dataclass(frozen=True)
class BudgetCount:
    """Trials by state that matter for the budget."""

    complete: int
    running: int
    waiting: int

    def remaining(self, n_trials: int) -> int:
        """Slots nobody holds yet."""
        return max(0, n_trials - self.complete - self.running - self.waiting)


@dataclass(frozen=True)
class Claim:
    """A claimed slot (``trial`` set) or why there is none."""

    status: ClaimStatus
    trial: optuna.Trial | None
    count: BudgetCount


def count_budget(study: optuna.Study) -> BudgetCount:
    """Count COMPLETE, RUNNING and WAITING trials of ``study``, straight from the database.

    Optuna's in-process trial cache may miss trials other processes created (it only re-reads
    trials newer than the last finished one it saw), so an RDB study is counted with one SQL
    query; this is also O(1) in memory for studies with thousands of trials.
    """
    by_state = count_by_state(study)
    return BudgetCount(
        complete=by_state.get("COMPLETE", 0),
        running=by_state.get("RUNNING", 0),
        waiting=by_state.get("WAITING", 0),
    )


def _lock_key(study_name: str) -> int:
    # A signed 63-bit key: PostgreSQL advisory locks take a bigint.
    return int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big") >> 1


@contextlib.contextmanager
def study_lock(study: optuna.Study) -> Iterator[None]:
    """Hold the study-wide claim lock (blocking). Works for PostgreSQL and SQLite storages."""
    engine = engine_of(study)
    if engine is None:  # in-memory storage: one process, nothing to coordinate
        yield
        return
    if engine.dialect.name == "postgresql":
        key = _lock_key(study.study_name)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    database = engine.url.database or ""
    lock_path = Path(f"{database}.{_lock_key(study.study_name):x}.lock")
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials that never recorded a heartbeat within the grace period.

    Optuna only declares a trial stale once it has a heartbeat. A trial asked by a worker that
    lost the database (or died) before its first heartbeat would otherwise stay RUNNING forever
    and hold a budget slot. Such a trial never trained, so it is failed without a retry.
    """
    grace = grace_period_of(study)
    if grace is None:
        return []
    # Optuna stores datetime_start as naive local time.
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace)
    failed = []
    for trial_id, number, started in running_without_heartbeat(study):
        if started < cutoff and fail_trial(study, trial_id):
            log.warning("trial %d never sent a heartbeat: failed as orphaned", number)
            failed.append(number)
    return failed


def claim_trial(
    study: optuna.Study,
    n_trials: int,
    prepare: Callable[[optuna.Trial], optuna.Trial] | None = None,
) -> Claim:
    """Atomically fail stale trials, count the budget and ask one trial if a slot is free.

    Args:
        study: the shared study.
        n_trials: the budget of COMPLETE trials.
        prepare: runs on the new trial while the lock is still held (sampling, de-duplication,
            identity attributes) and returns the trial to keep (it may replace a duplicate).
    """
    with study_lock(study):
        optuna.storages.fail_stale_trials(study)
        fail_orphaned_trials(study)
        count = count_budget(study)
        if count.complete >= n_trials:
            return Claim(ClaimStatus.DONE, None, count)
        if count.waiting > 0 or count.remaining(n_trials) > 0:
            trial = study.ask()
            if prepare is not None:
                trial = prepare(trial)
            return Claim(ClaimStatus.CLAIMED, trial, count)
        return Claim(ClaimStatus.WAIT, None, count)


class RequeueStaleTrial:
    """Heartbeat-stale callback: re-enqueue a dead trial with the same parameters.

    The retry records the original trial number (``cnas:retry_of``), the trial it replaces
    (``cnas:retried_from``) and how many retries preceded it (``cnas:retry_count``), so a
    resumed trial can find the dead one's checkpoint. After ``max_retry`` retries the
    parameters are dropped (the slot is freed for a new proposal).
    """

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        retries = int(trial.user_attrs.get(attrs.RETRY_COUNT, 0))
        if retries >= self.max_retry:
            log.warning(
                "trial %d went stale after %d retries: not retried again", trial.number, retries
            )
            return
        retry_attrs = {
            attrs.RETRY_OF: int(trial.user_attrs.get(attrs.RETRY_OF, trial.number)),
            attrs.RETRIED_FROM: trial.number,
            attrs.RETRY_COUNT: retries + 1,
        }
        study.enqueue_trial(trial.params, user_attrs=retry_attrs, skip_if_exists=False)
        log.warning("trial %d went stale (heartbeat lost): re-enqueued", trial.number)
