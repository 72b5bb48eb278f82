"""DARTS's ImageNet evaluation network (the "mobile setting": 14 cells x 48 channels).

As ``quark0/darts/cnn/model.py``'s ``NetworkImageNet``: two stride-2 stems (224 -> 56 pixels),
then the cells with reductions at ``layers // 3`` and ``2 * layers // 3`` (56 -> 28 -> 14 ... 7),
global average pooling and a linear classifier; the auxiliary head reads the 14x14 maps after
cell ``2 * layers // 3``. DARTS_V2 at 14 x 48 on 224x224 images: 4.72 M parameters (the
published 4.7 M) and 530 M multiply-accumulates of convolutions and linear layers (DARTS
reports 574 M with its own counter). No constructor picks a device.
"""

# DARTS's channel names (C, C_prev, ...) are part of the published API we keep.
# ruff: noqa: N803

from __future__ import annotations

from torch import Tensor, nn

from cnas_hpc.models.networks import build_cells, check_positive
from cnas_hpc.space.genotype import Genotype


class AuxiliaryHeadImageNet(nn.Module):
    """DARTS's ImageNet auxiliary classifier (expects 14x14 maps from 224x224 images).

    As in DARTS's released code (and its paper's experiments), the BatchNorm after the second
    convolution is left out.
    """

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, num_classes]`` (pooled to 1x1 for inputs other than 14x14)."""
        features = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        logits: Tensor = self.classifier(features.flatten(1))
        return logits


class NetworkImageNet(nn.Module):
    """DARTS's ImageNet evaluation network.

    Args:
        genotype: The cells.
        C: Channels of the first cells (DARTS mobile: 48).
        num_classes: Number of classes.
        layers: Number of cells (DARTS mobile: 14).
        auxiliary: Whether to build the auxiliary head.
        drop_path_prob: Initial drop-path probability in ``[0, 1)`` (reassign per epoch).

    Attributes:
        drop_path_prob: Drop-path probability of the next training-mode forward.
        auxiliary_head: The auxiliary head or ``None`` (``auxiliary_head.*`` parameters are left
            out of :func:`~cnas_hpc.models.complexity.count_parameters` by default).
    """

    def __init__(
        self,
        genotype: Genotype,
        *,
        C: int = 48,
        num_classes: int = 1000,
        layers: int = 14,
        auxiliary: bool = True,
        drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive(C=C, num_classes=num_classes, layers=layers)
        if not 0.0 <= drop_path_prob < 1.0:
            raise ValueError(f"drop_path_prob must be in [0, 1), got {drop_path_prob}")
        if C < 2:
            raise ValueError(f"C must be >= 2 (the first stem has C // 2 channels), got {C}")
        self.drop_path_prob = drop_path_prob
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # The stems reduce, so the first cell sees a reduced previous input (DARTS).
        self.cells, out_channels, aux_channels = build_cells(
            genotype, C, layers, C, reduction_prev=True
        )
        self.aux_index = 2 * layers // 3
        self.auxiliary_head = (
            AuxiliaryHeadImageNet(aux_channels, num_classes) if auxiliary else None
        )
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(out_channels, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Classify ``[B, 3, S, S]`` images (DARTS: S = 224); returns ``(logits, logits_aux)``."""
        logits_aux: Tensor | None = None
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits: Tensor = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux
