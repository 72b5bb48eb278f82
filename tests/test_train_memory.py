"""The memory floor of a proxy shape: below what training really uses, and growing with it."""

from __future__ import annotations

import torch

from cnas_hpc.config.model import ProxyConfig
from cnas_hpc.models.networks import build_proxy
from cnas_hpc.space.genotype import DARTS_V2
from cnas_hpc.train.memory import training_bytes_floor


def test_the_floor_is_under_what_a_real_training_step_holds() -> None:
    cfg = ProxyConfig(cells=3, channels=8, proj_hidden_dim=16, proj_dim=8)
    floor = training_bytes_floor(cfg, n_nodes=4, batch_per_rank=16, image_size=16)
    network = build_proxy(DARTS_V2, cfg)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    views = torch.randn(32, 3, 16, 16)  # two views of 16 images
    network(views).pow(2).mean().backward()
    optimizer.step()
    weights = sum(p.numel() * 4 for p in network.parameters())
    stem_out = 32 * cfg.stem_multiplier * cfg.channels * 16 * 16 * 4  # the first conv's output
    # weights + gradients + the stem's activations: all held at once in any real step
    assert 0 < floor <= 2 * weights + stem_out
    big = training_bytes_floor(
        ProxyConfig(channels=100_000), n_nodes=4, batch_per_rank=128, image_size=32
    )
    assert big > 2**40  # a terabyte: no node can hold it
