"""Networks built from a genotype: the search-phase proxy and the DARTS CIFAR evaluation network.

Both stack :class:`~cnas_hpc.models.cell.Cell` s the DARTS way (``quark0/darts/cnn/model.py``):
a 3x3 convolution stem with ``stem_multiplier * C`` channels, then ``layers`` cells, the cells at
indices ``layers // 3`` and ``2 * layers // 3`` being reduction cells that double the channels
and halve the resolution. Each cell reads the outputs of the two cells before it (the stem
output stands in for missing ones).

- :class:`ProxyNetwork` is what the search trains without labels: the body, global average
  pooling and a SimCLR-style projection head. :func:`build_proxy` builds it from a
  :class:`ProxyConfig` (the ``model`` config group).
- :class:`NetworkCIFAR` is the labelled evaluation network, with DARTS's auxiliary head and
  drop-path.

No constructor picks a device: build on CPU, then ``.to(device)``.
"""

# DARTS's channel names (C, C_prev_prev, ...) are part of the published API we keep.
# ruff: noqa: N803, N806

from __future__ import annotations

from torch import Tensor, nn

from cnas_hpc.config.model import ProxyConfig
from cnas_hpc.models.cell import Cell
from cnas_hpc.space.genotype import Genotype


def check_positive(**values: int) -> None:
    """Raise ``ValueError`` naming the first argument that is not an integer ``>= 1``."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def reduction_indices(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells: ``layers // 3`` and ``2 * layers // 3``, deduplicated.

    With fewer than 3 cells the two indices can coincide: 1 cell gives one reduction (cell 0),
    2 cells give two (cells 0 and 1).
    """
    return tuple(sorted({layers // 3, 2 * layers // 3}))


def build_cells(
    genotype: Genotype, C: int, layers: int, C_stem: int, *, reduction_prev: bool
) -> tuple[nn.ModuleList, int, int]:
    """DARTS's stack of ``layers`` cells after a stem of ``C_stem`` channels.

    Returns:
        The cells, the channels of the last cell's output, and the channels of the output of
        cell ``2 * layers // 3`` (where DARTS attaches its auxiliary head).
    """
    reductions = reduction_indices(layers)
    aux_index, aux_channels = 2 * layers // 3, 0
    C_prev_prev, C_prev, C_curr = C_stem, C_stem, C
    cells = nn.ModuleList()
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            C_curr *= 2
        cell_genotype, concat = (
            (genotype.reduce, genotype.reduce_concat)
            if reduction
            else (genotype.normal, genotype.normal_concat)
        )
        cell = Cell(cell_genotype, concat, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
        cells.append(cell)
        reduction_prev = reduction
        C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
        if i == aux_index:
            aux_channels = C_prev
    return cells, C_prev, aux_channels


class _CellStack(nn.Module):
    """Stem and cells of a DARTS CIFAR network (no pooling, no head).

    Args:
        genotype: The cells to stack.
        C: Channels of the first cells (doubled at every reduction).
        layers: Number of cells.
        stem_multiplier: The stem outputs ``stem_multiplier * C`` channels.
        in_channels: Image channels.

    Attributes:
        out_channels: Channels of the last cell's output.
        aux_index: Index of the cell after which DARTS attaches its auxiliary head.
        aux_channels: Channels of that cell's output.
    """

    def __init__(
        self, genotype: Genotype, C: int, layers: int, stem_multiplier: int, in_channels: int
    ) -> None:
        super().__init__()
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        self.aux_index = 2 * layers // 3
        self.cells, self.out_channels, self.aux_channels = build_cells(
            genotype, C, layers, C_stem, reduction_prev=False
        )


class ProxyNetwork(nn.Module):
    """The search-phase proxy: DARTS CIFAR body, global average pooling, a projection head.

    ``forward`` returns the unnormalised projection ``z`` that contrastive losses consume;
    ``features`` returns the pooled backbone features (for kNN probes).

    The reference code's proxy (CSNAS) is 8 cells x 32 channels (reductions at cells 2 and 5,
    512 pooled features) with a single ``Linear(512 -> 256)`` as projection:
    ``ProxyNetwork(g, C=32, layers=8, proj_hidden_dim=None, proj_dim=256)``, or
    ``build_proxy(g, REFERENCE_PROXY)``.

    Args:
        genotype: The cells.
        C: Channels of the first cells, ``>= 1``.
        layers: Number of cells, ``>= 1``. Reductions sit at ``layers // 3`` and
            ``2 * layers // 3``; fewer than 3 cells is allowed and gives fewer distinct reduction
            positions (see :func:`reduction_indices`).
        stem_multiplier: Stem channels are ``stem_multiplier * C``.
        in_channels: Image channels.
        proj_hidden_dim: Hidden width of the projection head ``Linear-BN-ReLU-Linear`` (SimCLR);
            ``None`` for a single ``Linear(feature_dim -> proj_dim)`` (the reference code).
        proj_dim: Output dimension of the projection.

    Attributes:
        feature_dim: Dimension of :meth:`features`' output.
        proj_dim: Dimension of :meth:`forward`'s output.

    Raises:
        ValueError: If an integer argument is not ``>= 1``, or the genotype is malformed.
    """

    def __init__(
        self,
        genotype: Genotype,
        *,
        C: int = 8,
        layers: int = 5,
        stem_multiplier: int = 3,
        in_channels: int = 3,
        proj_hidden_dim: int | None = 128,
        proj_dim: int = 64,
    ) -> None:
        super().__init__()
        check_positive(
            C=C,
            layers=layers,
            stem_multiplier=stem_multiplier,
            in_channels=in_channels,
            proj_dim=proj_dim,
        )
        if proj_hidden_dim is not None:
            check_positive(proj_hidden_dim=proj_hidden_dim)
        self.genotype = genotype
        self.body = _CellStack(genotype, C, layers, stem_multiplier, in_channels)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = self.body.out_channels
        self.proj_dim = proj_dim
        self.projector: nn.Module
        if proj_hidden_dim is None:
            self.projector = nn.Linear(self.feature_dim, proj_dim)
        else:
            # No bias before BatchNorm: it would be cancelled by the mean subtraction.
            self.projector = nn.Sequential(
                nn.Linear(self.feature_dim, proj_hidden_dim, bias=False),
                nn.BatchNorm1d(proj_hidden_dim),
                nn.ReLU(inplace=True),
                nn.Linear(proj_hidden_dim, proj_dim),
            )

    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features.

        Args:
            x: ``[B, in_channels, H, W]`` floating images.

        Returns:
            ``[B, feature_dim]`` in ``x``'s dtype and device.
        """
        s0 = s1 = self.body.stem(x)
        for cell in self.body.cells:
            s0, s1 = s1, cell(s0, s1)
        pooled: Tensor = self.global_pooling(s1)
        return pooled.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Projection of the pooled features.

        Args:
            x: ``[B, in_channels, H, W]`` floating images; ``B >= 2`` in training mode when the
                head has a BatchNorm (``proj_hidden_dim`` set).

        Returns:
            ``[B, proj_dim]``, not normalised (losses normalise).
        """
        z: Tensor = self.projector(self.features(x))
        return z


def build_proxy(genotype: Genotype, cfg: ProxyConfig) -> ProxyNetwork:
    """Build the proxy network for ``genotype`` with the shape given by ``cfg`` (on CPU)."""
    return ProxyNetwork(
        genotype,
        C=cfg.channels,
        layers=cfg.cells,
        stem_multiplier=cfg.stem_multiplier,
        proj_hidden_dim=cfg.proj_hidden_dim,
        proj_dim=cfg.proj_dim,
    )


class AuxiliaryHeadCIFAR(nn.Module):
    """DARTS's auxiliary classifier, attached after cell ``2 * layers // 3``.

    Args:
        C: Channels of its input.
        num_classes: Number of classes.
    """

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            # Not in-place (DARTS's is): the input is the main path's cell output.
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``[B, C, 8, 8]`` (the 32x32-image feature map, as DARTS assumes) to logits.

        Raises:
            ValueError: If the feature map is not 8x8.
        """
        if tuple(x.shape[-2:]) != (8, 8):
            raise ValueError(
                f"AuxiliaryHeadCIFAR expects 8x8 feature maps (32x32 images), got "
                f"{tuple(x.shape[-2:])}; use auxiliary=False for other image sizes"
            )
        logits: Tensor = self.classifier(self.features(x).flatten(1))
        return logits


class NetworkCIFAR(nn.Module):
    """The DARTS CIFAR evaluation network (stem multiplier 3, 3-channel images).

    Args:
        genotype: The cells.
        C: Channels of the first cells (DARTS: 36).
        num_classes: Number of classes.
        layers: Number of cells (DARTS: 20).
        auxiliary: Whether to build the auxiliary head (needs 32x32 images and ``layers >= 2``,
            so that the cell it reads outputs 8x8 maps).
        drop_path_prob: Initial drop-path probability in ``[0, 1)``; reassign
            :attr:`drop_path_prob` every epoch (DARTS ramps it linearly to 0.2).

    Attributes:
        drop_path_prob: Drop-path probability used by the next training-mode forward.
        auxiliary_head: The auxiliary head, or ``None``. Its parameters are named
            ``auxiliary_head.*`` so that :func:`~cnas_hpc.models.complexity.count_parameters`
            leaves them out by default.

    Raises:
        ValueError: If an integer argument is not ``>= 1``, ``drop_path_prob`` is outside
            ``[0, 1)``, or the genotype is malformed.
    """

    def __init__(
        self,
        genotype: Genotype,
        *,
        C: int = 36,
        num_classes: int = 10,
        layers: int = 20,
        auxiliary: bool = True,
        drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive(C=C, num_classes=num_classes, layers=layers)
        if not 0.0 <= drop_path_prob < 1.0:
            raise ValueError(f"drop_path_prob must be in [0, 1), got {drop_path_prob}")
        self.genotype = genotype
        self.drop_path_prob = drop_path_prob
        self.body = _CellStack(genotype, C, layers, stem_multiplier=3, in_channels=3)
        self.auxiliary_head: AuxiliaryHeadCIFAR | None = (
            AuxiliaryHeadCIFAR(self.body.aux_channels, num_classes) if auxiliary else None
        )
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.body.out_channels, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Classify images.

        Args:
            x: ``[B, 3, 32, 32]`` floating images (other sizes only with ``auxiliary=False``).

        Returns:
            ``(logits, logits_aux)``, each ``[B, num_classes]``; ``logits_aux`` is ``None`` in eval
            mode or without an auxiliary head.
        """
        logits_aux: Tensor | None = None
        s0 = s1 = self.body.stem(x)
        for i, cell in enumerate(self.body.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.body.aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits: Tensor = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux
