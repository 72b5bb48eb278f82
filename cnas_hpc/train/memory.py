"""Device memory: release it between candidates, read how much a process used, and bound
from below what a proxy shape needs (to refuse one that cannot fit before anything runs)."""

from __future__ import annotations

import gc
import resource

import torch

from cnas_hpc.config.model import ProxyConfig
from cnas_hpc.models.complexity import count_parameters
from cnas_hpc.models.networks import build_proxy
from cnas_hpc.space.genotype import Genotype


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


def _cheapest_cell(n_nodes: int) -> Genotype:
    """A cell whose ops hold no parameter (pools only): every cell costs at least this."""
    edges = [("max_pool_3x3", j) for i in range(n_nodes) for j in (0, 1)]
    concat = list(range(2, 2 + n_nodes))
    return Genotype(normal=edges, normal_concat=concat, reduce=edges, reduce_concat=concat)


def training_bytes_floor(
    cfg: ProxyConfig, *, n_nodes: int, batch_per_rank: int, image_size: int
) -> int:
    """A LOWER bound of the memory one rank needs to train any candidate of this proxy shape.

    Counted: fp32 weights and gradients of the network with the cheapest cell (pools only: its
    1x1 preprocessing convolutions, the stem and the projector still hold parameters), and the
    stem's output for the batch's two views (kept for backward). A real candidate needs more
    (its ops' parameters, optimizer states, every other activation); a configuration over this
    bound can never train.
    """
    with torch.device("meta"):  # shapes only: nothing is allocated
        network = build_proxy(_cheapest_cell(n_nodes), cfg)
    parameters = count_parameters(network)
    stem = 2 * batch_per_rank * cfg.stem_multiplier * cfg.channels * image_size**2
    return 4 * (2 * parameters + stem)
