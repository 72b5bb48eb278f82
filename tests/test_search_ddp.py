"""A worker of two gloo ranks on one machine: rank 0 owns the study, both ranks train."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import torch.multiprocessing as mp
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from cnas_hpc.config import Settings
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.search.worker import run_worker
from cnas_hpc.study.lifecycle import bootstrap_study, load_study
from tests.helpers import tiny_settings

# Rank 1 gets this storage: if it ever tried to open the study, it would fail at once.
UNREACHABLE = "postgresql+psycopg2://nobody@127.0.0.1:1/nothing"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank(rank: int, settings: Settings, port: int, results: dict[int, int]) -> None:
    if rank != 0:
        study = dataclasses.replace(settings.study, storage=UNREACHABLE)
        settings = dataclasses.replace(settings, study=study)
    env = DistEnv(
        global_rank=rank,
        local_rank=rank,
        world_size=2,
        master_addr="127.0.0.1",
        master_port=port,
        job_id="4242_0",
        array_job_id="4242",
        array_task_id=0,
    )
    results[rank] = run_worker(settings, env).completed


def test_two_ranks_train_and_only_rank_zero_talks_to_the_study(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, "search.n_trials=2", "train.num_threads=1")
    bootstrap_study(settings)
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(settings, _free_port(), results), nprocs=2, join=True)
    # Both ranks trained both trials; rank 1 never opened the (unreachable) study to do so.
    assert results[0] == results[1] == 2
    study = load_study(settings, worker=0).study
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(t.user_attrs[attrs.WORLD_SIZE] == 2 for t in trials)
    assert all(t.user_attrs[attrs.WORKER] == "local:4242_0" for t in trials)
