"""DistEnv: the one place that reads rank / world / job variables, with the variables faked as
submitit (SLURM and local executors), torchrun, and a bare process set them."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from cnas_hpc.distributed.env import (
    PORT_BASE,
    PORT_SPAN,
    DistEnv,
    allocated_cpus,
    cpu_budget,
    derive_port,
    distributed_session,
    init_distributed,
    select_device,
    size_cpu_threads,
)

ROOT = Path(__file__).resolve().parents[1]

_EXACT = {
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "_TEST_CLUSTER_",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test as a bare process, even when the suite itself runs inside SLURM."""
    for name in list(os.environ):
        if name in _EXACT or name.startswith(("SLURM_", "SUBMITIT_")):
            monkeypatch.delenv(name)


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str | int) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))


def slurm_array_task(monkeypatch: pytest.MonkeyPatch, task: int, procid: int, **extra: str) -> None:
    """The variables SLURM and submitit set in one task of an array job with 2 tasks per
    array element on 2 nodes (what submitit's JobEnvironment reads, see its SlurmJobEnvironment)."""
    set_env(
        monkeypatch,
        SUBMITIT_EXECUTOR="slurm",
        SUBMITIT_FOLDER="/tmp/submitit",
        SLURM_JOB_ID=1300 + task,  # every array element has its own raw job id
        SLURM_ARRAY_JOB_ID=1234,
        SLURM_ARRAY_TASK_ID=task,
        SLURM_PROCID=procid,
        SLURM_LOCALID=0,
        SLURM_NODEID=procid,
        SLURM_NTASKS=2,
        SLURM_JOB_NUM_NODES=2,
        SLURM_JOB_NODELIST="gpu[07-08]",
        **extra,
    )


def test_bare_process_is_a_single_rank() -> None:
    env = DistEnv.from_environment()
    assert env == DistEnv()
    assert (env.global_rank, env.local_rank, env.world_size, env.num_nodes) == (0, 0, 1, 1)
    assert env.job_id is None and env.array_job_id is None and env.array_task_id is None
    assert env.is_main and not env.is_distributed
    assert env.worker_label == f"local:{socket.gethostname()}:{os.getpid()}"


def test_submitit_slurm_array_task_with_two_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    slurm_array_task(monkeypatch, task=3, procid=1)
    env = DistEnv.from_environment()
    assert env.global_rank == 1 and env.local_rank == 0
    assert env.world_size == 2 and env.num_nodes == 2
    assert env.job_id == "1234_3"
    assert env.array_job_id == "1234" and env.array_task_id == 3
    assert env.master_addr == "gpu07"  # the first host of the job, whatever this rank's host
    assert env.master_port == derive_port("1234_3", "1234", 3)
    assert PORT_BASE <= env.master_port < PORT_BASE + PORT_SPAN
    assert env.launcher == "slurm"
    assert env.worker_label == "slurm:1234_3"
    assert env.is_distributed and not env.is_main

    # Rank 0 of the same array element agrees on everything a rendezvous needs.
    slurm_array_task(monkeypatch, task=3, procid=0)
    main = DistEnv.from_environment()
    assert main.is_main
    assert (main.master_addr, main.master_port, main.job_id) == (
        env.master_addr,
        env.master_port,
        env.job_id,
    )
    assert main.worker_label == env.worker_label


def test_array_tasks_on_the_same_node_get_different_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports = []
    for task in range(8):
        slurm_array_task(monkeypatch, task=task, procid=0)
        ports.append(DistEnv.from_environment().master_port)
    assert len(set(ports)) == 8
    assert all(PORT_BASE <= p < PORT_BASE + PORT_SPAN for p in ports)


def test_master_port_variable_overrides_the_derived_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slurm_array_task(monkeypatch, task=0, procid=0, MASTER_PORT="23456")
    assert DistEnv.from_environment().master_port == 23456


def test_array_ids_parsed_from_the_job_id_when_slurm_array_vars_are_absent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="777_5", SLURM_PROCID=0)
    env = DistEnv.from_environment()
    assert (env.job_id, env.array_job_id, env.array_task_id) == ("777_5", "777", 5)
    assert env.world_size == 1 and env.worker_label == "slurm:777_5"


def test_plain_slurm_job_without_array(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        SUBMITIT_EXECUTOR="slurm",
        SLURM_JOB_ID=9001,
        SLURM_PROCID=0,
        SLURM_NTASKS=1,
        SLURM_JOB_NODELIST="node1",
    )
    env = DistEnv.from_environment()
    assert env.job_id == "9001" and env.array_job_id is None and env.array_task_id is None
    assert env.master_addr == "node1" and env.master_port == derive_port("9001")


def test_submitit_local_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        SUBMITIT_EXECUTOR="local",
        SUBMITIT_LOCAL_JOB_ID=4242,
        SUBMITIT_LOCAL_NTASKS=2,
        SUBMITIT_LOCAL_JOB_NUM_NODES=1,
        SUBMITIT_LOCAL_GLOBALID=1,
        SUBMITIT_LOCAL_LOCALID=1,
    )
    env = DistEnv.from_environment()
    assert (env.global_rank, env.local_rank, env.world_size, env.num_nodes) == (1, 1, 2, 1)
    assert env.master_addr == socket.gethostname()
    assert env.worker_label == "local:4242"


def test_submitit_wins_over_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    slurm_array_task(monkeypatch, task=1, procid=1, RANK="0", WORLD_SIZE="8")
    env = DistEnv.from_environment()
    assert (env.global_rank, env.world_size) == (1, 2)


def test_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        RANK=3,
        WORLD_SIZE=4,
        LOCAL_RANK=1,
        LOCAL_WORLD_SIZE=2,
        GROUP_WORLD_SIZE=2,
        MASTER_ADDR="10.0.0.5",
        MASTER_PORT=29400,
    )
    env = DistEnv.from_environment()
    assert (env.global_rank, env.local_rank, env.world_size, env.num_nodes) == (3, 1, 4, 2)
    assert (env.master_addr, env.master_port) == ("10.0.0.5", 29400)
    assert env.job_id is None and env.array_task_id is None
    assert env.launcher == "torchrun"
    assert env.worker_label == f"torchrun:{socket.gethostname()}:{os.getpid()}"


def test_torchrun_minimal_variables_use_defaults() -> None:
    env = DistEnv.from_environment({"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x9"})
    assert (env.global_rank, env.local_rank, env.world_size, env.num_nodes) == (1, 0, 2, 1)
    assert (env.master_addr, env.master_port) == ("127.0.0.1", 29500)
    assert env.worker_label == "torchrun:x9"


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK='abc' is not an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"global_rank 2 is not in \[0, world_size 2\)"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "world_size must be >= 1"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "70000"}, "master_port"),
    ],
)
def test_bad_torchrun_variables_are_rejected(values: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DistEnv.from_environment(values)


def test_plain_srun_without_launcher_is_single_process_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_env(monkeypatch, SLURM_JOB_ID=55, SLURM_PROCID=1, SLURM_NTASKS=2)
    with caplog.at_level(logging.WARNING, logger="cnas_hpc.distributed.env"):
        env = DistEnv.from_environment()
    assert env == DistEnv()
    assert "SLURM_NTASKS=2" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"world_size": 0}, "world_size"),
        ({"global_rank": 2, "world_size": 2}, "global_rank"),
        ({"global_rank": -1}, "global_rank"),
        ({"local_rank": -1}, "local_rank"),
        ({"num_nodes": 3, "world_size": 2}, "num_nodes"),
        ({"master_port": 0}, "master_port"),
        ({"array_job_id": "12"}, "array_job_id and array_task_id"),
    ],
)
def test_dist_env_validates_its_fields(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DistEnv(**kwargs)  # type: ignore[arg-type]


def test_derive_port_is_stable_across_processes() -> None:
    # Python's hash() is salted per process; the derived port must not be.
    code = (
        "from cnas_hpc.distributed.env import derive_port; print(derive_port('4321_7', '4321', 7))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        cwd=ROOT,
    ).stdout.strip()
    assert out == str(derive_port("4321_7", "4321", 7))
    assert derive_port("4321_7", "4321", 8) == derive_port("4321_7", "4321", 7) + 1 or (
        derive_port("4321_7", "4321", 8) == PORT_BASE
    )
    assert derive_port("a") != derive_port("b")


# ------------------------------------------------------------------------------------------
# Devices and the process group
# ------------------------------------------------------------------------------------------


def test_select_device_cpu_and_auto_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(DistEnv(), "cpu") == torch.device("cpu")
    assert select_device(DistEnv(), "auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device(DistEnv(), "cuda")
    with pytest.raises(ValueError, match="auto, cuda or cpu"):
        select_device(DistEnv(), "gpu")


def test_select_device_maps_local_rank_to_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    two_ranks = DistEnv(global_rank=1, local_rank=1, world_size=2)
    assert select_device(two_ranks, "auto") == torch.device("cuda", 1)
    assert select_device(two_ranks, "cuda") == torch.device("cuda", 1)
    assert select_device(two_ranks, "cpu") == torch.device("cpu")
    too_many = DistEnv(global_rank=3, local_rank=3, world_size=4)
    with pytest.raises(ValueError, match="local rank 3 has no GPU"):
        select_device(too_many, "auto")
    # One visible GPU per task (SLURM --gpus-per-task): every local rank uses cuda:0.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device(too_many, "auto") == torch.device("cuda", 0)


def test_single_process_session_is_a_no_op() -> None:
    assert init_distributed(DistEnv(), torch.device("cpu")) is False
    with distributed_session(DistEnv(), torch.device("cpu")):
        assert not dist.is_initialized()
    assert not dist.is_initialized()


# ------------------------------------------------------------------------------------------
# The contract "ranks come from ONE place"
# ------------------------------------------------------------------------------------------

_RANK_VARS = re.compile(
    r"""["'](SLURM_\w+|SUBMITIT_\w+|RANK|WORLD_SIZE|LOCAL_RANK|LOCAL_WORLD_SIZE|"""
    r"""GROUP_WORLD_SIZE|MASTER_ADDR|MASTER_PORT)["']|sched_getaffinity|cpu_count\("""
)


def test_only_dist_env_names_rank_variables() -> None:
    allowed = ROOT / "cnas_hpc" / "distributed" / "env.py"
    offenders = []
    for folder in ("cnas_hpc", "launch", "hydra_plugins"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == allowed:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _RANK_VARS.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "read ranks through DistEnv instead:\n" + "\n".join(offenders)
    assert _RANK_VARS.search(allowed.read_text(encoding="utf-8"))  # the check can fire


# ------------------------------------------------------------------------------------------
# CPU budget: threads sized from the allocation, not from the cores the process sees
# ------------------------------------------------------------------------------------------

AFFINITY = len(os.sched_getaffinity(0))


def test_slurm_cpus_per_task_sizes_the_thread_pools() -> None:
    budget = cpu_budget(DistEnv(), environ={"SLURM_CPUS_PER_TASK": "1"})
    assert (budget.cpus, budget.intra_op, budget.inter_op, budget.loader_workers) == (1, 1, 1, 0)
    assert budget.source == "SLURM_CPUS_PER_TASK=1"
    assert "1 intra-op / 1 inter-op" in budget.describe()


def test_train_num_threads_overrides_the_allocation() -> None:
    budget = cpu_budget(DistEnv(), 3, environ={"SLURM_CPUS_PER_TASK": "1"})
    assert (budget.intra_op, budget.cpus) == (3, 3)
    assert budget.source.startswith("train.num_threads=3")


def test_the_one_thread_policy_sets_torchs_pools_from_the_allocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What every app's start-up calls (search, fidelity, evaluation): the process-wide pool
    # follows the allocation, and train.num_threads wins over it.
    before = torch.get_num_threads()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    try:
        assert size_cpu_threads(DistEnv()).intra_op == 1
        assert torch.get_num_threads() == 1
        assert size_cpu_threads(DistEnv(), 2).intra_op == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_job_cpus_per_node_is_shared_by_the_ranks_of_a_node() -> None:
    env = DistEnv(global_rank=1, local_rank=1, world_size=4, num_nodes=2)
    cpus, source = allocated_cpus(env, {"SLURM_JOB_CPUS_PER_NODE": "2(x2)"})
    assert cpus == min(1, AFFINITY) and "over 2 rank(s)" in source


def test_the_affinity_mask_caps_what_slurm_promises() -> None:
    cpus, source = allocated_cpus(DistEnv(), {"SLURM_CPUS_PER_TASK": str(AFFINITY + 7)})
    assert cpus == AFFINITY and source.endswith("capped by CPU affinity")
    assert allocated_cpus(DistEnv(), {}) == (AFFINITY, "CPU affinity")


def test_torchrun_ranks_share_the_affinity_mask() -> None:
    env = DistEnv(world_size=2, launcher="torchrun")
    assert allocated_cpus(env, {})[0] == max(1, AFFINITY // 2)


def test_many_cpus_get_two_inter_op_threads() -> None:
    assert cpu_budget(DistEnv(), 8).inter_op == 2
    assert cpu_budget(DistEnv(), 8).loader_workers == 7


def test_a_worker_process_applies_its_budget() -> None:
    """Both pools take their size in a fresh process (inter-op only before its first use)."""
    code = (
        "import torch\n"
        "from cnas_hpc.distributed.env import DistEnv, apply_cpu_budget, cpu_budget\n"
        "apply_cpu_budget(cpu_budget(DistEnv.from_environment()))\n"
        "print(torch.get_num_threads(), torch.get_num_interop_threads())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "SLURM_CPUS_PER_TASK": "1"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.split() == ["1", "1"], out.stderr[-2000:]
