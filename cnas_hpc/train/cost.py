"""A cell's cost at EVALUATION size: parameters, MACs and measured forward latency.

The network is the one the evaluation protocol trains (:func:`~cnas_hpc.train.supervised.
build_eval_network`: the 20 x 36 CIFAR network of ``darts_cifar``, or the ImageNet mobile
network), counted with :mod:`cnas_hpc.models.complexity`: parameters as DARTS counts them
(auxiliary head excluded), MACs of one eval-mode image. Latency is the median of
``cost.repeats`` timed eval-mode forward passes of a ``cost.batch_size`` batch after
``cost.warmup`` untimed ones, on the named device (CUDA timing synchronises around each pass).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from cnas_hpc.config.cost import CostConfig
from cnas_hpc.models.complexity import count_macs, count_parameters
from cnas_hpc.space.genotype import Genotype
from cnas_hpc.train.supervised import build_eval_network


@dataclass(frozen=True)
class CellCost:
    """The costs of one cell's evaluation network (``latency_ms`` None: not measured)."""

    params: int
    macs: int
    latency_ms: float | None = None

    def value(self, name: str) -> float:
        """The cost ``name`` (``params`` | ``macs`` | ``latency_ms``).

        Raises:
            ValueError: another name, or latency not measured.
        """
        value = {"params": self.params, "macs": self.macs, "latency_ms": self.latency_ms}.get(name)
        if value is None:
            raise ValueError(f"cost {name!r} was not measured")
        return float(value)


def cost_device(cfg: CostConfig) -> torch.device:
    """The device ``cost.device`` names, in this process.

    Raises:
        RuntimeError: ``cuda`` without a visible GPU.
    """
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("cost.device=cuda but this worker sees no GPU")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def device_label(cfg: CostConfig) -> str:
    """What ``cnas:cost_device`` records: ``cpu``, or ``cuda <GPU model>`` (latencies of
    different GPU models are different costs, cached apart)."""
    if cfg.device == "cuda" and torch.cuda.is_available():
        return f"cuda {torch.cuda.get_device_name(torch.cuda.current_device())}"
    return cfg.device


def measure_cost(genotype: Genotype, cfg: CostConfig, *, latency: bool) -> CellCost:
    """Count (and with ``latency``, time) the evaluation network of ``genotype``.

    Seeded (seed 0) and built on the CPU; timed on :func:`cost_device`, then freed.
    """
    net = cfg.network
    model = build_eval_network(genotype, net, cfg.classes, seed=0)
    shape = (3, net.image_size, net.image_size)
    params, macs = count_parameters(model), count_macs(model, shape)
    if not latency:
        return CellCost(params, macs)
    device = cost_device(cfg)
    model = model.to(device).eval()
    batch = torch.randn((cfg.batch_size, *shape), device=device)
    times = []
    with torch.inference_mode():
        for i in range(cfg.warmup + cfg.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= cfg.warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    del model, batch
    return CellCost(params, macs, statistics.median(times))
