"""What the SLURM cluster offers: partitions, GPUs and memory per node, the largest array.

The submitting side asks this before it creates a study or submits an array, so that a request
the cluster cannot grant (a partition that does not exist, GPUs on a cluster without any, an
array over ``MaxArraySize``) is refused with one line instead of an ``sbatch`` traceback after
the study exists. It runs ``sinfo`` and ``scontrol show config`` (SLURM's own answers) and reads
no environment variable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cnas_hpc.distributed.jobs import client_lines

#: A ``sinfo`` ``%G`` item that counts GPUs: ``gpu:4``, ``gpu:a100:4``, ``gpu:a100:4(S:0-1)``.
_GPU_GRES = re.compile(r"^gpu(?::[^:(]+)?:(\d+)")


@dataclass(frozen=True)
class Partition:
    """One partition as ``sinfo`` reports it (the largest node of each kind)."""

    name: str
    gpus_per_node: int = 0
    memory_mb: int = 0
    cpus_per_node: int = 0


@dataclass(frozen=True)
class Cluster:
    """The cluster's limits a submission must fit.

    Attributes:
        partitions: by name.
        default: the default partition (``sinfo`` marks it ``*``), if any.
        max_array_size: ``MaxArraySize`` (array indices run from 0 to this minus one).
    """

    partitions: dict[str, Partition] = field(default_factory=dict)
    default: str | None = None
    max_array_size: int | None = None


def gpus_of(gres: str) -> int:
    """GPUs per node in a ``sinfo`` ``%G`` field (``(null)``: none)."""
    total = 0
    for item in gres.split(","):
        found = _GPU_GRES.match(item.strip())
        if found:
            total += int(found.group(1))
    return total


def _number(text: str) -> int:
    digits = re.match(r"\d+", text.strip())
    return int(digits.group(0)) if digits else 0


def ask_cluster() -> Cluster | None:
    """The cluster's partitions and array limit; None when SLURM does not answer."""
    lines = client_lines(["sinfo", "-h", "-o", "%P|%G|%m|%c"])
    if lines is None:
        return None
    partitions: dict[str, Partition] = {}
    default = None
    for line in lines:
        name, gres, memory, cpus = [*line.split("|"), "", "", ""][:4]
        if name.endswith("*"):
            name = name.rstrip("*")
            default = name
        seen = partitions.get(name, Partition(name))
        partitions[name] = Partition(
            name,
            gpus_per_node=max(seen.gpus_per_node, gpus_of(gres)),
            memory_mb=max(seen.memory_mb, _number(memory)),
            cpus_per_node=max(seen.cpus_per_node, _number(cpus)),
        )
    max_array = None
    for line in client_lines(["scontrol", "show", "config"]) or []:
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            max_array = _number(value) or None
    return Cluster(partitions, default, max_array)
