"""Stale trials: which RUNNING trials lost their worker, and how they are failed and retried.

Contract:
    * A RUNNING trial is a stale CANDIDATE when its last heartbeat is older than
      ``study.grace_period`` (by the database's clock). It is failed only when nothing says its
      worker is coming back:

      - a result of it waits on disk (``keep``, from the caller: the next run tells it);
      - its SLURM job still exists (pending, requeued, running, suspended): a preempted or
        requeued worker keeps its trial however long SLURM holds the job
        (:func:`cnas_hpc.distributed.jobs.job_is_held`); only a trial whose job is truly gone
        (ended, cancelled, unknown to SLURM) is failed. When SLURM cannot be asked, the heartbeat
        alone decides, as it does for workers outside SLURM.

    * A failed stale trial records why (``cnas:fail_reason``, e.g. ``stale: no heartbeat for
      212 s, job 1234_3 ended (FAILED)``) and is re-enqueued with the same parameters
      (:class:`RequeueStaleTrial`, at most ``study.max_retry`` times); the retry resumes from the
      dead trial's checkpoint.
    * :func:`stale_candidates` (database read plus SLURM queries, slow-ish) runs OUTSIDE the claim
      lock; :func:`fail_stale` re-checks each candidate and fails it INSIDE the lock, so the
      budget count never sees a failed trial before its retry is enqueued.
    * A trial that never recorded a heartbeat (asked, then its worker lost the database before the
      first one, which a claim records inside the lock) is failed as orphaned by the next claim:
      it never trained.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnas_hpc.common import attrs
from cnas_hpc.distributed.jobs import job_is_held, job_state
from cnas_hpc.study.handle import StudyHandle
from cnas_hpc.study.optuna_internals import fail_trial, running_without_heartbeat, stale_running

log = logging.getLogger(__name__)

# We deliberately run heartbeats with ask/tell (see cnas_hpc.study.heartbeat), and rely on
# Optuna's heartbeat storage API, which it still flags as experimental.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

#: ``keep(trial) -> bool``: the caller's reason to spare a stale candidate (a pending result).
KeepCheck = Callable[[FrozenTrial], bool]


@dataclass(frozen=True)
class StaleTrial:
    """A RUNNING trial without a recent heartbeat whose worker is not coming back."""

    trial_id: int
    number: int
    age_s: float
    reason: str


def slurm_job_of(trial: FrozenTrial) -> str | None:
    """The SLURM job that owns ``trial`` (None for workers outside SLURM).

    Only trials of ``slurm:`` workers are asked about: a local submitit job id is a process id,
    which may well be some SLURM job's number too.
    """
    worker = str(trial.user_attrs.get(attrs.WORKER, ""))
    job = trial.user_attrs.get(attrs.JOB)
    return str(job) if job and worker.startswith("slurm:") else None


def why_stale(
    trial: FrozenTrial, age: float, keep: KeepCheck | None = None, own_job: str | None = None
) -> str | None:
    """Why ``trial`` (silent for ``age`` s, past the grace period) is stale, or None when it is
    spared: a result waits on disk (``keep``), or SLURM still holds its job. Asks SLURM.

    ``own_job`` is the asking worker's SLURM job: a silent trial of that very job belongs to its
    previous run (a requeue keeps the job id; one job runs one worker, and the asker, claiming,
    runs no trial), so SLURM holding the job does not spare it. Without this, a trial cut between
    its claim and its genotype (not adopted after the requeue) would be kept forever."""
    if keep is not None and keep(trial):
        log.info(
            "trial %d: no heartbeat for %.0f s, but its result waits on disk", trial.number, age
        )
        return None
    job = slurm_job_of(trial)
    if job is not None and job == own_job:
        return f"stale: no heartbeat for {age:.0f} s, left by an earlier run of job {job}"
    if job is not None:
        held = job_is_held(job)
        if held:
            log.info(
                "trial %d: no heartbeat for %.0f s, but SLURM still holds its job %s: kept",
                trial.number,
                age,
                job,
            )
            return None
        if held is False:
            return f"stale: no heartbeat for {age:.0f} s, job {job} ended ({job_state(job)})"
    return f"stale: no heartbeat for {age:.0f} s"


def stale_candidates(
    handle: StudyHandle, keep: KeepCheck | None = None, own_job: str | None = None
) -> list[StaleTrial]:
    """RUNNING trials past the grace period whose worker is not coming back (``own_job``: see
    :func:`why_stale`). Outside the lock."""
    grace = handle.storage.grace_period
    if grace is None:
        return []
    found = []
    for trial_id, number, age in stale_running(handle, grace):
        trial = handle.cache.get_trial(trial_id)
        if trial.state != TrialState.RUNNING:
            continue
        reason = why_stale(trial, age, keep, own_job)
        if reason is not None:
            found.append(StaleTrial(trial_id, number, age, reason))
    return found


def fail_stale(
    handle: StudyHandle, candidates: list[StaleTrial], requeue: RequeueStaleTrial
) -> list[int]:
    """Fail each candidate that is still stale, with its reason, and re-enqueue it. In the lock.

    Returns:
        Numbers of the trials failed now.
    """
    if not candidates:
        return []
    grace = handle.storage.grace_period or 0
    still_stale = {trial_id for trial_id, _, _ in stale_running(handle, grace)}
    storage = handle.cache
    failed = []
    for candidate in candidates:
        if candidate.trial_id not in still_stale:
            continue  # its worker came back (a heartbeat) or told it meanwhile
        try:
            storage.set_trial_user_attr(candidate.trial_id, attrs.FAIL_REASON, candidate.reason)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if not fail_trial(handle, candidate.number):
            continue
        log.warning("trial %d failed: %s", candidate.number, candidate.reason)
        requeue(handle.study, storage.get_trial(candidate.trial_id))
        failed.append(candidate.number)
    return failed


def fail_orphaned_trials(handle: StudyHandle) -> list[int]:
    """Fail RUNNING trials that never recorded a heartbeat. Call it holding the claim lock.

    A claim records the first heartbeat of its trial right after asking it, inside the claim
    lock. So while the lock is held, no claim is half-way, and a RUNNING trial without any
    heartbeat is one whose claim was cut (the database went away between the ask and the first
    heartbeat): it never trained and nobody owns it. Optuna never declares a trial without a
    heartbeat stale, so it would hold a budget slot forever; it is failed at once, without a
    retry (there is nothing to resume).
    """
    storage = handle.cache
    failed = []
    for trial_id, number, _ in running_without_heartbeat(handle):
        try:
            storage.set_trial_user_attr(
                trial_id, attrs.FAIL_REASON, "orphaned: its claim was cut before it trained"
            )
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if fail_trial(handle, number):
            log.warning("trial %d was asked but never claimed: failed as orphaned", number)
            failed.append(number)
    return failed


class RequeueStaleTrial:
    """Re-enqueue a dead trial with the same parameters.

    The retry records the original trial number (``cnas:retry_of``), the trial it replaces
    (``cnas:retried_from``) and how many retries preceded it (``cnas:retry_count``), so a
    resumed trial can find the dead one's checkpoint; a known cell keeps its
    ``cnas:enqueued_as``. After ``max_retry`` retries the
    parameters are dropped (the slot is freed for a new proposal).
    """

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not trial.params:
            log.warning(
                "trial %d died before its architecture was written: not retried", trial.number
            )
            return
        retries = int(trial.user_attrs.get(attrs.RETRY_COUNT, 0))
        if retries >= self.max_retry:
            log.warning(
                "trial %d went stale after %d retries: not retried again", trial.number, retries
            )
            return
        retry_attrs: dict[str, object] = {
            attrs.RETRY_OF: int(trial.user_attrs.get(attrs.RETRY_OF, trial.number)),
            attrs.RETRIED_FROM: trial.number,
            attrs.RETRY_COUNT: retries + 1,
        }
        if attrs.ENQUEUED_AS in trial.user_attrs:  # a known cell stays one when retried
            retry_attrs[attrs.ENQUEUED_AS] = trial.user_attrs[attrs.ENQUEUED_AS]
        study.enqueue_trial(trial.params, user_attrs=retry_attrs, skip_if_exists=False)
        log.warning("trial %d re-enqueued as a retry", trial.number)
