"""What every command-line entry point shares: one-line errors and the validated settings.

The ``cli`` package is the top floor (see ARCHITECTURE.md): it composes the apps, the trackers
and the study analysis, turns a Hydra ``DictConfig`` into typed settings, and turns the user's
errors into one ``error:`` line with exit status 2.

Secrets: the database password comes from ``PGPASSWORD``, ``~/.pgpass`` or an
``${oc.env:VAR}`` interpolation inside the URL; never from text Hydra saves. A literal password
is refused before it reaches a file (see
:func:`cnas_hpc.common.storage_url.check_storage_secret`); the URL is only ever printed masked.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from cnas_hpc.common.errors import ConfigError, StudyError, WorkerError
from cnas_hpc.common.storage_url import check_storage_secret
from cnas_hpc.config import Settings, settings_from_config
from cnas_hpc.config.evaluate import EvalSettings
from cnas_hpc.config.train import check_global_batch
from cnas_hpc.distributed.cluster import Cluster
from cnas_hpc.space.encoding import encoding_from_config
from cnas_hpc.study.app_arrays import live_arrays
from cnas_hpc.train.memory import training_bytes_floor

#: Where every command's Hydra configs live: inside the package, so an installed
#: ``cnas-hpc`` runs from any directory (a clone's ``launch/*.py`` read the same files).
CONFIG_PATH = "pkg://cnas_hpc.configs"

#: Errors that are the user's input, reported as one line (no traceback).
USER_ERRORS = (ConfigError, StudyError, WorkerError, FileNotFoundError, ValueError)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` (first line only) to stderr and exit with ``code``."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    print(f"error: {first}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The composed config without its ``hydra`` node, resolved to plain values.

    Raises:
        ConfigError: a missing mandatory value or an interpolation that does not resolve
            (one line naming the key).
    """
    # The hydra node holds values only set inside a job (e.g. hydra_help): leave it out.
    keys = [str(key) for key in cfg if key != "hydra"]
    try:
        container = OmegaConf.to_container(
            OmegaConf.masked_copy(cfg, keys), resolve=True, throw_on_missing=True
        )
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{exc.full_key} is required: set {exc.full_key}=...") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{exc.full_key}: {exc.msg}") from None
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def check_space(settings: Settings) -> None:
    """Check the ``space`` section against the search space itself (ops, encodings).

    Raises:
        ConfigError: ``space: <why>`` (one line).
    """
    try:
        encoding_from_config(settings.space)
    except ValueError as exc:
        raise ConfigError(f"space: {exc}") from None


def settings_of(cfg: DictConfig) -> Settings:
    """Resolve and validate the composed search config (without the ``hydra`` node).

    Every section is checked by its schema (:mod:`cnas_hpc.config`), and the search space by
    the space itself (:func:`~cnas_hpc.space.encoding.encoding_from_config`).

    Raises:
        ConfigError: one line naming the first invalid key.
    """
    settings = settings_from_config(resolved(cfg))
    check_space(settings)
    return settings


def written_storage(cfg: DictConfig) -> str | None:
    """``study.storage`` as written in the composed config, interpolations unresolved."""
    study = cfg.get("study")
    if not isinstance(study, DictConfig):
        return None
    container = OmegaConf.to_container(study, resolve=False)
    raw = container.get("storage") if isinstance(container, dict) else None
    return raw if isinstance(raw, str) else None


def check_config_secrets(cfg: DictConfig, settings: Settings | EvalSettings | None = None) -> None:
    """Refuse a database password that Hydra would save (see the module docstring).

    Args:
        cfg: The composed config, hydra node included, UNRESOLVED (as Hydra saves it).
        settings: The validated settings, when known: then the resolved URL's password is also
            looked for in everything Hydra saves.

    Raises:
        StudyError: ``study.storage contains a password: ...`` (one line, no secret).
    """
    written = written_storage(cfg)
    if written is None:
        return
    if settings is None:
        check_storage_secret(written)
    else:
        # to_yaml does not resolve: the same text Hydra writes to config/hydra/multirun.yaml.
        check_storage_secret(written, settings.study.storage, saved=OmegaConf.to_yaml(cfg))


def check_output_dir(output_dir: str) -> None:
    """Refuse an ``output_dir`` that cannot be made or written (the study, checkpoints and logs
    go there), without creating anything: a probe folder is made and removed in its nearest
    existing parent.

    Raises:
        ConfigError: one line naming ``output_dir`` and why it cannot be used.
    """
    path = Path(output_dir).absolute()
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"output_dir={output_dir}: {parent} is a file, not a folder")
    try:
        Path(tempfile.mkdtemp(prefix=".cnas-probe-", dir=parent)).rmdir()
    except OSError as exc:
        raise ConfigError(
            f"output_dir={output_dir} cannot be created: {exc.strerror or exc}"
        ) from None


#: ``sbatch --mem`` units (a bare number is MiB).
_MEM_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _mem_bytes(text: object) -> int | None:
    """``sbatch --mem`` text (``1200M``, ``32G``, ``500``) in bytes; None when unreadable."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(text), re.IGNORECASE)
    if found is None:
        return None
    return int(float(found.group(1)) * _MEM_UNITS[(found.group(2) or "M").upper()])


def _launcher_memory(launcher: DictConfig, cluster: Cluster | None) -> tuple[int, str] | None:
    """Bytes one task of the array may use, and where that limit comes from."""
    extra = launcher.get("additional_parameters") or {}
    tasks = int(launcher.get("tasks_per_node") or 1)
    if extra.get("mem") is not None and (found := _mem_bytes(extra["mem"])) is not None:
        return found // tasks, f"hydra.launcher.additional_parameters.mem={extra['mem']}"
    if launcher.get("mem_gb") is not None:
        return int(float(launcher["mem_gb"]) * 2**30) // tasks, (
            f"hydra.launcher.mem_gb={launcher['mem_gb']}"
        )
    partition = launcher.get("partition") or (cluster.default if cluster else None)
    if cluster is not None and partition in cluster.partitions:
        node = cluster.partitions[partition].memory_mb * 2**20
        return (node // tasks, f"the nodes of partition {partition}") if node else None
    return None


def _local_memory(device: str) -> tuple[int, str]:
    """Bytes a local run may use: the GPU's when it trains on one, else the host's."""
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, "the GPU"
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this host"


def check_proxy_memory(
    settings: Settings, launcher: DictConfig | None, cluster: Cluster | None = None
) -> None:
    """Refuse a proxy shape that cannot train in the memory one worker gets.

    Compares :func:`~cnas_hpc.train.memory.training_bytes_floor` (a lower bound: weights,
    gradients and the stem's activations, so nothing that could fit is refused) with the
    allocation of one task (the launcher's ``mem``/``mem_gb``, else a node of its partition)
    or, for a local run, the host's memory (the GPU's when it trains on one). GPU arrays are
    not checked (the GPU's memory is not known before a job runs).

    Raises:
        ConfigError: one line with the bound, the limit and where the limit comes from.
    """
    world = 1
    if launcher is not None:
        if launcher.get("gpus_per_node"):
            return
        world = int(launcher.get("tasks_per_node") or 1) * int(launcher.get("nodes") or 1)
        found = _launcher_memory(launcher, cluster)
    else:
        found = _local_memory(settings.device)
    if found is None:
        return
    limit, source = found
    needed = training_bytes_floor(
        settings.model,
        n_nodes=settings.space.n_nodes,
        batch_per_rank=max(1, settings.train.batch_size // world),
        image_size=settings.data.image_size,
    )
    if needed > limit:
        raise ConfigError(
            f"the proxy (model.channels={settings.model.channels}, model.cells="
            f"{settings.model.cells}, train.batch_size={settings.train.batch_size}) needs at "
            f"least {needed / 2**30:,.1f} GiB per worker, more than the {limit / 2**30:,.1f} GiB "
            f"of {source}: make the proxy or the batch smaller"
        )


def check_slurm_request(launcher: DictConfig, n_jobs: int, cluster: Cluster | None) -> None:
    """Refuse an array SLURM cannot grant, asking SLURM first (see
    :mod:`cnas_hpc.distributed.cluster`); nothing is checked when SLURM does not answer.

    Raises:
        ConfigError: an unknown partition, GPUs where the partition has none (or fewer per
            node), more array tasks than ``MaxArraySize``.
    """
    if cluster is None:
        return
    partition = launcher.get("partition")
    if partition is not None and str(partition) not in cluster.partitions:
        raise ConfigError(
            f"hydra.launcher.partition={partition}: SLURM has no such partition "
            f"(partitions: {', '.join(cluster.partitions)})"
        )
    name = str(partition) if partition is not None else cluster.default
    gpus = launcher.get("gpus_per_node")
    if gpus and name in cluster.partitions:
        wanted = int(str(gpus).split(":")[-1])
        offered = cluster.partitions[name].gpus_per_node
        if wanted > offered:
            has = f"at most {offered} GPU(s) per node" if offered else "no GPU (no gpu Gres)"
            raise ConfigError(
                f"hydra.launcher.gpus_per_node={gpus}: partition {name} has {has}; "
                "set hydra.launcher.gpus_per_node=null (or use hydra/launcher=slurm_cpu)"
            )
    if cluster.max_array_size is not None and n_jobs > cluster.max_array_size:
        raise ConfigError(
            f"the sweep asks for {n_jobs} workers, more than SLURM's MaxArraySize="
            f"{cluster.max_array_size} (array indices 0-{cluster.max_array_size - 1}): "
            "sweep fewer workers"
        )


#: submitit counts every signal as a timeout below this job time limit (minutes).
MIN_TIMEOUT_MIN = 11


def check_launcher(launcher: DictConfig | None, batch_size: int) -> None:
    """Refuse launcher requests that cannot work, before anything is queued.

    Args:
        launcher: the ``hydra.launcher`` node of a multirun (None: a local run, nothing to check).
        batch_size: the GLOBAL batch the app trains with.

    Raises:
        ConfigError: more GPUs per node than tasks per node (ranks are one per GPU), a global
            batch that the world size does not divide, or a time limit under
            :data:`MIN_TIMEOUT_MIN` minutes.
    """
    if launcher is None:
        return
    tasks = int(launcher.get("tasks_per_node") or 1)
    nodes = int(launcher.get("nodes") or 1)
    gpus = launcher.get("gpus_per_node")
    if gpus is not None and not isinstance(gpus, int):
        gpus = int(str(gpus).split(":")[-1])
    if gpus is not None and gpus > tasks:
        raise ConfigError(
            f"hydra.launcher.gpus_per_node={gpus} exceeds tasks_per_node={tasks}: "
            "one rank drives one GPU, set tasks_per_node to the number of GPUs"
        )
    timeout = launcher.get("timeout_min")
    if timeout is not None and (not isinstance(timeout, int) or timeout < MIN_TIMEOUT_MIN):
        raise ConfigError(
            f"hydra.launcher.timeout_min={timeout} is under {MIN_TIMEOUT_MIN}: submitit then "
            "takes every signal for a timeout (its cut-off is min(0.8 L, L - 10 min)) and a "
            f"preempted worker is not requeued as such; ask for at least {MIN_TIMEOUT_MIN} minutes"
        )
    check_global_batch(batch_size, tasks * nodes, hint=" (tasks_per_node x nodes)")


def is_slurm_launcher(launcher: DictConfig | None) -> bool:
    """Whether a multirun's launcher submits a SLURM array (not local processes)."""
    return launcher is not None and "Slurm" in str(launcher.get("_target_", ""))


def refuse_live_arrays(arrays: Iterable[str], what: str) -> None:
    """Refuse to submit a second array while one of ``arrays`` still works ``what``.

    Raises:
        StudyError: one line naming the array, how to follow it and how to stop it.
    """
    for array, held in live_arrays(arrays):
        raise StudyError(
            f"{what} is still being worked by SLURM array {array} ({len(held)} task(s) pending "
            f"or running): no second array is submitted. Wait for it (`squeue -j {array}`), or "
            f"stop it with `scancel {array}` and run the command again"
        )
