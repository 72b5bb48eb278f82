"""Study-side measurements of ``bench_orchestration.py``: claim/tell latency at 100, 1,000 and
10,000 trials, a new worker's start on a 10,000-trial study, and 16/64/128 concurrent workers.

Every number is measured on the dev cluster's PostgreSQL (a scratch database per measurement)
with the search's real settings and code (``TrialOwner.claim`` / ``finish``), side by side with
Optuna's stock path on the same study: ``optuna.load_study`` and ``study.ask()`` + one
``suggest_categorical`` per parameter + one ``set_user_attr`` per attribute, under the same claim
lock (what the worker did before issue 13).
"""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
from optuna.trial import TrialState

from benchmarks.orchestration_lib import (
    ROOT,
    bench_settings,
    encoding_of,
    percentiles,
    populate,
    scratch_database,
)
from cnas_hpc.common import attrs
from cnas_hpc.common.heap import freeze_startup_heap
from cnas_hpc.config import Settings
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.search.owner import TrialOwner
from cnas_hpc.space.encoding import compact_hash
from cnas_hpc.space.genotype import genotype_to_json
from cnas_hpc.study.claim import study_lock
from cnas_hpc.study.handle import StudyHandle
from cnas_hpc.study.heartbeat import Heartbeat
from cnas_hpc.study.lifecycle import bootstrap_study, load_study

#: The documented cheaper sampler setting for very large studies (README, "PostgreSQL sizing").
CHEAP_SAMPLER = ("study.sampler.max_history=1000",)


def _env(worker: int) -> DistEnv:
    return DistEnv(job_id=f"9000_{worker}", array_job_id="9000", array_task_id=worker)


def _claim_tell(owner: TrialOwner, rng: random.Random) -> tuple[float, float]:
    started = time.perf_counter()
    assignment, _ = owner.claim()
    claimed = time.perf_counter()
    assert assignment.kind == "train", assignment
    owner.finish(TrialState.COMPLETE, rng.uniform(3.0, 4.5), {attrs.WALL_S: 1.0})
    return claimed - started, time.perf_counter() - claimed


def _stock_claim_tell(
    settings: Settings, study: optuna.Study, lock: StudyHandle, rng: random.Random
) -> tuple[float, float]:
    """Optuna's stock path under the same lock (``lock``'s): ask, suggest each parameter, set
    attributes."""
    encoding = encoding_of(settings)
    started = time.perf_counter()
    with study_lock(lock):
        trial = study.ask()
        genotype = encoding.suggest(trial)
        for key, value in {
            attrs.GENOTYPE: genotype_to_json(genotype),
            attrs.ARCH_HASH: compact_hash(genotype),
            attrs.WORKER: "slurm:9000_0",
            attrs.JOB: "9000_0",
            attrs.HOST: "node",
            attrs.WORLD_SIZE: 1,
        }.items():
            trial.set_user_attr(key, value)
    claimed = time.perf_counter()
    trial.set_user_attr(attrs.WALL_S, 1.0)
    study.tell(trial, rng.uniform(3.0, 4.5))
    return claimed - started, time.perf_counter() - claimed


def latency(sizes: list[int], repeats: int, work: Path) -> dict[str, Any]:
    """Claim and tell latency, ours (default and cheap sampler) and stock, at each size."""
    out: dict[str, Any] = {}
    rng = random.Random(0)
    with scratch_database() as url:
        settings = bench_settings(url, work)
        bootstrap_study(settings)
        study = load_study(settings, worker=0)
        for size in sizes:
            populate(study, encoding_of(settings), size)
            row: dict[str, Any] = {}
            for name, overrides in (("ours", ()), ("ours_cheap_sampler", CHEAP_SAMPLER)):
                owner = TrialOwner(
                    bench_settings(url, work, *overrides), _env(0), encoding_of(settings)
                )
                started = time.perf_counter()
                _claim_tell(owner, rng)  # the first claim reads the study: reported apart
                row[f"{name}_first_claim_s"] = time.perf_counter() - started
                cpu = time.process_time()
                samples = [_claim_tell(owner, rng) for _ in range(repeats)]
                row[f"{name}_cpu_ms"] = (time.process_time() - cpu) / repeats * 1e3
                row[f"{name}_claim"] = percentiles([c for c, _ in samples])
                row[f"{name}_tell"] = percentiles([t for _, t in samples])
            stock = optuna.load_study(study_name="bench", storage=url)
            stock.sampler = optuna.samplers.TPESampler(
                n_startup_trials=4,
                n_ei_candidates=24,
                multivariate=True,
                constant_liar=True,
                seed=0,
            )
            started = time.perf_counter()
            _stock_claim_tell(settings, stock, study, rng)
            row["stock_first_claim_s"] = time.perf_counter() - started
            samples = [_stock_claim_tell(settings, stock, study, rng) for _ in range(repeats)]
            row["stock_claim"] = percentiles([c for c, _ in samples])
            row["stock_tell"] = percentiles([t for _, t in samples])
            out[str(size)] = row
            print(f"latency at {size} trials: {row}", flush=True)
    return out


_WORKER_START = """
import sys, time
t0 = float(sys.argv[1])
from benchmarks.orchestration_lib import bench_settings
from cnas_hpc.search.worker import run_worker
from cnas_hpc.distributed.env import DistEnv
from pathlib import Path
imported = time.time()

class Stop(Exception):
    pass

class Clock:
    def trial_started(self, info, **sizes):
        print(f"TRAINING {imported - t0:.3f} {time.time() - t0:.3f}", flush=True)
        import os; os._exit(0)
    def __getattr__(self, name):
        return lambda *a, **k: None

settings = bench_settings(sys.argv[2], Path(sys.argv[3]), "search.n_trials=1000000",
                          "debug=tiny", "data=npz", f"data.path={sys.argv[4]}")
run_worker(settings, DistEnv(job_id="9999", launcher="slurm"), observers=lambda study: [Clock()])
"""


def new_worker(size: int, work: Path) -> dict[str, Any]:
    """Seconds from a new worker process's start to its first trial training, on a ``size``
    trial study; and Optuna's stock read of the same study, side by side."""
    with scratch_database() as url:
        settings = bench_settings(url, work)
        bootstrap_study(settings)
        populate(load_study(settings, worker=0), encoding_of(settings), size)
        stock_started = time.perf_counter()
        trials = optuna.load_study(study_name="bench", storage=url).get_trials(deepcopy=False)
        stock_read = time.perf_counter() - stock_started
        assert len(trials) == size
        ours_started = time.perf_counter()
        primed = load_study(settings, worker=0)
        assert len(primed.study.get_trials(deepcopy=False)) == size
        ours_read = time.perf_counter() - ours_started
        # CIFAR-sized images in an npz file, as a cluster search reads them.
        images = work / "images.npz"
        np.savez(
            images, images=np.random.default_rng(0).integers(0, 255, (2048, 32, 32, 3), np.uint8)
        )
        started = time.time()
        run = subprocess.run(
            [sys.executable, "-c", _WORKER_START, str(started), url, str(work), str(images)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYTHONPATH": str(ROOT), "SLURM_CPUS_PER_TASK": "1"},
        )
        line = [x for x in run.stdout.splitlines() if x.startswith("TRAINING")]
        assert line, run.stdout[-2000:] + run.stderr[-4000:]
        imported, training = (float(x) for x in line[0].split()[1:])
    result = {
        "trials": size,
        "process_start_to_training_s": training,
        "imports_s": imported,
        "worker_start_to_training_s": training - imported,
        "ours_read_study_s": ours_read,
        "stock_read_study_s": stock_read,
    }
    print(f"new worker on {size} trials: {result}", flush=True)
    return result


# -- concurrent workers -------------------------------------------------------------------------


def _concurrent_worker(
    settings: Settings, worker: int, median_s: float, results: Any, barrier: Any
) -> None:
    """One worker process: claim, 'train' (sleep with a real heartbeat), tell, until done.

    Puts ``(worker, claims, trials, errors)``: every claim's seconds, and per trial
    ``(claim s, tell s, whether it was the worker's first claim)``.
    """
    rng = random.Random(worker)
    errors: list[str] = []
    claims: list[float] = []
    trials: list[tuple[float, float, bool]] = []
    try:
        settings = dataclasses.replace(settings, worker=worker)
        owner = TrialOwner(settings, _env(worker), encoding_of(settings))
        freeze_startup_heap()  # what run_worker does once its start-up is done
        barrier.wait()
        while True:
            started = time.perf_counter()
            assignment, _ = owner.claim()
            claims.append(time.perf_counter() - started)
            if assignment.kind == "done":
                break
            if assignment.kind == "wait":
                time.sleep(settings.search.poll_seconds)
                continue
            assert owner.trial_id is not None
            interval = settings.study.heartbeat_interval
            beat = Heartbeat(owner.storage, owner.trial_id, interval, release=owner.release)
            with beat:
                time.sleep(rng.lognormvariate(0.0, 0.5) * median_s)
            started = time.perf_counter()
            owner.finish(TrialState.COMPLETE, rng.uniform(3.0, 4.5), {attrs.WALL_S: 1.0})
            trials.append((claims[-1], time.perf_counter() - started, len(claims) == 1))
    except Exception as exc:  # counted, not hidden
        errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    results.put((worker, claims, trials, errors))


def _count_connections(url: str, stop: threading.Event, peak: list[int]) -> None:
    database = sqlalchemy.engine.make_url(url).database
    engine = sqlalchemy.create_engine(
        url.replace(f"/{database}", "/cnas"), poolclass=sqlalchemy.pool.NullPool
    )
    query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d")
    with engine.connect() as conn:
        while not stop.is_set():
            peak.append(int(conn.execute(query, {"d": database}).scalar() or 0))
            conn.commit()
            time.sleep(0.1)
    engine.dispose()


def concurrency(
    workers: int, trials_per_worker: int, median_s: float, work: Path
) -> dict[str, Any]:
    """``workers`` processes share one PostgreSQL study: errors, peak connections, latency."""
    context = multiprocessing.get_context("fork")
    with scratch_database() as url:
        settings = bench_settings(url, work, f"search.n_trials={workers * trials_per_worker}")
        bootstrap_study(settings)
        results: Any = context.Queue()
        barrier: Any = context.Barrier(workers + 1)
        processes = [
            context.Process(
                target=_concurrent_worker,
                args=(settings, w, median_s, results, barrier),
            )
            for w in range(workers)
        ]
        gc.freeze()  # the children share the parent's objects without copying their pages
        for process in processes:
            process.start()
        samples: list[int] = []
        stop = threading.Event()
        counter = threading.Thread(target=_count_connections, args=(url, stop, samples))
        barrier.wait(timeout=600)
        counter.start()
        started = time.perf_counter()
        collected = [results.get(timeout=1800) for _ in processes]
        wall = time.perf_counter() - started
        for process in processes:
            process.join(60)
        stop.set()
        counter.join()
        study = optuna.load_study(study_name="bench", storage=url)
        states = [t.state for t in study.get_trials(deepcopy=False)]
    claims = [c for _, cs, _, _ in collected for c in cs]
    later_claims = [c for _, cs, _, _ in collected for c in cs[1:]]
    trials = [t for _, _, ts, _ in collected for t in ts]
    errors = [e for _, _, _, es in collected for e in es]
    result = {
        "workers": workers,
        "trials": workers * trials_per_worker,
        "complete": states.count(TrialState.COMPLETE),
        "errors": len(errors),
        "error_examples": errors[:3],
        "peak_connections": max(samples, default=0),
        "connection_bound": 3 * workers,
        "claim": percentiles(claims),
        "claim_after_the_first": percentiles(later_claims),
        "tell": percentiles([tell for _, tell, _ in trials]),
        "claim_plus_tell": percentiles([c + t for c, t, _ in trials]),
        "claim_plus_tell_after_the_first": percentiles([c + t for c, t, f in trials if not f]),
        "wall_s": wall,
    }
    print(f"{workers} concurrent workers: {result}", flush=True)
    return result
