"""The cluster path for real: Hydra multirun → submitit → ONE SLURM array → workers → PostgreSQL.

Needs the local dev cluster (``bash slurm/dev-cluster.sh up``): a real slurmctld/slurmd and a real
PostgreSQL server; in CI these tests fail rather than skip when a service is missing.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from tests.helpers import run_search, sacct_array_tasks

pytestmark = [pytest.mark.slurm, pytest.mark.postgres, pytest.mark.slow]

#: A tiny proxy, a few steps per trial. No train.num_threads: each rank sizes its torch threads
#: from its allocation (slurm_cpu asks cpus_per_task=1 on the 2-core node). A fixed layout
#: (train.perf=nchw): workers that start together each measured the layouts (16 of 16 in the
#: sixteen-worker array, 2-15 s each on the loaded node); the autotuner has its own tests.
CLUSTER_TINY = (
    "hydra/launcher=slurm_cpu",
    "debug=tiny",
    "search.objectives=[]",  # one objective, as tests.helpers.TINY: the mechanics under test
    "train.perf=nchw",
    "study=postgres",
    "study.name=slurm-test",
    "search.poll_seconds=1",
)


def multirun(
    url: str, home: Path, n_workers: int, n_trials: int, *extra: str
) -> subprocess.CompletedProcess[str]:
    result = run_search(
        [
            "-m",
            *CLUSTER_TINY,
            f"study.storage={url}",
            f"worker=range({n_workers})",
            f"search.n_trials={n_trials}",
            *extra,
        ],
        home=home,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def trials_of(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="slurm-test", storage=url).get_trials(deepcopy=False)


def worker_logs(home: Path) -> str:
    logs = sorted(home.glob("hydra/slurm-test/multirun/*/.submitit/*/*_log.*"))
    return "\n".join(p.read_text(errors="replace") for p in logs)


def assert_exact_budget(trials: list[optuna.trial.FrozenTrial], n_trials: int) -> None:
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] == n_trials, states
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0, states
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == len(params), "two COMPLETE trials share their parameters"


@pytest.mark.cost(20)
def test_a_two_rank_ddp_worker_trains_on_both_ranks(fresh_pg_url: str, tmp_path: Path) -> None:
    multirun(fresh_pg_url, tmp_path, 1, 2, "hydra.launcher.tasks_per_node=2")
    trials = trials_of(fresh_pg_url)
    assert_exact_budget(trials, 2)
    assert all(t.user_attrs[attrs.WORLD_SIZE] == 2 for t in trials)
    assert all(t.user_attrs[attrs.CPU_THREADS] == 1 for t in trials)
    logs = worker_logs(tmp_path)
    for rank in (0, 1):
        assert f"rank {rank}/2 trained trial" in logs, logs[-3000:]


@pytest.mark.cost(65)
def test_sixteen_workers_share_a_fresh_database_through_one_array(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    # One multirun for every check of a many-worker array (a second, smaller one proved nothing
    # more and cost a minute and a half of the suite): the exact budget, ONE array whose tasks all
    # complete and share the work, the worker labels, the threads, and a fresh database that 16
    # workers create at once without a schema race.
    multirun(fresh_pg_url, tmp_path, 16, 24, "hydra.launcher.array_parallelism=16")
    trials = trials_of(fresh_pg_url)
    assert_exact_budget(trials, 24)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    array_jobs = {t.user_attrs[attrs.ARRAY_JOB] for t in complete}
    assert len(array_jobs) == 1, array_jobs  # ONE array
    (array_job,) = array_jobs
    tasks = sacct_array_tasks(array_job)
    assert len(tasks) == 16 and all("COMPLETED" in line for line in tasks), tasks
    # the launcher recorded the array in the study (a rerun while it runs is refused)
    study = optuna.load_study(study_name="slurm-test", storage=fresh_pg_url)
    assert study.user_attrs[attrs.STUDY_ARRAYS] == [array_job]
    # every trial records which array task ran it, and the tasks shared the work
    ran = {t.user_attrs[attrs.ARRAY_TASK] for t in complete}
    assert ran <= set(range(16)) and len(ran) > 1, ran
    assert all(
        t.user_attrs[attrs.WORKER] == f"slurm:{array_job}_{t.user_attrs[attrs.ARRAY_TASK]}"
        for t in complete
    )
    # one torch thread each, from SLURM_CPUS_PER_TASK=1, not one per core of the node
    assert {t.user_attrs[attrs.CPU_THREADS] for t in complete} == {1}
    logs = worker_logs(tmp_path)
    assert "1 intra-op / 1 inter-op thread(s) (1 CPU(s) from SLURM_CPUS_PER_TASK=1)" in logs
    assert "IntegrityError" not in logs and "alembic_version" not in logs


@pytest.mark.cost(30)
def test_a_multi_objective_array_is_exact_and_times_each_cell_once(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    # Three workers, objectives score (NASWOT: nothing trained, seconds) + params + latency of
    # the 20 x 36 CIFAR network on the CPU, constrained: the budget counts COMPLETE trials only.
    multirun(
        fresh_pg_url,
        tmp_path,
        3,
        4,
        "search.objective=naswot",
        "search.objectives=[score,params,latency_ms]",
        "search.constraints=[params<=2.6e6]",
        "cost.warmup=0",
        "cost.repeats=2",
    )
    trials = trials_of(fresh_pg_url)
    assert_exact_budget(trials, 4)
    study = optuna.load_study(study_name="slurm-test", storage=fresh_pg_url)
    assert len(study.directions) == 3
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(t.user_attrs[attrs.COST_PARAMS] <= 2.6e6 for t in complete)
    assert all(len(t.values) == 3 and t.values[2] > 0 for t in complete)
    assert len({t.user_attrs[attrs.ARRAY_TASK] for t in complete}) > 1  # shared
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs[attrs.INFEASIBLE] for t in pruned)
    # Latency (and size) measured once per cell and device, whichever worker met it again.
    measured = Counter(
        (t.user_attrs[attrs.ARCH_HASH], t.user_attrs[attrs.COST_DEVICE])
        for t in trials
        if t.user_attrs.get(attrs.COST_CACHED) is False
    )
    assert measured and max(measured.values()) == 1, measured
    timed = [t for t in trials if attrs.COST_LATENCY_MS in t.user_attrs]
    assert {t.user_attrs[attrs.ARCH_HASH] for t in complete} <= {
        t.user_attrs[attrs.ARCH_HASH] for t in timed
    }
