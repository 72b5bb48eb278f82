"""The launcher presets ``submitit_slurm`` and ``submitit_local`` as structured configs.

A module whose name starts with ``_``: Hydra's plugin scan skips it (it re-executes every other
module under ``hydra_plugins``, outside ``sys.modules`` the first time, which dataclasses with
postponed annotations cannot survive). :func:`register_presets` stores both in Hydra's
ConfigStore under the plugin's own names, replacing the plugin's entries; it is called by
:class:`~hydra_plugins.cnas_hpc_launcher.cluster_launcher.LauncherPresets` once every plugin
module was scanned, so the plugin's registration can never come after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

_MODULE = "hydra_plugins.cnas_hpc_launcher.cluster_launcher"


@dataclass
class ClusterSlurmConf(SlurmQueueConf):
    """``hydra/launcher=submitit_slurm``: GPU-cluster defaults over the plugin's SLURM schema.

    One worker = one array task = ``tasks_per_node`` DDP ranks, one per GPU (``gpus_per_node``
    must not exceed ``tasks_per_node``). Site values (partition, account, qos):
    ``configs/local/default.yaml`` or the ``CNAS_SLURM_*`` variables.
    """

    _target_: str = f"{_MODULE}.ClusterSlurmLauncher"
    timeout_min: int = 1440
    gpus_per_node: int | None = 1
    tasks_per_node: int = 1  # = GPUs per worker (DDP world size per worker)
    cpus_per_task: int | None = 8
    mem_gb: int | None = 32
    partition: str | None = "${oc.env:CNAS_SLURM_PARTITION,null}"
    account: str | None = "${oc.env:CNAS_SLURM_ACCOUNT,null}"
    qos: str | None = "${oc.env:CNAS_SLURM_QOS,null}"
    signal_delay_s: int = 180  # USR2 this long before the time limit: checkpoint, then requeue
    max_num_timeout: int = 3  # requeues after timeout/preemption
    array_parallelism: int = 64  # at most this many workers run at once
    stderr_to_stdout: bool = True


@dataclass
class ClusterLocalConf(LocalQueueConf):
    """``hydra/launcher=submitit_local``: workers as local subprocesses through submitit (no
    SLURM), to try the multirun path on a workstation."""

    _target_: str = f"{_MODULE}.ClusterLocalLauncher"
    timeout_min: int = 1440
    tasks_per_node: int = 1
    gpus_per_node: int | None = None


def register_presets() -> None:
    """Store :class:`ClusterSlurmConf` and :class:`ClusterLocalConf` as
    ``hydra/launcher/submitit_slurm`` and ``submitit_local`` (idempotent)."""
    store = ConfigStore.instance()
    for name, node in (("submitit_slurm", ClusterSlurmConf), ("submitit_local", ClusterLocalConf)):
        store.store(group="hydra/launcher", name=name, node=node, provider="cnas_hpc")
