"""What the REAL local SLURM cluster offers, as the submitting side reads it."""

from __future__ import annotations

import subprocess

import pytest

from cnas_hpc.distributed.cluster import ask_cluster, gpus_of


def test_gpus_are_counted_from_every_gres_spelling() -> None:
    assert gpus_of("(null)") == 0
    assert gpus_of("gpu:4") == 4
    assert gpus_of("gpu:a100:4(S:0-1)") == 4
    assert gpus_of("gpu:a100:2,gpu:v100:1,shard:8") == 3


@pytest.mark.slurm
def test_the_cluster_is_read_from_sinfo_and_scontrol() -> None:
    cluster = ask_cluster()
    assert cluster is not None
    sinfo = subprocess.run(
        ["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(cluster.partitions) == sorted({p.rstrip("*") for p in sinfo})
    assert cluster.default == next(p.rstrip("*") for p in sinfo if p.endswith("*"))
    config = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=True
    ).stdout
    line = next(x for x in config.splitlines() if x.startswith("MaxArraySize"))
    assert cluster.max_array_size == int(line.split("=")[1])
    for partition in cluster.partitions.values():
        assert partition.memory_mb > 0 and partition.cpus_per_node > 0
