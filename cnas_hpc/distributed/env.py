"""Where this process stands in its job: ranks, world size, job ids, rendezvous address.

This module is the ONLY code of the project that reads rank / world-size / job-id environment
variables (``SLURM_*``, ``SUBMITIT_*``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``, ...). Everything else receives a :class:`DistEnv` (built once per process by
:meth:`DistEnv.from_environment`) or asks :mod:`cnas_hpc.distributed.collectives` about the
initialised process group. Keeping the mapping in one place is what lets the tests fake a SLURM
array task with a handful of monkeypatched variables.

Sources, first match wins:

1. a submitit job (``SUBMITIT_EXECUTOR`` set, or submitit's debug executor): ranks, task and
   node counts, job ids and host names come from :class:`submitit.JobEnvironment`, which maps
   them to ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, ``SLURM_JOB_NUM_NODES``,
   ``SLURM_JOB_ID``, ``SLURM_ARRAY_JOB_ID``, ``SLURM_ARRAY_TASK_ID`` and
   ``SLURM_JOB_NODELIST`` (or their ``SUBMITIT_LOCAL_*`` twins);
2. torchrun (``RANK`` and ``WORLD_SIZE`` set);
3. otherwise a single process.

A plain ``srun python ...`` without submitit is case 3 on every task (a warning is logged when
``SLURM_NTASKS > 1``): the project launches its ranks through submitit or torchrun only.

CPUs: :func:`cpu_budget` sizes torch's thread pools from what the scheduler gave this process
(``SLURM_CPUS_PER_TASK``, else ``SLURM_JOB_CPUS_PER_NODE`` shared by the node's tasks, capped by
the process's CPU affinity), not from the cores the process can see: four one-CPU workers on a
shared node each running a thread per core oversubscribe it many times over.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cnas_hpc.distributed.collectives import forget_control_group, set_up_control_group

log = logging.getLogger(__name__)

#: Rendezvous ports derived from a job id fall in ``[PORT_BASE, PORT_BASE + PORT_SPAN)``:
#: above the well-known and common service ports, below Linux's ephemeral range (32768+).
PORT_BASE = 15000
PORT_SPAN = 16000
#: Port of a process that is not part of any job (never used: nothing to rendezvous with).
DEFAULT_PORT = 29500
#: How long a collective may wait for a peer before the process group raises.
DEFAULT_TIMEOUT = timedelta(minutes=30)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE")
#: Inter-op threads never help the eager, one-graph-at-a-time training of a proxy much; two at
#: most, and only when the allocation has CPUs to spare.
MAX_INTEROP_THREADS = 2


def _stable_hash(text: str) -> int:
    """A non-negative integer hash of ``text`` that every process and Python version agrees on.

    Python's ``hash()`` is salted per process, so it cannot be shared between ranks.
    """
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def derive_port(
    job_id: str, array_job_id: str | None = None, array_task_id: int | None = None
) -> int:
    """A rendezvous port that all ranks of one job compute identically.

    Tasks of one array job get consecutive ports (``hash(array_job_id) + task id``), so two
    tasks of the same array that land on the same node never collide (up to ``PORT_SPAN``
    tasks); other jobs get ``hash(job_id)``. A port already taken by an unrelated program is
    not detected here: set ``MASTER_PORT`` to override.

    Args:
        job_id: The job id (``"1234"`` or ``"1234_5"`` for an array task).
        array_job_id: The array's job id, when the job is an array task.
        array_task_id: The task's index in the array, when the job is an array task.

    Returns:
        A port in ``[PORT_BASE, PORT_BASE + PORT_SPAN)``.
    """
    if array_job_id is not None and array_task_id is not None:
        offset = _stable_hash(array_job_id) + array_task_id
    else:
        offset = _stable_hash(job_id)
    return PORT_BASE + offset % PORT_SPAN


def _int_var(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    """Read an integer environment variable.

    Raises:
        ValueError: The variable is missing (and has no default) or is not an integer.
    """
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise ValueError(f"environment variable {name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _split_array_job_id(job_id: str) -> tuple[str | None, int | None]:
    """``"1234_5"`` -> ``("1234", 5)``; anything else -> ``(None, None)``."""
    head, sep, tail = job_id.partition("_")
    if sep and head.isdigit() and tail.isdigit():
        return head, int(tail)
    return None, None


@dataclass(frozen=True)
class DistEnv:
    """This process's place in its job. Immutable; build it with :meth:`from_environment`.

    Attributes:
        global_rank: Rank of this process among all processes of the job, ``0 .. world_size-1``.
        local_rank: Rank among the processes of this node (selects the GPU).
        world_size: Number of processes that train together (one process group).
        num_nodes: Number of nodes those processes run on.
        job_id: The scheduler's job id (``"1234_5"`` for an array task), ``None`` outside a job.
        array_job_id: The array's job id (``"1234"``) when this job is an array task.
        array_task_id: This task's index in the array when this job is an array task.
        master_addr: Host of global rank 0, where the process group rendezvous.
        master_port: TCP port of the rendezvous on ``master_addr``.
        launcher: Who started the process: ``"local"`` (nobody), ``"torchrun"``, or the
            submitit executor's name (``"slurm"``, ``"local"``, ``"debug"``).

    Raises:
        ValueError: On construction, when ranks, sizes or the port are out of range.
    """

    global_rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    num_nodes: int = 1
    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: int | None = None
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    launcher: str = "local"

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.global_rank < self.world_size:
            raise ValueError(
                f"global_rank {self.global_rank} is not in [0, world_size {self.world_size})"
            )
        if self.local_rank < 0:
            raise ValueError(f"local_rank must be >= 0, got {self.local_rank}")
        if not 1 <= self.num_nodes <= self.world_size:
            raise ValueError(
                f"num_nodes {self.num_nodes} is not in [1, world_size {self.world_size}]"
            )
        if not 0 < self.master_port < 65536:
            raise ValueError(f"master_port must be in 1..65535, got {self.master_port}")
        if (self.array_job_id is None) != (self.array_task_id is None):
            raise ValueError("array_job_id and array_task_id must be both set or both None")

    @property
    def is_main(self) -> bool:
        """Whether this is global rank 0 (the rank that talks to the study and to W&B)."""
        return self.global_rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process trains together (a process group is needed)."""
        return self.world_size > 1

    @property
    def worker_label(self) -> str:
        """A short human-readable name of this worker, for trial attributes and logs.

        ``"slurm:1234_3"`` inside a submitit job (the executor's name and the job id),
        ``"torchrun:<hostname>:<pid>"`` under torchrun without a job id, and
        ``"local:<hostname>:<pid>"`` for a lone process. All ranks of a job share the label
        when it comes from the job id; otherwise only rank 0's label is meaningful.
        """
        if self.job_id is not None:
            return f"{self.launcher}:{self.job_id}"
        return f"{self.launcher}:{socket.gethostname()}:{os.getpid()}"

    @classmethod
    def single_process(cls) -> DistEnv:
        """The environment of a lone process (no job, no peers)."""
        return cls()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """Read this process's environment (see the module docstring for the sources).

        Args:
            environ: Variables to read instead of ``os.environ`` for the torchrun and
                single-process cases (submitit always reads ``os.environ`` itself).

        Returns:
            The environment; identical ``job_id`` / ``master_*`` on every rank of one job.

        Raises:
            ValueError: A rank or size variable is not an integer or is out of range.
        """
        env = os.environ if environ is None else environ
        if _in_submitit_job(env):
            return _from_submitit(env)
        if all(name in env for name in _TORCHRUN_VARS):
            return _from_torchrun(env)
        ntasks = env.get("SLURM_NTASKS", "1")
        if ntasks.isdigit() and int(ntasks) > 1:
            log.warning(
                "SLURM_NTASKS=%s but neither submitit nor torchrun set up the ranks: "
                "every task runs as an independent single process",
                ntasks,
            )
        return cls.single_process()


def _in_submitit_job(environ: Mapping[str, str]) -> bool:
    """The test submitit's own ``JobEnvironment.activated()`` methods make."""
    return bool(environ.get("SUBMITIT_EXECUTOR")) or "SUBMITIT_DEBUG_JOB_ID" in environ


def _from_submitit(environ: Mapping[str, str]) -> DistEnv:
    """Build the environment of a submitit job from :class:`submitit.JobEnvironment`."""
    import submitit  # local import: submitit is only needed inside jobs

    try:
        job = submitit.JobEnvironment()
    except RuntimeError as exc:
        raise ValueError(
            f"SUBMITIT_EXECUTOR={environ.get('SUBMITIT_EXECUTOR')!r} but submitit does not "
            f"recognise the job environment ({exc})"
        ) from None
    try:
        global_rank, local_rank = job.global_rank, job.local_rank
        world_size, num_nodes = job.num_tasks, job.num_nodes
        job_id = str(job.job_id)
        hostnames = list(job.hostnames)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"incomplete submitit job environment: {exc!r}") from None
    array_job_id = job.array_job_id
    raw_task = job.array_task_id
    if array_job_id is not None and raw_task is not None:
        try:
            array_task_id: int | None = int(raw_task)
        except ValueError:
            raise ValueError(f"SLURM_ARRAY_TASK_ID={raw_task!r} is not an integer") from None
    else:
        array_job_id, array_task_id = _split_array_job_id(job_id)
    if "MASTER_PORT" in environ:
        port = _int_var(environ, "MASTER_PORT")
    else:
        port = derive_port(job_id, array_job_id, array_task_id)
    return DistEnv(
        global_rank=global_rank,
        local_rank=local_rank,
        world_size=world_size,
        num_nodes=num_nodes,
        job_id=job_id,
        array_job_id=array_job_id,
        array_task_id=array_task_id,
        master_addr=hostnames[0] if hostnames else socket.gethostname(),
        master_port=port,
        launcher=job.cluster,
    )


def _from_torchrun(environ: Mapping[str, str]) -> DistEnv:
    """Build the environment of a torchrun-launched process from its variables."""
    world_size = _int_var(environ, "WORLD_SIZE")
    local_world = _int_var(environ, "LOCAL_WORLD_SIZE", world_size)
    # torchrun sets GROUP_WORLD_SIZE to the number of nodes (agents); older launchers do not.
    num_nodes = _int_var(environ, "GROUP_WORLD_SIZE", max(1, world_size // max(1, local_world)))
    job_id = environ.get("TORCHELASTIC_RUN_ID") or None
    if job_id == "none":  # torchrun's placeholder when no --rdzv-id is given
        job_id = None
    return DistEnv(
        global_rank=_int_var(environ, "RANK"),
        local_rank=_int_var(environ, "LOCAL_RANK", 0),
        world_size=world_size,
        num_nodes=num_nodes,
        job_id=job_id,
        master_addr=environ.get("MASTER_ADDR") or "127.0.0.1",
        master_port=_int_var(environ, "MASTER_PORT", DEFAULT_PORT),
        launcher="torchrun",
    )


def select_device(env: DistEnv, prefer: str = "auto") -> torch.device:
    """The device this rank trains on.

    ``cuda:<local_rank>`` when CUDA is available and ``prefer`` is ``"auto"`` or ``"cuda"``;
    when the scheduler binds one GPU per task (a single visible device), ``cuda:0``. Otherwise
    the CPU.

    Args:
        env: This process's environment (its ``local_rank`` picks the GPU).
        prefer: ``"auto"``, ``"cuda"`` or ``"cpu"``.

    Raises:
        ValueError: ``prefer`` is unknown, ``"cuda"`` is requested but unavailable, or the
            local rank has no GPU of its own.
    """
    if prefer not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device preference must be auto, cuda or cpu, got {prefer!r}")
    if prefer == "cpu" or (prefer == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device=cuda requested but CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if env.local_rank < count:
        return torch.device("cuda", env.local_rank)
    if count == 1:
        return torch.device("cuda", 0)
    raise ValueError(
        f"local rank {env.local_rank} has no GPU of its own: only {count} visible "
        "(request one GPU per task, or fewer tasks per node)"
    )


def init_distributed(
    env: DistEnv, device: torch.device, timeout: timedelta = DEFAULT_TIMEOUT
) -> bool:
    """Join the job's process group; a no-op for a single process.

    Uses NCCL on CUDA devices and gloo otherwise, with a TCP rendezvous on
    ``env.master_addr:env.master_port``. On CUDA the current device is set to ``device`` first
    (NCCL and ``broadcast_object`` use the current device). Pair with
    :func:`destroy_distributed`, or use :func:`distributed_session`.

    Args:
        env: This process's environment; every rank must pass the same world and address.
        device: The device this rank trains on (see :func:`select_device`).
        timeout: How long a collective may wait for a peer before raising.

    Returns:
        Whether a process group was created (``False`` when ``env.world_size == 1``).

    Raises:
        RuntimeError: A process group is already initialised in this process.
    """
    if not env.is_distributed:
        return False
    join_process_group(env, device, timeout)
    return True


def join_process_group(
    env: DistEnv, device: torch.device, timeout: timedelta = DEFAULT_TIMEOUT
) -> None:
    """Create the process group of ``env`` whatever its size (:func:`init_distributed` skips a
    world of one; a one-GPU check of the NCCL path calls this directly).

    Also creates the gloo control group next to NCCL
    (:func:`~cnas_hpc.distributed.collectives.set_up_control_group`).

    Raises:
        RuntimeError: A process group is already initialised in this process.
    """
    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialised in this process")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    log.info(
        "rank %d/%d joins the %s process group at %s:%d",
        env.global_rank,
        env.world_size,
        backend,
        env.master_addr,
        env.master_port,
    )
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.global_rank,
        world_size=env.world_size,
        timeout=timeout,
    )
    set_up_control_group()


def destroy_distributed() -> None:
    """Leave and destroy the default process group (and the control group), if initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    forget_control_group()


@contextlib.contextmanager
def distributed_session(
    env: DistEnv, device: torch.device, timeout: timedelta = DEFAULT_TIMEOUT
) -> Iterator[None]:
    """Context manager: :func:`init_distributed` on entry, destroy the group on exit.

    A no-op for a single process. The group is destroyed even when the body raises, but only
    if this session created it. On a normal exit every rank first meets the others at a
    barrier: no rank tears its gloo/NCCL connections down while a peer still uses them (a
    peer whose connection vanished mid-operation aborts the process). After a raise there is
    no barrier, since the peers may never come.
    """
    created = init_distributed(env, device, timeout)
    try:
        yield
        if created:
            dist.barrier()
    finally:
        if created:
            destroy_distributed()


@dataclass(frozen=True)
class CpuBudget:
    """How many CPUs this process may use, and how torch's thread pools are sized from them.

    Attributes:
        cpus: CPUs allotted to this process (one rank).
        source: Where ``cpus`` came from, for the log (``"SLURM_CPUS_PER_TASK=1"``, ...).
        intra_op: Threads of torch's intra-op pool (``torch.set_num_threads``).
        inter_op: Threads of torch's inter-op pool (``torch.set_num_interop_threads``).
        loader_workers: ``DataLoader`` worker processes a rank may start: one CPU stays with the
            training process (the search keeps its images in memory and starts none).
    """

    cpus: int
    source: str
    intra_op: int
    inter_op: int
    loader_workers: int

    def describe(self) -> str:
        """One line for the worker log, e.g. ``1 intra-op / 1 inter-op thread(s) (...)``."""
        return (
            f"{self.intra_op} intra-op / {self.inter_op} inter-op thread(s) "
            f"({self.cpus} CPU(s) from {self.source})"
        )


def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask; the CPU count where there is none).

    The one place outside the allocation's variables that counts cores: the step plans'
    thread measurement and the autotune cache key ask here (see :func:`allocated_cpus` for
    what the scheduler gave the process).
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _first_node_cpus(raw: str) -> int | None:
    """CPUs of the first node in SLURM's compressed list (``"8(x2),4"`` -> 8)."""
    head = raw.split(",")[0].split("(")[0].strip()
    return int(head) if head.isdigit() else None


def allocated_cpus(env: DistEnv, environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """CPUs the scheduler gave this process, and where that number came from.

    In order: ``SLURM_CPUS_PER_TASK`` (submitit's ``cpus_per_task``), else
    ``SLURM_JOB_CPUS_PER_NODE`` divided by the ranks on this node, else torchrun's
    ``LOCAL_WORLD_SIZE`` ranks sharing the CPUs of the affinity mask, else the affinity mask. The
    affinity mask always caps the result (a task bound to fewer CPUs than it asked for).

    Args:
        env: This process's place in its job (how many ranks share the node).
        environ: Variables to read instead of ``os.environ``.

    Returns:
        ``(cpus >= 1, source)``.
    """
    variables = os.environ if environ is None else environ
    affinity = affinity_cpus()
    ranks_here = max(1, -(-env.world_size // env.num_nodes))
    per_task = variables.get("SLURM_CPUS_PER_TASK", "").strip()
    per_node = variables.get("SLURM_JOB_CPUS_PER_NODE", "").strip()
    if per_task.isdigit() and int(per_task) > 0:
        cpus, source = int(per_task), f"SLURM_CPUS_PER_TASK={per_task}"
    elif per_node and _first_node_cpus(per_node):
        node_cpus = _first_node_cpus(per_node) or 1
        cpus = max(1, node_cpus // ranks_here)
        source = f"SLURM_JOB_CPUS_PER_NODE={per_node} over {ranks_here} rank(s)"
    elif env.launcher == "torchrun" and ranks_here > 1:
        cpus, source = max(1, affinity // ranks_here), f"affinity over {ranks_here} ranks"
    else:
        return affinity, "CPU affinity"
    if affinity < cpus:
        return affinity, f"{source}, capped by CPU affinity"
    return cpus, source


def cpu_budget(
    env: DistEnv, override: int | None = None, environ: Mapping[str, str] | None = None
) -> CpuBudget:
    """Size torch's thread pools (and loader workers) for this process.

    Args:
        env: This process's place in its job.
        override: ``train.num_threads``: intra-op threads to use whatever the allocation says.
        environ: Variables to read instead of ``os.environ``.
    """
    cpus, source = allocated_cpus(env, environ)
    intra = cpus
    if override:
        intra, source = override, f"train.num_threads={override}; allocation {cpus} ({source})"
        cpus = override
    inter = 1 if intra < 4 else MAX_INTEROP_THREADS
    return CpuBudget(cpus, source, intra, inter, loader_workers=max(0, cpus - 1))


def size_cpu_threads(env: DistEnv, override: int | None = None) -> CpuBudget:
    """The one CPU-thread policy of every app: size torch's pools from the allocation, apply it.

    Every app's start-up (search worker, fidelity task, evaluation task; the sampler comparison
    runs search workers) calls this once, before it builds a model: threads come from what the
    scheduler gave the process (:func:`cpu_budget`), not from the cores it can see, so tasks
    sharing a node do not oversubscribe it.

    Args:
        env: This process's place in its job.
        override: ``train.num_threads`` where the app has one (explicit threads win).

    Returns:
        The budget applied (its ``loader_workers`` bound any ``DataLoader`` the app starts).
    """
    budget = cpu_budget(env, override)
    apply_cpu_budget(budget)
    return budget


def apply_cpu_budget(budget: CpuBudget) -> None:
    """Set torch's intra-op and inter-op pools to ``budget`` (process-wide).

    torch accepts the inter-op size only before its pool first runs; later (a second worker in
    the same process, e.g. in tests) the pool keeps its size, which is logged, not raised.
    """
    torch.set_num_threads(budget.intra_op)
    if torch.get_num_interop_threads() != budget.inter_op:
        try:
            torch.set_num_interop_threads(budget.inter_op)
        except RuntimeError:
            log.debug("inter-op pool already started: keeps %d", torch.get_num_interop_threads())
    log.info("torch uses %s", budget.describe())
