"""DARTS's ImageNet (mobile) network: published sizes, forward and backward at a small size."""

from __future__ import annotations

import torch

from cnas_hpc.models.complexity import count_macs, count_parameters
from cnas_hpc.models.imagenet import NetworkImageNet
from cnas_hpc.models.networks import NetworkCIFAR
from cnas_hpc.space.genotype import DARTS_V2, PC_DARTS, Genotype


def test_darts_v2_has_the_published_sizes() -> None:
    mobile = NetworkImageNet(DARTS_V2, C=48, num_classes=1000, layers=14, auxiliary=True)
    assert round(count_parameters(mobile) / 1e6, 1) == 4.7  # the published 4.7 M
    assert count_macs(mobile, (3, 224, 224)) < 600e6  # the mobile setting's budget
    cifar = NetworkCIFAR(DARTS_V2, C=36, num_classes=10, layers=20, auxiliary=True)
    assert round(count_parameters(cifar) / 1e6, 2) == 3.35  # the published 3.3 M


def test_forward_and_backward_reach_every_parameter() -> None:
    net = NetworkImageNet(PC_DARTS, C=4, num_classes=5, layers=3, auxiliary=True)
    net.drop_path_prob = 0.1
    logits, aux = net(torch.randn(2, 3, 224, 224))  # the head reads 14x14 maps
    assert logits.shape == (2, 5) and aux is not None and aux.shape == (2, 5)
    (logits.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    assert net(torch.randn(1, 3, 224, 224))[1] is None  # no auxiliary output at test time


def test_the_mobile_budget_is_a_real_constraint() -> None:
    heavy = Genotype(
        normal=[("sep_conv_5x5", 0), ("sep_conv_5x5", 1)] * 4,
        normal_concat=[2, 3, 4, 5],
        reduce=[("sep_conv_5x5", 0), ("sep_conv_5x5", 1)] * 4,
        reduce_concat=[2, 3, 4, 5],
    )
    mobile = NetworkImageNet(heavy, C=48, num_classes=1000, layers=14, auxiliary=False)
    assert count_macs(mobile, (3, 224, 224)) > 600e6  # refused by protocol.max_macs
