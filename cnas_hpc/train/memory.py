"""Device memory: release it between candidates, and read how much a process used."""

from __future__ import annotations

import gc
import resource

import torch


def release_memory(device: torch.device) -> None:
    """Collect garbage and return cached CUDA blocks, so the next candidate starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def memory_mb(device: torch.device) -> float:
    """Peak device memory of this process (CUDA) or its peak resident set size (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
