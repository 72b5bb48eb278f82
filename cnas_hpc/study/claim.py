"""The claim: the ONE entry point through which a worker gets a trial to train.

Contract:
    * :func:`claim_trial` reserves a slot: under a study-wide lock (a PostgreSQL advisory lock,
      or a file lock next to a SQLite file) stale trials are failed (and re-enqueued with the
      same parameters; see :mod:`cnas_hpc.study.stale`, which asks SLURM before the lock
      whether a stale trial's job still exists), the trials are counted, and a new trial is
      asked only while the budget has a free slot (:func:`cnas_hpc.study.budget.free_slots`,
      the one budget rule). Two workers can therefore never overshoot the budget, and no
      worker waits for another between trials (the lock is held for one ask).
    * A WAITING trial (a retry of a stale one) is always handed out: it already holds its slot.
    * When every remaining slot is held by a running trial the claim says ``WAIT``: the worker
      polls, because a running trial may still fail and free its slot (no undershoot).
    * The reserved trial's architecture is proposed OUTSIDE the lock (:func:`propose`, TPE's
      cost; the sampler from :func:`sampler_factory`), then written under it by
      :func:`commit_proposal` unless another trial already has it; a duplicate is given back
      with :func:`give_back_duplicate` (FAIL ``duplicate of N``) and the worker claims again.
    * Everything else the claim uses (:mod:`~cnas_hpc.study.budget`,
      :mod:`~cnas_hpc.study.stale`, :mod:`~cnas_hpc.study.proposal`,
      :mod:`~cnas_hpc.study.sampler`, :mod:`~cnas_hpc.study.optuna_internals`) is its internals:
      a worker (:mod:`cnas_hpc.search.owner`) imports the claim from here only.
    * Only global rank 0 of a worker calls anything here.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from cnas_hpc.config.study import SamplerConfig
from cnas_hpc.study.budget import SLOT_STATES, BudgetCount, budget_of
from cnas_hpc.study.handle import StudyHandle
from cnas_hpc.study.optuna_internals import (
    arch_hashes,
    budget_snapshot,
    count_by_state,
    open_trial,
    remember_rows,
    reserve_trial_row,
    write_rows_unless,
    write_trial_rows,
)
from cnas_hpc.study.proposal import propose
from cnas_hpc.study.sampler import make_sampler
from cnas_hpc.study.stale import (
    KeepCheck,
    RequeueStaleTrial,
    fail_orphaned_trials,
    fail_stale,
    stale_candidates,
)

__all__ = [
    "Claim",
    "ClaimStatus",
    "KnownArchitectures",
    "claim_trial",
    "commit_proposal",
    "give_back_duplicate",
    "propose",
    "sampler_factory",
    "study_lock",
]

log = logging.getLogger(__name__)


class ClaimStatus(enum.Enum):
    """Outcome of :func:`claim_trial`."""

    CLAIMED = "claimed"
    WAIT = "wait"
    DONE = "done"


@dataclass(frozen=True)
class Claim:
    """A claimed slot (``trial`` and its storage id ``trial_id`` set) or why there is none."""

    status: ClaimStatus
    trial: optuna.Trial | None
    count: BudgetCount
    trial_id: int | None = None


def _lock_key(study_name: str) -> int:
    # A signed 63-bit key: PostgreSQL advisory locks take a bigint.
    return int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big") >> 1


#: Settings of the session that holds (or waits for) the claim lock. A lock whose holder is gone
#: must not stop every worker: the server probes an unanswering client within about a minute
#: (keepalives) and ends a session idle in its transaction for 5 minutes (a suspended holder),
#: which releases the lock; a waiter gives up after 2 minutes and retries (a transient error).
_LOCK_SESSION_GUARDS = (
    "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
    "SET tcp_keepalives_count = 3; SET idle_in_transaction_session_timeout = '300s'; "
    "SET lock_timeout = '120s'"
)


@contextlib.contextmanager
def study_lock(handle: StudyHandle) -> Iterator[None]:
    """Hold the study-wide claim lock (blocking). Works for PostgreSQL and SQLite storages.

    On PostgreSQL it is a session advisory lock, guarded against holders that died or hang
    (see :data:`_LOCK_SESSION_GUARDS`); on SQLite a file lock next to the database file, which
    the kernel releases when its holder dies.
    """
    engine = handle.engine
    if engine.dialect.name == "postgresql":
        key = _lock_key(handle.name)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(_LOCK_SESSION_GUARDS))  # session settings, no table
            conn.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_lock(key)))
            try:
                yield
            finally:
                conn.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_unlock(key)))
                conn.commit()
        return
    database = engine.url.database or ""
    lock_path = Path(f"{database}.{_lock_key(handle.name):x}.lock")
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def claim_trial(
    handle: StudyHandle,
    n_trials: int,
    prepare: Callable[[optuna.Trial], optuna.Trial] | None = None,
    *,
    keep: KeepCheck | None = None,
    max_retry: int = 2,
    sampler_for: Callable[[int], optuna.samplers.BaseSampler] | None = None,
    identity: Mapping[str, Any] | None = None,
) -> Claim:
    """Atomically fail stale trials, count the budget and ask one trial if a slot is free.

    The critical section is short: SLURM is asked about stale candidates before it, and the ask
    itself samples nothing (Optuna samples at the first ``suggest``); the new trial gets its
    first heartbeat and ``identity`` in two writes before the lock is released, so a trial
    without a heartbeat under the lock is an orphan (:func:`~cnas_hpc.study.stale.
    fail_orphaned_trials`).

    Args:
        handle: the shared study.
        n_trials: the budget of COMPLETE trials.
        prepare: runs on the new trial while the lock is still held and returns the trial to
            keep (tests use it to sample under the lock; workers propose outside it).
        keep: spares a stale candidate (see :mod:`cnas_hpc.study.stale`).
        max_retry: retries of a stale trial with the same parameters.
        sampler_for: the sampler for the proposal of the trial with the given number (set on
            the study under the lock, where that number is known: reproducible seeds).
        identity: user attributes of the new trial (worker, job, ...), written with its first
            heartbeat.
    """
    own_job = (identity or {}).get(attrs.JOB)
    candidates = stale_candidates(handle, keep, None if own_job is None else str(own_job))
    if not candidates:
        idle = _nothing_to_claim(handle, n_trials)
        if idle is not None:
            return idle
    usual = not candidates and prepare is None
    if usual and handle.engine.dialect.name == "postgresql":
        fast = _claim_in_one_transaction(handle, n_trials, sampler_for, identity)
        if fast is not None:
            return fast
    study = handle.study
    with study_lock(handle):
        fail_stale(handle, candidates, RequeueStaleTrial(max_retry))
        fail_orphaned_trials(handle)
        by_state = count_by_state(handle)
        count = budget_of(by_state)
        if count.complete >= n_trials:
            return Claim(ClaimStatus.DONE, None, count)
        if count.waiting == 0 and count.remaining(n_trials) == 0:
            return Claim(ClaimStatus.WAIT, None, count)
        if sampler_for is not None:
            # The next trial's number is the number of trials so far (the lock is held).
            study.sampler = sampler_for(sum(by_state.values()))
        if count.waiting:
            trial = study.ask()  # pops the retry, with its fixed parameters
            trial_id = handle.cache.get_trial_id_from_study_id_trial_number(
                handle.study_id, trial.number
            )
        else:
            # What ask() does without a waiting trial, minus its read of every WAITING trial.
            trial_id = handle.cache.create_new_trial(handle.study_id)
            trial = open_trial(handle, trial_id)
        handle.storage.record_heartbeat(trial_id)
        if identity:
            write_trial_rows(handle, trial_id, user_attrs=dict(identity))
        if prepare is not None:
            trial = prepare(trial)
        return Claim(ClaimStatus.CLAIMED, trial, count, trial_id)


def _nothing_to_claim(handle: StudyHandle, n_trials: int) -> Claim | None:
    """DONE or WAIT, decided without the lock when nothing could change it under the lock (no
    free slot, no retry waiting, no orphan to fail): idle workers polling near the end of a
    study then never queue for the lock. None: take the lock."""
    by_state, orphans = budget_snapshot(handle)
    count = budget_of(by_state)
    if count.complete >= n_trials:
        return Claim(ClaimStatus.DONE, None, count)
    if count.waiting or count.remaining(n_trials) or orphans:
        return None
    return Claim(ClaimStatus.WAIT, None, count)


def _claim_in_one_transaction(
    handle: StudyHandle,
    n_trials: int,
    sampler_for: Callable[[int], optuna.samplers.BaseSampler] | None,
    identity: Mapping[str, Any] | None,
) -> Claim | None:
    """The usual claim (no stale trial, no retry waiting, no orphan) in one transaction that
    holds the claim lock for a few milliseconds; None when the full claim must run."""
    counts, created = reserve_trial_row(
        handle, _lock_key(handle.name), n_trials, dict(identity or {}), slot_states=SLOT_STATES
    )
    count = budget_of(counts)
    if created is None:
        if count.complete >= n_trials:
            return Claim(ClaimStatus.DONE, None, count)
        if count.waiting == 0 and count.remaining(n_trials) == 0 and "ORPHANED" not in counts:
            return Claim(ClaimStatus.WAIT, None, count)
        return None  # a retry to hand out or an orphan to fail: the full claim does it
    trial_id, number = created
    if sampler_for is not None:
        handle.study.sampler = sampler_for(number)
    return Claim(ClaimStatus.CLAIMED, open_trial(handle, trial_id), count, trial_id)


class KnownArchitectures:
    """What the study's trials are, by architecture hash: the claim's duplicate check.

    COMPLETE trials never change, so they are read once (then only newer ones); RUNNING trials
    are read at every check (a worker holds at most one). One query per check, whatever the size
    of the study.
    """

    def __init__(self) -> None:
        self.complete: dict[str, int] = {}
        self.after = -1

    def warm(self, handle: StudyHandle) -> None:
        """Read what is known so far (outside the lock: the checks under it read only news)."""
        self.learn(arch_hashes(handle, attrs.ARCH_HASH, self.after), -1)

    def learn(self, rows: list[tuple[int, int, str, Any]], trial_id: int) -> dict[str, int]:
        """Take in ``(trial_id, number, state, hash)`` rows; returns the RUNNING trials' hashes
        (other than ``trial_id``)."""
        running: dict[str, int] = {}
        oldest_running = None
        for other_id, number, state, value in rows:
            if state == "COMPLETE":
                self.complete.setdefault(str(value), number)
                self.after = max(self.after, other_id)
            elif other_id != trial_id:
                running.setdefault(str(value), number)
                oldest_running = min(other_id, oldest_running or other_id)
        if oldest_running is not None:
            # A running trial completes later: read COMPLETE trials from its id on next time.
            self.after = min(self.after, oldest_running - 1)
        return running

    def duplicate_in(
        self, rows: list[tuple[int, int, str, Any]], arch_hash: str, trial_id: int
    ) -> int | None:
        """The number of a COMPLETE or RUNNING trial (other than ``trial_id``) with this hash."""
        running = self.learn(rows, trial_id)
        if arch_hash in self.complete:
            return self.complete[arch_hash]
        return running.get(arch_hash)


def commit_proposal(
    handle: StudyHandle,
    trial: optuna.Trial,
    trial_id: int,
    *,
    arch_hash: str,
    params: dict[str, tuple[Any, BaseDistribution]],
    user_attrs: Mapping[str, Any],
    known: KnownArchitectures,
) -> int | None:
    """Under the claim lock: unless another COMPLETE or RUNNING trial has this architecture,
    write the trial's parameters and ``user_attrs`` (the hash among them) in one transaction
    (on PostgreSQL that transaction holds the lock: a few milliseconds).

    Returns:
        None when written; else the number of the trial it duplicates (nothing written).
    """
    postgres = handle.engine.dialect.name == "postgresql"
    with contextlib.nullcontext() if postgres else study_lock(handle):
        duplicate = write_rows_unless(
            handle,
            trial_id,
            lock_key=_lock_key(handle.name) if postgres else None,
            key=attrs.ARCH_HASH,
            after_trial_id=known.after,
            duplicate_of=partial(known.duplicate_in, arch_hash=arch_hash, trial_id=trial_id),
            params=params,
            user_attrs=dict(user_attrs),
        )
    if duplicate is None:
        remember_rows(trial, params, dict(user_attrs))
    return duplicate


def sampler_factory(
    config: SamplerConfig, worker: int, search_space: Mapping[str, BaseDistribution]
) -> Callable[[int], optuna.samplers.BaseSampler]:
    """``sampler_for`` of :func:`claim_trial`: the sampler of this worker's proposal for the
    trial with the given number (its seed depends on that number: reproducible proposals)."""
    space = dict(search_space)
    return lambda number: make_sampler(config, worker=worker, number=number, search_space=space)


def give_back_duplicate(
    handle: StudyHandle, trial: optuna.Trial, trial_id: int, duplicate: int
) -> None:
    """Free the slot of a reserved trial whose proposal duplicates trial ``duplicate``: it is
    told FAIL with ``cnas:fail_reason`` ``duplicate of trial N`` (a FAIL holds no slot)."""
    write_trial_rows(
        handle, trial_id, user_attrs={attrs.FAIL_REASON: f"duplicate of trial {duplicate}"}
    )
    handle.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    log.info("trial %d duplicates trial %d: skipped", trial.number, duplicate)
