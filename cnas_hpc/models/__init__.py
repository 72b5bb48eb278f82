"""Networks of the DARTS cell space: edge ops, cells, the proxy and evaluation networks, costs."""

from __future__ import annotations

from cnas_hpc.config.model import REFERENCE_PROXY, ProxyConfig
from cnas_hpc.models.cell import Cell, live_nodes
from cnas_hpc.models.complexity import count_macs, count_parameters
from cnas_hpc.models.networks import (
    AuxiliaryHeadCIFAR,
    NetworkCIFAR,
    ProxyNetwork,
    build_proxy,
    reduction_indices,
)
from cnas_hpc.models.ops import OPS, OpFactory, create_op, drop_path, register_op

__all__ = [
    "OPS",
    "REFERENCE_PROXY",
    "AuxiliaryHeadCIFAR",
    "Cell",
    "NetworkCIFAR",
    "OpFactory",
    "ProxyConfig",
    "ProxyNetwork",
    "build_proxy",
    "count_macs",
    "count_parameters",
    "create_op",
    "drop_path",
    "live_nodes",
    "reduction_indices",
    "register_op",
]
