"""cnas-hpc's side of the busy-fraction benchmark: array tasks that claim, 'train' and tell.

Each array task is one of our workers with a sleep in place of training: the real claim, the
real heartbeat, the real tell, launched by our launcher plugin as ONE SLURM array (the
``slurm_cpu`` preset). Trial ``n`` sleeps :func:`benchmarks.busy_workload.duration` ``(n)`` and
records when it started and ended (``bench:start`` / ``bench:end``, UNIX time).

    python benchmarks/busy_app.py -m hydra/launcher=slurm_cpu 'worker=range(4)' \
        storage=postgresql+psycopg2://... n_trials=64
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra_plugins.cnas_hpc_launcher.cluster_launcher  # noqa: F401 - our launcher
from benchmarks.busy_workload import duration
from cnas_hpc.common.heap import freeze_startup_heap
from cnas_hpc.config import settings_from_config
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.search.owner import TrialOwner
from cnas_hpc.space.encoding import encoding_from_config
from cnas_hpc.study.heartbeat import Heartbeat


@hydra.main(version_base="1.3", config_path="busy_conf", config_name="busy")
def main(cfg: DictConfig) -> int:
    """One worker: claim, sleep the trial's duration with a heartbeat, tell, until done."""
    settings = settings_from_config(
        {
            "study": {"name": "busy", "storage": str(cfg.storage), "heartbeat_interval": 10},
            "search": {"n_trials": int(cfg.n_trials), "poll_seconds": 0.5},
            "output_dir": str(cfg.output_dir),
            "worker": int(cfg.worker),
        }
    )
    owner = TrialOwner(settings, DistEnv.from_environment(), encoding_from_config(settings.space))
    freeze_startup_heap()  # what run_worker does once its start-up is done
    done = 0
    while True:
        assignment, _ = owner.claim()
        if assignment.kind == "done":
            return done
        if assignment.kind == "wait":
            time.sleep(settings.search.poll_seconds)
            continue
        assert owner.trial_id is not None
        start = time.time()
        with Heartbeat(owner.storage, owner.trial_id, 10, release=owner.release):
            time.sleep(duration(assignment.number, float(cfg.median_s), float(cfg.sigma)))
        end = time.time()
        owner.finish(TrialState.COMPLETE, end - start, {"bench:start": start, "bench:end": end})
        done += 1


if __name__ == "__main__":
    main()
