"""Fault tolerance on the REAL local SLURM cluster and PostgreSQL server.

Each test starts the documented multirun in the background, breaks something while trials train
(partition preemption, SIGKILL, a database outage, stopping everything), and checks that the
study still ends with exactly ``search.n_trials`` COMPLETE trials, that interrupted trials resumed
from their checkpoints instead of epoch 0, and that no computed result was lost.

Database outages are OUR workers' only: they reach the shared server through a TCP proxy
(:class:`tests.helpers.DatabaseProxy`) that the test takes down and brings back, so the other
engineers' tests on the same server never notice.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from cnas_hpc.common import attrs
from tests.helpers import ROOT, DatabaseProxy, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.postgres, pytest.mark.slow]

STUDY = "fault-test"
#: Trials of ~6 epochs x ~1-3 s on the 2-core node: long enough to interrupt mid-trial. No
#: train.num_threads: each worker sizes its threads from its allocation (one CPU). A fixed
#: layout (train.perf=nchw): the autotuner's measurement took ~6 s of each run's first trial,
#: longer than its training, and what a resumed trial keeps of it is test_train_checkpoint's.
SLOW_TINY = (
    "hydra/launcher=slurm_cpu",
    "debug=tiny",
    "search.objectives=[]",  # one objective, as tests.helpers.TINY: the mechanics under test
    "train.perf=nchw",
    "study=postgres",
    f"study.name={STUDY}",
    "search.poll_seconds=1",
    "train.epochs=6",
    "train.max_steps_per_epoch=16",
    "model.cells=4",
    "model.channels=8",
)


@pytest.fixture
def proxy() -> Iterator[DatabaseProxy]:
    """The workers' own road to the database, which the test can cut."""
    road = DatabaseProxy()
    road.up()
    try:
        yield road
    finally:
        road.down()


@pytest.fixture
def job_name() -> Iterator[str]:
    """A SLURM job name unique to this test; its jobs are cancelled afterwards, by name."""
    name = f"cnas-fault-{uuid.uuid4().hex[:10]}"
    yield name
    subprocess.run(["scancel", "--name", name], capture_output=True, timeout=30, check=False)


def start(url: str, home: Path, *overrides: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CNAS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "launch" / "search.py"),
            "-m",
            *SLOW_TINY,
            f"study.storage='{url}'",
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


def early_checkpoints(home: Path) -> list[int]:
    """Trials with a checkpoint that still have at least 4 of their 6 epochs to train.

    Only such trials are interrupted: one about to finish could be told COMPLETE before the
    signal lands, and there would be nothing to resume.
    """
    found = []
    for path in sorted((home / "checkpoints" / STUDY).glob("trial-*.pt")):
        try:
            epoch = torch.load(path, map_location="cpu", weights_only=True)["epoch"]
        except (OSError, RuntimeError, KeyError, EOFError):  # removed or replaced meanwhile
            continue
        if epoch <= 2:
            found.append(int(path.stem.split("-")[1]))
    return found


def job_of(url: str, number: int) -> str:
    return str(trials(url)[number].user_attrs[attrs.JOB])


def squeue_state(job: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


def requeued(job: str) -> bool:
    """Whether SLURM holds ``job`` after a requeue (~2 minutes in BeginTime)."""
    return "BeginTime" in squeue_state(job)


def arrays_named(name: str) -> set[str]:
    """Array job ids of jobs named ``name`` (queued or accounted)."""
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 3600))
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "--name", name, "-S", since, "-o", "JobID"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split("_")[0] for line in out.split() if line.strip()}


def worker_logs(home: Path) -> str:
    logs = sorted(home.glob(f"hydra/{STUDY}/multirun/*/.submitit/*/*_log.*"))
    return "\n".join(p.read_text(errors="replace") for p in logs)


def assert_exact(url: str, n_trials: int) -> list[FrozenTrial]:
    all_trials = trials(url)
    states = Counter(t.state for t in all_trials)
    assert states[TrialState.COMPLETE] == n_trials, states
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0, states
    return all_trials


def error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error: ")]


@pytest.mark.slurm_exclusive  # its job in `high` preempts every debug job on the node
@pytest.mark.cost(50)
def test_partition_preemption_keeps_trials_while_slurm_holds_the_jobs(
    fresh_pg_url: str, tmp_path: Path, job_name: str
) -> None:
    """A job in `high` takes the node: both workers checkpoint and are requeued. SLURM then
    holds them ~2 minutes (BeginTime), far longer than the 8 s grace period: their trials are
    kept (SLURM is asked), not failed and retried, and resume at their saved epochs. A rerun of
    the command meanwhile is refused with one line, not a second array."""
    overrides = (
        "worker=range(2)",
        "search.n_trials=3",
        "study.heartbeat_interval=1",
        "study.grace_period=8",
        # Longer epochs, so the trials still train when the preemption lands under load.
        "train.max_steps_per_epoch=40",
        f"hydra.job.name={job_name}",
    )
    proc = start(fresh_pg_url, tmp_path, *overrides)
    preempted = wait_for(
        lambda: len(early_checkpoints(tmp_path)) >= 2 and early_checkpoints(tmp_path),
        "two training trials",
    )
    assert isinstance(preempted, list)
    jobs = {number: job_of(fresh_pg_url, number) for number in preempted[:2]}
    subprocess.run(
        ["sbatch", "-p", "high", "-c", "2", "--mem=100M", f"--job-name={job_name}",
         "--wrap=sleep 15"],
        check=True, capture_output=True,
    )  # fmt: skip
    for job in jobs.values():
        wait_for(partial(requeued, job), f"job {job} requeued", 180)

    code, out = finish(start(fresh_pg_url, tmp_path / "rerun", *overrides), timeout=300)
    assert code == 2, out[-3000:]
    (line,) = error_lines(out)
    assert "is still being worked by SLURM array" in line and "scancel" in line, line
    assert len(arrays_named(job_name) - {""}) == 2  # the workers' array and the preemptor

    time.sleep(10)  # well past the grace period: every trial of the study is stale now
    first, second = jobs.values()
    subprocess.run(["scontrol", "update", f"JobId={first}", "StartTime=now"], check=True)
    # The released worker finishes its trial, then claims: its stale check asks SLURM about
    # the other trial and keeps it.
    wait_for(lambda: "SLURM still holds its job" in worker_logs(tmp_path), "a kept trial", 400)
    subprocess.run(["scontrol", "update", f"JobId={second}", "StartTime=now"], check=True)
    code, out = finish(proc)
    assert code == 0, out[-4000:]
    all_trials = assert_exact(fresh_pg_url, 3)
    assert len(all_trials) == 3  # nothing failed, nothing retried under a new number
    for number in jobs:
        resumed = all_trials[number]
        assert resumed.user_attrs[attrs.REQUEUES] == 1
        assert resumed.user_attrs[attrs.RESUMED_FROM_EPOCH] >= 1  # not from epoch 0
        assert resumed.user_attrs[attrs.HELD_BY_JOB] == ""  # marked while held, cleared after
        assert len(resumed.intermediate_values) == 6  # every epoch reported, none lost


@pytest.mark.cost(150)
def test_an_outage_past_the_deadline_keeps_the_result_for_the_next_run(
    fresh_pg_url: str, tmp_path: Path, proxy: DatabaseProxy
) -> None:
    """A two-rank worker loses the database for longer than study.retry_deadline_s: training
    goes on, the result is written to pending/, rank 0 gives up on the tell and EVERY rank stops
    within seconds (not the 30-minute collective timeout) with one clear line. The launcher
    names the dead worker and exits 1. The next run tells the kept result: nothing is lost."""
    overrides = (
        "worker=range(1)",
        "hydra.launcher.tasks_per_node=2",
        "search.n_trials=2",
        "study.heartbeat_interval=1",
        "study.grace_period=8",
        "study.retry_deadline_s=15",
    )
    url = proxy.url(fresh_pg_url)
    proc = start(url, tmp_path, *overrides)
    number = wait_for(lambda: early_checkpoints(tmp_path), "a training trial")
    assert isinstance(number, list)
    proxy.down()
    down_at = time.monotonic()
    code, out = finish(proc)
    assert time.monotonic() - down_at < 240, "the ranks did not agree to stop in seconds"
    assert code == 1, out[-4000:]
    (line,) = error_lines(out)
    # (submitit submits a lone worker as a plain job: no "_0" task suffix)
    assert re.search(r"1 of 1 worker\(s\) died: worker 0 \(job \d+, FAILED\): database", line)
    pending = sorted((tmp_path / "pending" / STUDY).glob("trial-*.json"))
    assert len(pending) == 1 and str(pending[0]) in line, line
    log_path = Path(line.rsplit("; log: ", 1)[1])
    assert log_path.is_file()  # a log that exists (stderr goes to stdout in the presets)
    ranks = [p for p in log_path.parent.glob("*_log.out")]
    assert len(ranks) == 2 and all(
        "error: database unreachable for" in p.read_text() for p in ranks
    ), "both ranks stop with the same line"
    kept = json.loads(pending[0].read_text())
    assert kept["state"] == "COMPLETE" and kept["number"] == number[0]

    proxy.up()
    code, out = finish(start(url, tmp_path, *overrides))
    assert code == 0, out[-4000:]
    all_trials = assert_exact(fresh_pg_url, 2)
    told = all_trials[kept["number"]]
    assert (told.state, told.value) == (TrialState.COMPLETE, kept["value"])
    assert len(told.intermediate_values) == 6  # reports noted while the database was down
    assert not list((tmp_path / "pending" / STUDY).iterdir())


@pytest.mark.cost(100)
def test_a_worker_waits_for_the_database_and_stops_while_it_waits(
    fresh_pg_url: str, tmp_path: Path, proxy: DatabaseProxy, job_name: str
) -> None:
    """The database is down when the worker starts: it waits instead of exiting. Down again
    between trials: a preemption signal is honoured while the claim (or a tell) waits
    (requeue in seconds, before SLURM's kill). Ctrl-C of the launcher says what keeps running."""
    url = proxy.url(fresh_pg_url)
    proc = start(
        url,
        tmp_path,
        "worker=range(1)",
        "search.n_trials=2",
        "train.epochs=2",
        # A claim cut after its reservation is failed as stale by the requeued run only once
        # the grace period is over: 8 s, not the default 3 minutes (most of the test's time).
        "study.heartbeat_interval=1",
        "study.grace_period=8",
        # The job may start 15 s after it is queued: the database is down by then.
        "+hydra.launcher.additional_parameters.begin=now+15",
        f"hydra.job.name={job_name}",
    )
    job = wait_for(partial(queued_job, job_name), "the queued worker")
    proxy.down()
    wait_for(lambda: "load failed (" in worker_logs(tmp_path), "a worker waiting for the database")
    assert "Connection refused" in worker_logs(tmp_path)  # the driver's error, not Optuna's
    proxy.up()
    wait_for(lambda: any(t.state == TrialState.COMPLETE for t in trials(fresh_pg_url)), "trial 0")
    proxy.down()
    # The outage meets the next claim (its reservation, its proposal or the commit of its
    # genotype), or (a fast candidate trained meanwhile) the tell of trial 1, whose result is
    # then kept on disk and told after the requeue.
    waiting = r"(claim a trial|propose a trial|commit a trial|record trial \d+)"
    wait_for(lambda: re.search(waiting + r" failed \(", worker_logs(tmp_path)), "a waiting call")
    subprocess.run(["scancel", "--signal=USR2", str(job)], check=True)
    wait_for(lambda: "PENDING" in squeue_state(str(job)), "the requeue", 60)
    assert re.search("stop requested while retrying " + waiting, worker_logs(tmp_path))

    proc.send_signal(signal.SIGINT)
    code, out = finish(proc, timeout=60)
    assert code == 130 and "Traceback" not in out, out[-3000:]
    assert "keep running and finish the study" in out
    assert f"scancel {job}" in out

    proxy.up()
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    wait_for(lambda: not squeue_state(str(job)), "the worker to finish", 300)
    all_trials = assert_exact(fresh_pg_url, 2)
    # The outage may cut a claim: that trial never trained. Cut before its first heartbeat, the
    # next claim fails it as orphaned; cut after the reservation (which records the first
    # heartbeat, PostgreSQL) but before its genotype, the requeued run of the same job fails it
    # as stale once the grace period is over. Nothing that trained was lost.
    for trial in all_trials:
        if trial.state == TrialState.FAIL:
            reason = trial.user_attrs[attrs.FAIL_REASON]
            assert reason.startswith("orphaned: ") or re.fullmatch(
                rf"stale: no heartbeat for \d+ s, left by an earlier run of job {job}", reason
            ), trial.user_attrs
            assert attrs.WALL_S not in trial.user_attrs
            assert attrs.N_PARAMS not in trial.user_attrs  # it never started training


def queued_job(name: str) -> str | None:
    """The id of the (one) job named ``name`` in the queue."""
    out = subprocess.run(
        ["squeue", "-h", "--name", name, "-o", "%i"], capture_output=True, text=True, check=False
    ).stdout.split()
    return out[0] if out else None


@pytest.mark.cost(165)
def test_a_killed_worker_s_trial_is_retried_from_its_checkpoint(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    proc = start(
        fresh_pg_url,
        tmp_path,
        "worker=range(2)",
        # Two trials: the survivor finishes its own, then waits (no free slot) until the dead
        # one is stale and retries it; a third trial only added ~22 CPU-s of training.
        "search.n_trials=2",
        "study.heartbeat_interval=1",
        "study.grace_period=8",
        # Longer epochs: the trial must still be training when the KILL lands, and SLURM
        # delivers it only after the step's KillWait (SIGTERM first, which submitit bypasses):
        # up to 7 s here. 60 % of the images make 30 real steps per epoch (the tiny default's 256
        # images made 8, and 4 epochs of 8 steps were done within those 7 s).
        "data.fraction=0.6",
        "train.max_steps_per_epoch=40",
    )
    numbers = wait_for(lambda: early_checkpoints(tmp_path), "a checkpoint")
    assert isinstance(numbers, list)
    number = numbers[0]
    job = job_of(fresh_pg_url, number)
    subprocess.run(["scancel", "--signal=KILL", job], check=True)
    code, out = finish(proc)
    # The launcher neither hung nor hid the dead worker: it names it and exits 1.
    assert code == 1, out[-4000:]
    (line,) = error_lines(out)
    assert f"1 of 2 worker(s) died: worker {job.split('_')[1]} (job {job}, " in line, line
    assert Path(line.rsplit("; log: ", 1)[1]).is_file()
    all_trials = assert_exact(fresh_pg_url, 2)
    dead = all_trials[number]
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs[attrs.FAIL_REASON].startswith("stale: no heartbeat for ")
    assert f"job {job} ended" in dead.user_attrs[attrs.FAIL_REASON]
    (retry,) = [t for t in all_trials if t.user_attrs.get(attrs.RETRY_OF) == number]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == dead.params
    assert retry.user_attrs[attrs.RESUMED_FROM_EPOCH] >= 1


@pytest.mark.cost(140)
def test_stopping_everything_and_rerunning_completes_only_the_rest(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    overrides = (
        "worker=range(2)",
        "search.n_trials=4",  # two to finish, two to kill mid-training
        "study.heartbeat_interval=1",
        "study.grace_period=8",
    )
    proc = start(fresh_pg_url, tmp_path, *overrides)
    wait_for(
        lambda: (
            sum(t.state == TrialState.COMPLETE for t in trials(fresh_pg_url)) >= 2
            and early_checkpoints(tmp_path)
        ),
        "two COMPLETE trials and a checkpoint",
    )
    array = str(trials(fresh_pg_url)[0].user_attrs[attrs.JOB]).split("_")[0]
    subprocess.run(["scancel", "--signal=KILL", array], check=True)
    code, out = finish(proc)  # every worker died: the first multirun fails, as it should
    assert code == 1 and "2 of 2 worker(s) died" in out, out[-3000:]
    before = Counter(t.state for t in trials(fresh_pg_url))
    assert 2 <= before[TrialState.COMPLETE] < 4

    code, out = finish(start(fresh_pg_url, tmp_path, *overrides))
    assert code == 0, out[-4000:]
    assert f"resumed, {before[TrialState.COMPLETE]}/4 trials complete" in out
    all_trials = assert_exact(fresh_pg_url, 4)
    retries = [t for t in all_trials if attrs.RETRY_OF in t.user_attrs]
    assert retries and all(t.state == TrialState.COMPLETE for t in retries)
    assert any(t.user_attrs.get(attrs.RESUMED_FROM_EPOCH, 0) >= 1 for t in retries)
