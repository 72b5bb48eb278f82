"""Zero-cost proxies: label-free scores of an UNTRAINED network, seconds per cell.

Two scores from their papers' definitions, the rivals the contrastive score has to beat:

* :func:`naswot` (Mellor et al., "Neural Architecture Search without Training", ICML 2021): one
  batch of ``B`` unlabeled images goes through the network at initialisation; at every ReLU the
  sign pattern of its INPUT is the image's binary code ``c`` (one bit per unit). The kernel
  ``K[i, j] = <c_i, c_j> + <1 - c_i, 1 - c_j>`` (the number of units on which images ``i`` and
  ``j`` agree, summed over the ReLUs) is ``[B, B]``; the score is ``log|det K|``. Higher is
  better: a network whose linear regions tell the images apart.
* :func:`synflow` (Tanaka et al., "Pruning neural networks without any data by iteratively
  conserving synaptic flow", NeurIPS 2020; as a NAS proxy: Abdelfattah et al., "Zero-Cost
  Proxies for Lightweight NAS", ICLR 2021): every parameter replaced by its absolute value,
  BatchNorm removed (the proxy library's ``bn=False``), an all-ones input of ONE image,
  ``R = sum(output)`` in float64; the score is ``sum_theta |theta * dR/dtheta|`` over the
  weights of every convolution and linear layer. Data-free. Reported as ``log(score)`` (the
  ranking is the same; the raw sum overflows float32 for deep cells).

Both take a freshly built network; they never train it, and work on a copy where they change it,
so the caller's module is left as it was. Device-agnostic: they run where the model's parameters
are.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnas_hpc.common.objectives import ZERO_COST_OBJECTIVES
from cnas_hpc.config.zero_cost import ZeroCostConfig
from cnas_hpc.data.datasets import STREAM_ZERO_COST, seeded_permutation
from cnas_hpc.models.networks import NetworkCIFAR
from cnas_hpc.space.genotype import Genotype


def _binary_code_kernel(codes: Tensor) -> Tensor:
    """``K = C C^T + (1 - C)(1 - C)^T`` for a ``[B, units]`` 0/1 matrix ``C``, as float64.

    One product instead of two: ``(1 - c_i).(1 - c_j) = n - |c_i| - |c_j| + c_i.c_j``. The
    product runs in ``C``'s float32: dot products of 0/1 vectors are integers, exact in float32
    below 2**24 units per layer.
    """
    n = codes.shape[1]
    if n >= 2**24:
        codes = codes.to(torch.float64)
    agree = (codes @ codes.T).to(torch.float64)
    ones = codes.sum(dim=1, dtype=torch.float64)
    return 2.0 * agree + n - ones[:, None] - ones[None, :]


@contextmanager
def _relu_codes(model: nn.Module, batch: int, device: torch.device) -> Iterator[Tensor]:
    """Collect, while active, the summed binary-code kernel of every ``nn.ReLU``'s input."""
    kernel = torch.zeros((batch, batch), dtype=torch.float64, device=device)

    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0].detach().flatten(1)
        kernel.add_(_binary_code_kernel((x > 0).to(torch.float32)))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        yield kernel
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def naswot(model: nn.Module, images: Tensor) -> float:
    """NASWOT score ``log|det K|`` of ``model`` on one batch (see the module docstring).

    The forward runs in training mode (BatchNorm normalises with the batch's statistics, as in
    the paper's code); ``model``'s buffers (running statistics) and mode are restored after.

    Args:
        model: A network whose forward takes ``images`` (its output is ignored) and which has at
            least one ``nn.ReLU`` module (a functional ``relu`` is not seen).
        images: ``[B, C, H, W]`` floating images, ``B >= 2``, on the model's device.

    Returns:
        ``log|det K|``; ``-inf`` when ``K`` is singular (two images with identical codes).

    Raises:
        ValueError: fewer than two images, or a model without ``nn.ReLU`` modules.
    """
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"naswot needs a [B>=2, C, H, W] batch, got {tuple(images.shape)}")
    if not any(isinstance(m, nn.ReLU) for m in model.modules()):
        raise ValueError("naswot needs a network with nn.ReLU modules")
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    try:
        model.train()
        with _relu_codes(model, images.shape[0], images.device) as kernel:
            model(images)
    finally:
        for name, value in model.named_buffers():
            value.copy_(buffers[name])
        for m, mode in modes.items():
            m.training = mode
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if float(sign) > 0 else -math.inf


def _without_batchnorm(model: nn.Module, *, inplace: bool) -> nn.Module:
    """``model`` (or a copy) with every BatchNorm replaced by the identity."""
    clone = model if inplace else copy.deepcopy(model)
    for module in list(clone.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, child_name, nn.Identity())
    return clone


def synflow(model: nn.Module, input_shape: tuple[int, int, int], *, inplace: bool = False) -> float:
    """``log`` of the synaptic-flow score of ``model`` (see the module docstring).

    Args:
        model: A network whose forward takes one ``[1, *input_shape]`` tensor and returns a
            tensor or a tuple whose first item is the output (``NetworkCIFAR``'s logits).
        input_shape: ``(channels, height, width)`` of one image.
        inplace: Change ``model`` itself (absolute float64 weights, no BatchNorm) instead of a
            copy: for a throwaway network, saves the copy.

    Returns:
        ``log(sum |theta * dR/dtheta|)`` over ``Conv2d`` and ``Linear`` weights; ``-inf`` when
        the sum is 0.

    Raises:
        ValueError: the score overflows float64 (a network too deep for the all-ones input).
    """
    probe = _without_batchnorm(model, inplace=inplace).to(torch.float64).eval()
    for parameter in probe.parameters():
        parameter.data.abs_()
        parameter.grad = None
    device = next(probe.parameters()).device
    output = probe(torch.ones((1, *input_shape), dtype=torch.float64, device=device))
    if isinstance(output, tuple):
        output = output[0]
    output.sum().backward()
    total = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, nn.Conv2d | nn.Linear) and module.weight.grad is not None:
                total += (module.weight * module.weight.grad).abs().sum()
    value = float(total)
    if not math.isfinite(value):
        raise ValueError("synflow overflows float64 for this network: use fewer cells")
    return math.log(value) if value > 0 else -math.inf


@dataclass(frozen=True)
class ZeroCostScores:
    """The zero-cost proxies of one cell (higher is better for both; ``None``: not asked for)
    and their cost."""

    naswot: float | None
    synflow: float | None
    wall_s: float

    def value(self, objective: str) -> float:
        """The score named ``objective`` (``naswot`` or ``synflow``).

        Raises:
            ValueError: another name, or a score that was not computed.
        """
        value = {"naswot": self.naswot, "synflow": self.synflow}.get(objective)
        if objective not in ZERO_COST_OBJECTIVES:
            raise ValueError(f"{objective!r} is not a zero-cost objective")
        if value is None:
            raise ValueError(f"{objective} was not computed")
        return value


def naswot_batch(images: Tensor, batch_size: int, seed: int) -> Tensor:
    """NASWOT's batch: ``batch_size`` of the uint8 ``[N, C, H, W]`` images, seeded, as floats
    normalised per channel by the batch's own mean and std (no dataset constants needed)."""
    n = len(images)
    if n < 2:
        raise ValueError(f"naswot needs at least 2 images, got {n}")
    index = seeded_permutation(n, seed, STREAM_ZERO_COST)[: min(batch_size, n)]
    x = images[index].to(torch.float32).div_(255.0)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x - mean) / std


def scored_network(genotype: Genotype, cfg: ZeroCostConfig, seed: int) -> NetworkCIFAR:
    """The untrained network the proxies score: ``cfg.cells`` x ``cfg.channels``, seeded (CPU)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return NetworkCIFAR(genotype, C=cfg.channels, layers=cfg.cells, auxiliary=False)


def zero_cost_scores(
    genotype: Genotype,
    images: Tensor,
    cfg: ZeroCostConfig,
    seed: int,
    device: torch.device,
    *,
    names: tuple[str, ...] = ZERO_COST_OBJECTIVES,
) -> ZeroCostScores:
    """NASWOT and synflow of ``genotype``'s untrained network (see the module docstring).

    Every rank that calls it with the same arguments gets the same numbers (seeded network and
    batch); it trains nothing and leaves the global RNG state as it was.

    Args:
        genotype: The cell.
        images: Unlabeled uint8 ``[N, C, H, W]`` training images (CPU), ``N >= 2``.
        cfg: The network's shape and NASWOT's batch size.
        seed: Seed of the network's initialisation and of the batch.
        device: Where to run.
        names: Which proxies to compute (a search on one of them needs only that one).
    """
    started = time.perf_counter()
    network = scored_network(genotype, cfg, seed).to(device)
    shape = (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
    score = flow = None
    with torch.random.fork_rng(devices=[]):
        if "naswot" in names:
            score = naswot(network, naswot_batch(images, cfg.batch_size, seed).to(device))
        if "synflow" in names:
            flow = synflow(network, shape, inplace=True)
    return ZeroCostScores(score, flow, time.perf_counter() - started)
