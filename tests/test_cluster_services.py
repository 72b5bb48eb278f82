"""The real services of the dev cluster (slurm/dev-cluster.sh): SLURM, its accounting, PostgreSQL.

These tests talk to the daemons themselves, no mocks: job arrays, multi-task steps, submitit on
SLURM (results and a SIGKILLed job, which only ends for submitit when accounting works), and a
fresh PostgreSQL database reached by a password-less URL. Every job is tiny, named uniquely and
cancelled in ``finally``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
import submitit
from sqlalchemy.engine import make_url

from hydra_plugins.cnas_hpc_launcher.cluster_launcher import HELD_STATES, ClusterSlurmLauncher

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster

#: Seconds a test waits for a job state before it fails.
DEADLINE_S = 90.0


def _run(*args: str) -> str:
    """Run a SLURM client command and return its stdout (raises on a non-zero exit)."""
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll ``condition`` every 0.5 s; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def _sacct_states(job_id: str) -> dict[str, str]:
    """Job or array-task id -> accounting state, allocations only (no steps)."""
    out = _run("sacct", "-n", "-X", "-j", job_id, "-o", "JobID,State", "--parsable2")
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


@pytest.fixture
def job_name() -> Iterator[str]:
    """A unique job name; every job of that name is cancelled after the test."""
    name = f"cnas-test-{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        subprocess.run(["scancel", "--name", name], capture_output=True, timeout=30, check=False)


@pytest.fixture
def executor(slurm_cluster: SlurmCluster, tmp_path: Path, job_name: str) -> submitit.AutoExecutor:
    """A submitit executor on the default partition: 1 CPU, 2 min, USR2 30 s before the end."""
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    ex.update_parameters(
        name=job_name,
        timeout_min=2,
        cpus_per_task=1,
        slurm_partition=slurm_cluster.partitions[0],
        # submitit's default (90 s) exceeds the 2-min limit: the job would be "timed out" at start.
        slurm_signal_delay_s=30,
    )
    return ex


@pytest.mark.slurm
def test_sbatch_array_runs_four_tasks_under_one_job_id(tmp_path: Path, job_name: str) -> None:
    script = tmp_path / "task.sh"
    script.write_text(
        "#!/bin/bash\n"
        # Long enough for squeue to see all four tasks at once.
        "sleep 4\n"
        f'echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID" > {tmp_path}/done-$SLURM_ARRAY_TASK_ID\n'
    )
    job_id = _run(
        "sbatch", "--parsable", "--array=0-3", "--time=1", f"--job-name={job_name}",
        f"--output={tmp_path}/slurm-%A_%a.out", str(script),
    ).strip().split(";")[0]  # fmt: skip

    def queued() -> set[tuple[str, str]]:
        # -r: one line per array task; %F = array job id, %K = task index.
        out = _run("squeue", "-h", "-r", "-j", job_id, "-o", "%F %K")
        return {(fields[0], fields[1]) for fields in map(str.split, out.splitlines())}

    seen: set[tuple[str, str]] = set()

    def all_seen() -> bool:
        seen.update(queued())
        return len(seen) == 4

    _wait_until(all_seen, "4 array tasks in squeue")
    assert seen == {(job_id, str(i)) for i in range(4)}
    assert f"ArrayJobId={job_id}" in _run("scontrol", "show", "job", job_id)

    _wait_until(lambda: not queued(), "the array to leave the queue")
    results = sorted((tmp_path / f"done-{i}").read_text().split() for i in range(4))
    assert results == [[job_id, str(i)] for i in range(4)]

    # Leaving squeue precedes slurmdbd's record of the final state: wait for it to settle.
    def settled() -> bool:
        states = _sacct_states(job_id)
        return len(states) == 4 and not HELD_STATES & set(states.values())

    _wait_until(settled, "4 array tasks with final states in sacct")
    assert set(_sacct_states(job_id).values()) == {"COMPLETED"}


@pytest.mark.slurm
@pytest.mark.slurm_exclusive  # 24 of the partition's 32 job slots at once
def test_debug_partition_runs_16_single_and_4_two_task_jobs_at_once(job_name: str) -> None:
    # The jobs outlive any scheduling delay of a loaded CI machine (the first must not end
    # before the last starts); the job_name fixture cancels them all at the end.
    common = ("sbatch", "--parsable", "--time=10", "--mem-per-cpu=64M", f"--job-name={job_name}")
    for _ in range(16):
        _run(*common, "--output=/dev/null", "--wrap=sleep 600")
    for _ in range(4):
        _run(*common, "--ntasks=2", "--output=/dev/null", "--wrap=srun sleep 600")

    def running() -> list[str]:
        return _run("squeue", "-h", "-t", "R", "--name", job_name, "-o", "%C").split()

    # 24 CPUs' worth of jobs on the 2-core dev node: only oversubscription runs them together.
    _wait_until(lambda: len(running()) == 20, "20 jobs running at once")
    assert sorted(running()) == ["1"] * 16 + ["2"] * 4


@pytest.mark.slurm
def test_srun_two_tasks_see_their_procid(job_name: str) -> None:
    out = _run(
        "srun", "--ntasks=2", "--time=1", f"--job-name={job_name}",
        "bash", "-c", 'echo "$SLURM_PROCID $SLURM_NTASKS"',
    )  # fmt: skip
    assert sorted(out.split("\n")[:-1]) == ["0 2", "1 2"]


@pytest.mark.slurm
def test_submitit_job_returns_its_result(executor: submitit.AutoExecutor) -> None:
    # A stdlib callable: the job process cannot import this test module by name.
    job = executor.submit(os.getenv, "SLURM_JOB_ID")
    _wait_until(lambda: job.done(force_check=True), "the submitit job to finish")
    assert job.result() == job.job_id
    # The result file can appear before slurmctld reports the end to the accounting.
    _wait_until(lambda: job.get_info(mode="force").get("State") == "COMPLETED", "sacct COMPLETED")


@pytest.mark.slurm
def test_sigkilled_submitit_job_ends_in_a_failure_state(executor: submitit.AutoExecutor) -> None:
    job = executor.submit(time.sleep, 120)
    _wait_until(lambda: job.get_info(mode="force").get("State") == "RUNNING", "job to run")
    # The job leaves squeue without a result file: only sacct can tell submitit it ended.
    _run("scancel", "--signal=KILL", job.job_id)
    _wait_until(lambda: job.done(force_check=True), "the killed job to be done")
    assert job.state.split()[0] in {"FAILED", "CANCELLED"}
    # No result: submitit's job.result() would wait for one, then raise.
    assert not job.paths.result_pickle.exists()


@pytest.mark.slurm
@pytest.mark.cost(45)
def test_launcher_waits_for_a_suspended_worker_instead_of_failing_it(
    executor: submitit.AutoExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    job = executor.submit(time.sleep, 20)
    _wait_until(lambda: job.get_info(mode="force").get("State") == "RUNNING", "job to run")
    _run("scontrol", "suspend", job.job_id)
    # The premise: submitit takes SUSPENDED for an end (and would raise "no output").
    _wait_until(lambda: job.done(force_check=True), "submitit to call the suspended job done")
    # Resumed after submitit's own wait for a result file (15 s) has run out.
    resume = threading.Timer(20.0, _run, args=("scontrol", "resume", job.job_id))
    resume.start()
    try:
        launcher = ClusterSlurmLauncher()
        launcher.held_poll_s = 1.0
        with caplog.at_level(logging.WARNING):
            assert launcher._result(job) is None  # time.sleep's result, once it really ended
    finally:
        resume.cancel()
    assert "SLURM still holds it (SUSPENDED)" in caplog.text
    # Asked directly: submitit's watcher keeps its (wrong) cached end of this job.
    _wait_until(lambda: _sacct_states(job.job_id).get(job.job_id) == "COMPLETED", "COMPLETED")


@pytest.mark.slurm
@pytest.mark.cost(24)
def test_launcher_reports_a_killed_worker_as_failed(executor: submitit.AutoExecutor) -> None:
    job = executor.submit(time.sleep, 120)
    _wait_until(lambda: job.get_info(mode="force").get("State") == "RUNNING", "job to run")
    _run("scancel", "--signal=KILL", job.job_id)
    launcher = ClusterSlurmLauncher()
    launcher.held_poll_s = 1.0
    # Gone from the queue: submitit's verdict stands, no endless wait.
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        launcher._result(job)


@pytest.mark.postgres
def test_fresh_database_reachable_without_password_in_url(fresh_pg_url: str) -> None:
    url = make_url(fresh_pg_url)
    assert fresh_pg_url.startswith("postgresql+psycopg2://")
    assert url.password is None
    assert url.database is not None
    assert url.database.startswith("cnas_test_")
    engine = sa.create_engine(fresh_pg_url)
    try:
        with engine.begin() as conn:
            assert conn.scalar(sa.text("SELECT current_database()")) == url.database
            tables = sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            assert conn.scalar(tables) == 0
            conn.execute(sa.text("CREATE TABLE t (x integer)"))
            conn.execute(sa.text("INSERT INTO t VALUES (7)"))
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT x FROM t")) == 7
            # 16+ concurrent workers each hold a few connections (see dev-cluster.sh).
            assert int(conn.scalar(sa.text("SHOW max_connections"))) >= 300
    finally:
        engine.dispose()
