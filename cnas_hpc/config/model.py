"""The ``model`` config group: the shape of the proxy network every candidate is built into."""

from __future__ import annotations

from cnas_hpc.config.build import Count, section


@section("model")
class ProxyConfig:
    """The ``model`` config group: shape of the proxy network (see :class:`ProxyNetwork`).

    Attributes:
        cells: Number of cells (``layers``).
        channels: Channels of the first cells (``C``).
        stem_multiplier: Stem channels are ``stem_multiplier * channels``.
        proj_hidden_dim: Hidden width of the projection head, ``None`` for a single linear layer.
        proj_dim: Output dimension of the projection.

    Raises:
        ConfigError: One line naming the first field that is not an integer ``>= 1``.
    """

    cells: Count = 5
    channels: Count = 8
    stem_multiplier: Count = 3
    proj_hidden_dim: Count | None = 128
    proj_dim: Count = 64


#: The reference code's proxy: 8 cells x 32 channels, one linear projection to 256.
REFERENCE_PROXY = ProxyConfig(cells=8, channels=32, proj_hidden_dim=None, proj_dim=256)
