"""Fault tolerance on the REAL local SLURM cluster and PostgreSQL server.

Each test starts the documented multirun in the background, breaks something while trials
train (preemption, SIGKILL, a database restart, stopping everything), and checks that the study
still ends with exactly ``search.n_trials`` COMPLETE trials and that interrupted trials resumed
from their checkpoints instead of epoch 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from cnas_hpc.common import attrs
from tests.helpers import ROOT, sacct_array_tasks

pytestmark = [pytest.mark.slurm, pytest.mark.postgres, pytest.mark.slow]

STUDY = "fault-test"
#: Trials of ~6 epochs x ~1-3 s on the 2-core node: long enough to interrupt mid-trial.
SLOW_TINY = (
    "hydra/launcher=slurm_cpu",
    "debug=tiny",
    "study=postgres",
    f"study.name={STUDY}",
    "search.poll_seconds=1",
    "train.epochs=6",
    "train.max_steps_per_epoch=16",
    "model.cells=4",
    "model.channels=8",
)


def start(url: str, home: Path, *overrides: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CNAS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "launch" / "search.py"),
            "-m",
            *SLOW_TINY,
            f"study.storage={url}",
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the multirun hung:\n{out[-4000:]}")
    return proc.returncode, out


def trials(url: str) -> list[FrozenTrial]:
    try:
        return optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)
    except KeyError:  # the submitting side has not bootstrapped the study yet
        return []


def wait_for(condition: Callable[[], object], what: str, timeout: float = 300) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def checkpointed_trial(home: Path) -> int | None:
    """A trial with a checkpoint that still has at least 4 of its 6 epochs to train.

    Only such a trial is interrupted: one about to finish could be told COMPLETE before the
    signal lands, and there would be nothing to resume.
    """
    for path in sorted((home / "checkpoints" / STUDY).glob("trial-*.pt")):
        try:
            epoch = torch.load(path, map_location="cpu", weights_only=True)["epoch"]
        except (OSError, RuntimeError, KeyError, EOFError):  # removed or replaced meanwhile
            continue
        if epoch <= 2:
            return int(path.stem.split("-")[1])
    return None


def job_of(url: str, number: int) -> str:
    return str(trials(url)[number].user_attrs[attrs.JOB])


def squeue_state(job: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


def assert_exact(url: str, n_trials: int) -> list[FrozenTrial]:
    all_trials = trials(url)
    states = Counter(t.state for t in all_trials)
    assert states[TrialState.COMPLETE] == n_trials, states
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0, states
    return all_trials


def test_a_preempted_worker_is_requeued_and_resumes_the_same_trial(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    # Longer epochs, so the trial is still training when the signal lands under load.
    proc = start(
        fresh_pg_url,
        tmp_path,
        "worker=range(1)",
        "search.n_trials=2",
        "train.max_steps_per_epoch=40",
    )
    number = wait_for(lambda: checkpointed_trial(tmp_path), "a checkpoint")
    assert isinstance(number, int)
    job = job_of(fresh_pg_url, number)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    # submitit requeues the job; SLURM holds it ~120 s (BeginTime): release it now.
    wait_for(lambda: "PENDING" in squeue_state(job), "the requeued job")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    code, out = finish(proc)
    assert code == 0, out[-4000:]
    resumed = assert_exact(fresh_pg_url, 2)[number]
    assert resumed.state == TrialState.COMPLETE  # the SAME trial number finished
    assert resumed.user_attrs[attrs.REQUEUES] == 1
    assert resumed.user_attrs[attrs.RESUMED_FROM_EPOCH] >= 1  # not from epoch 0
    assert len(trials(fresh_pg_url)) == 2  # no retry, no extra trial


def test_a_killed_worker_s_trial_is_retried_from_its_checkpoint(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    proc = start(
        fresh_pg_url,
        tmp_path,
        "worker=range(2)",
        "search.n_trials=3",
        "study.heartbeat_interval=1",
        "study.grace_period=8",
        # Longer epochs: SLURM may take seconds to deliver the KILL under load, and the trial
        # must still be training when it lands.
        "train.max_steps_per_epoch=40",
    )
    number = wait_for(lambda: checkpointed_trial(tmp_path), "a checkpoint")
    assert isinstance(number, int)
    subprocess.run(["scancel", "--signal=KILL", job_of(fresh_pg_url, number)], check=True)
    code, out = finish(proc)
    assert code == 0, out[-4000:]  # the launcher neither hung nor failed for one dead worker
    all_trials = assert_exact(fresh_pg_url, 3)
    assert all_trials[number].state == TrialState.FAIL
    (retry,) = [t for t in all_trials if t.user_attrs.get(attrs.RETRY_OF) == number]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == all_trials[number].params
    assert retry.user_attrs[attrs.RESUMED_FROM_EPOCH] >= 1


def test_a_database_restart_mid_study_loses_nothing(fresh_pg_url: str, tmp_path: Path) -> None:
    proc = start(
        fresh_pg_url,
        tmp_path,
        "worker=range(2)",
        "search.n_trials=5",
        "study.heartbeat_interval=1",
        "study.grace_period=8",
    )
    wait_for(
        lambda: any(t.state == TrialState.COMPLETE for t in trials(fresh_pg_url)),
        "a first COMPLETE trial",
    )
    subprocess.run(["pg_ctlcluster", "15", "main", "restart"], check=True)
    code, out = finish(proc)
    assert code == 0, out[-4000:]
    all_trials = assert_exact(fresh_pg_url, 5)
    # A claim cut by the restart may leave a trial that was asked but never trained: it is
    # failed as orphaned. No trial that trained was lost.
    for trial in all_trials:
        if trial.state == TrialState.FAIL:
            assert attrs.WALL_S not in trial.user_attrs, trial.user_attrs
    array = all_trials[0].user_attrs[attrs.ARRAY_JOB]

    states = sacct_array_tasks(str(array))
    assert len(states) == 2 and all(line.endswith("|COMPLETED") for line in states), states


def test_stopping_everything_and_rerunning_completes_only_the_rest(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    overrides = (
        "worker=range(2)",
        "search.n_trials=6",
        "study.heartbeat_interval=1",
        "study.grace_period=8",
    )
    proc = start(fresh_pg_url, tmp_path, *overrides)
    wait_for(
        lambda: (
            sum(t.state == TrialState.COMPLETE for t in trials(fresh_pg_url)) >= 2
            and checkpointed_trial(tmp_path) is not None
        ),
        "two COMPLETE trials and a checkpoint",
    )
    array = str(trials(fresh_pg_url)[0].user_attrs[attrs.JOB]).split("_")[0]
    subprocess.run(["scancel", "--signal=KILL", array], check=True)
    finish(proc)  # every worker died: the first multirun fails, as it should
    before = Counter(t.state for t in trials(fresh_pg_url))
    assert 2 <= before[TrialState.COMPLETE] < 6

    code, out = finish(start(fresh_pg_url, tmp_path, *overrides))
    assert code == 0, out[-4000:]
    assert f"resumed, {before[TrialState.COMPLETE]}/6 trials complete" in out
    all_trials = assert_exact(fresh_pg_url, 6)
    retries = [t for t in all_trials if attrs.RETRY_OF in t.user_attrs]
    assert retries and all(t.state == TrialState.COMPLETE for t in retries)
    assert any(t.user_attrs.get(attrs.RESUMED_FROM_EPOCH, 0) >= 1 for t in retries)
