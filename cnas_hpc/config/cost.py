"""The ``cost`` section: how a cell's cost is measured at EVALUATION size.

A search optimises a small proxy, but a user deploys the evaluation network: the cost
objectives and constraints of ``search.objectives`` / ``search.constraints`` (``params``,
``macs``, ``latency_ms``) are measured on the network of the protocol named by
``cost.protocol`` (an option of ``cnas_hpc/configs/protocol/``: ``darts_cifar`` = DARTS's
20 x 36 CIFAR network, ``imagenet_mobile`` = its 14 x 48 mobile ImageNet network at 224 px), never
on the proxy. The section matters only when a cost is used; otherwise it is ignored (and left
out of the scoring setup, see :mod:`cnas_hpc.config.scoring`).
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources
from typing import Literal

import yaml

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.build import Count, Natural, build_section, section
from cnas_hpc.config.protocol import ProtocolConfig


@functools.cache
def protocol_named(name: str) -> ProtocolConfig:
    """The protocol option ``name`` of ``cnas_hpc/configs/protocol/`` (its YAML, as shipped).

    Raises:
        ConfigError: no such option (one line naming them).
    """
    folder = resources.files("cnas_hpc.configs") / "protocol"
    options = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
    if name not in options:
        raise ConfigError(f"cost.protocol must be one of {', '.join(options)}, got {name!r}")
    return build_section(ProtocolConfig, yaml.safe_load((folder / f"{name}.yaml").read_text()))


@section("cost")
class CostConfig:
    """How the cost objectives of a cell are measured.

    Attributes:
        protocol: The evaluation protocol whose network is costed (its ``network``, ``cells``,
            ``channels``, ``image_size``); ``cells`` / ``channels`` below override it.
        cells: Cells of the costed network (``null``: the protocol's).
        channels: Initial channels of the costed network (``null``: the protocol's).
        num_classes: Classes of its classifier (``null``: 10 on ``cifar``, 1000 on ``imagenet``).
        device: ``cpu`` | ``cuda``: where ``latency_ms`` is measured (the worker's device of
            that kind; a cuda measurement names the GPU model in ``cnas:cost_device``).
        batch_size: Images per timed forward pass.
        warmup: Untimed forward passes first (allocator, kernels, caches).
        repeats: Timed forward passes; ``latency_ms`` is their median.
    """

    protocol: str = "darts_cifar"
    cells: Count | None = None
    channels: Count | None = None
    num_classes: Count | None = None
    #: Where latency is measured: the worker's CPU (its allocation's threads) or its GPU.
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: Count = 1
    warmup: Natural = 2
    repeats: Count = 5

    def __post_init__(self) -> None:
        protocol_named(self.protocol)

    @property
    def network(self) -> ProtocolConfig:
        """The costed network's protocol (``cells`` / ``channels`` overrides applied)."""
        base = protocol_named(self.protocol)
        return dataclasses.replace(
            base, cells=self.cells or base.cells, channels=self.channels or base.channels
        )

    @property
    def classes(self) -> int:
        """Classes of the costed network's classifier."""
        if self.num_classes is not None:
            return self.num_classes
        return 1000 if self.network.network == "imagenet" else 10

    @property
    def network_label(self) -> str:
        """What ``cnas:cost_network`` records, e.g. ``darts_cifar 20x36``."""
        net = self.network
        return f"{self.protocol} {net.cells}x{net.channels}"
