"""Stale trials on a real SQLite study and the REAL local SLURM cluster: a trial whose job SLURM
still holds is kept however old its heartbeat; one whose job is gone is failed with its reason
and retried; a trial whose result waits on disk is kept."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from cnas_hpc.config.study import StudyConfig
from cnas_hpc.distributed.jobs import job_is_held, job_state
from cnas_hpc.study.claim import ClaimStatus, claim_trial
from cnas_hpc.study.handle import StudyHandle
from cnas_hpc.study.optuna_internals import open_handle
from cnas_hpc.study.stale import stale_candidates
from cnas_hpc.study.storage import make_storage

GRACE_S = 2


@pytest.fixture
def handle(tmp_path: Path) -> Iterator[StudyHandle]:
    cfg = StudyConfig(
        storage=f"sqlite:///{tmp_path / 'stale.db'}", heartbeat_interval=1, grace_period=GRACE_S
    )
    storage = make_storage(cfg, create_tables=True)
    optuna.create_study(storage=storage, study_name="stale")
    yield open_handle(storage, "stale")
    storage.engine.dispose()


@pytest.fixture
def sleeping_job() -> Iterator[str]:
    """A real SLURM job that runs (or waits) for a minute; cancelled afterwards."""
    name = f"cnas-stale-{uuid.uuid4().hex[:10]}"
    out = subprocess.run(
        ["sbatch", "--parsable", "-c", "1", "--mem=50M", f"--job-name={name}", "--wrap=sleep 60"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    job = out.strip().split(";")[0]
    try:
        yield job
    finally:
        subprocess.run(["scancel", job], capture_output=True, check=False)


def running_trial(handle: StudyHandle, job: str | None) -> optuna.Trial:
    trial = handle.study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    if job is not None:
        trial.set_user_attr(attrs.WORKER, f"slurm:{job}")
        trial.set_user_attr(attrs.JOB, job)
    storage = handle.storage
    storage.record_heartbeat(
        storage.get_trial_id_from_study_id_trial_number(handle.study_id, trial.number)
    )
    return trial


@pytest.mark.slurm
def test_slurm_decides_whether_a_silent_trial_is_stale(
    handle: StudyHandle, sleeping_job: str
) -> None:
    assert job_is_held(sleeping_job) is True
    held = running_trial(handle, sleeping_job)  # e.g. requeued, waiting in BeginTime
    lost = running_trial(handle, None)  # a worker outside SLURM: the heartbeat decides
    pending = running_trial(handle, None)  # its result waits on disk
    time.sleep(GRACE_S + 1.5)
    found = stale_candidates(handle, keep=lambda t: t.number == pending.number)
    assert [(c.number, c.reason.split(" for ")[0]) for c in found] == [
        (lost.number, "stale: no heartbeat")
    ]

    subprocess.run(["scancel", sleeping_job], check=True)
    deadline = time.monotonic() + 60
    while job_is_held(sleeping_job) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job_is_held(sleeping_job) is False
    assert job_state(f"{sleeping_job}999") is None  # a job SLURM never heard of

    claim = claim_trial(handle, n_trials=10, keep=lambda t: t.number == pending.number)
    assert claim.status is ClaimStatus.CLAIMED
    failed = {t.number: t for t in handle.study.get_trials(states=(TrialState.FAIL,))}
    assert set(failed) == {held.number, lost.number}
    reason = failed[held.number].user_attrs[attrs.FAIL_REASON]
    assert reason.startswith("stale: no heartbeat for ") and f"job {sleeping_job} ended (" in reason
    assert handle.study.trials[pending.number].state == TrialState.RUNNING
    # both retried with the same parameters (the claim itself took one of the retries)
    retries = [t for t in handle.study.trials if attrs.RETRY_OF in t.user_attrs]
    assert sorted(t.user_attrs[attrs.RETRY_OF] for t in retries) == sorted(failed)


@pytest.mark.slurm
def test_a_silent_trial_of_the_claiming_job_itself_is_stale_while_slurm_holds_it(
    handle: StudyHandle, sleeping_job: str
) -> None:
    # A requeue keeps the job id: the requeued worker (claiming, running nothing) meets a trial
    # its earlier run left without a genotype (not adopted). SLURM holds the job - the asker.
    left = running_trial(handle, sleeping_job)
    time.sleep(GRACE_S + 1.5)
    assert job_is_held(sleeping_job) is True
    assert stale_candidates(handle) == []  # another worker: the held job spares it
    (found,) = stale_candidates(handle, own_job=sleeping_job)
    assert found.number == left.number and "earlier run of job" in found.reason
    identity = {attrs.WORKER: f"slurm:{sleeping_job}", attrs.JOB: sleeping_job}
    claim = claim_trial(handle, n_trials=10, identity=identity)
    assert claim.status is ClaimStatus.CLAIMED
    assert handle.study.trials[left.number].state == TrialState.FAIL
