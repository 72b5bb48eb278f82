"""The ``model`` config group: the shape of the proxy network every candidate is built into."""

from __future__ import annotations

from dataclasses import dataclass

from cnas_hpc.config.checks import check_positive_ints


@dataclass(frozen=True)
class ProxyConfig:
    """The ``model`` config group: shape of the proxy network (see :class:`ProxyNetwork`).

    Attributes:
        cells: Number of cells (``layers``).
        channels: Channels of the first cells (``C``).
        stem_multiplier: Stem channels are ``stem_multiplier * channels``.
        proj_hidden_dim: Hidden width of the projection head, ``None`` for a single linear layer.
        proj_dim: Output dimension of the projection.

    Raises:
        ValueError: One line naming the first field that is not an integer ``>= 1``.
    """

    cells: int = 5
    channels: int = 8
    stem_multiplier: int = 3
    proj_hidden_dim: int | None = 128
    proj_dim: int = 64

    def __post_init__(self) -> None:
        check_positive_ints(
            cells=self.cells,
            channels=self.channels,
            stem_multiplier=self.stem_multiplier,
            proj_dim=self.proj_dim,
        )
        if self.proj_hidden_dim is not None:
            check_positive_ints(proj_hidden_dim=self.proj_hidden_dim)


#: The reference code's proxy: 8 cells x 32 channels, one linear projection to 256.
REFERENCE_PROXY = ProxyConfig(cells=8, channels=32, proj_hidden_dim=None, proj_dim=256)
