"""The edge operations of the DARTS cell space, behind a typed registry.

Every operation is built by a factory ``(C, stride, affine) -> nn.Module`` registered under its
DARTS name in :data:`OPS`; :func:`create_op` is the one entry point the cells use. A built op maps
``[B, C, H, W]`` to ``[B, C, ceil(H / stride), ceil(W / stride)]`` in the input's dtype and
device: channels never change on an edge, only the resolution (``stride`` 2 in reduction cells).

The eight DARTS primitives (``quark0/darts/cnn/operations.py``) are registered at import:

=================  =================================================================
``none``           :class:`Zero` (the zero op, subsampled at stride 2)
``max_pool_3x3``   3x3 max pooling, padding 1
``avg_pool_3x3``   3x3 average pooling, padding 1, ``count_include_pad=False``
``skip_connect``   :class:`Identity` at stride 1, :class:`FactorizedReduce` at stride 2
``sep_conv_3x3``   :class:`SepConv`: two stacked ReLU-depthwise-pointwise-BN blocks
``sep_conv_5x5``   the same with 5x5 depthwise kernels
``dil_conv_3x3``   :class:`DilConv`: ReLU-depthwise (dilation 2)-pointwise-BN
``dil_conv_5x5``   the same with a 5x5 kernel (receptive field 9x9)
=================  =================================================================

Modules here never pick a device: build on CPU, move with ``.to(device)``.
"""

# DARTS's channel names (C, C_in, C_prev_prev, ...) are part of the published API we keep.
# ruff: noqa: N803

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import torch
from torch import Tensor, nn

#: Builds one edge operation from ``(C, stride, affine)``; ``affine`` switches the BatchNorm
#: scale/shift parameters on (DARTS's search supernet runs with ``affine=False``).
OpFactory: TypeAlias = Callable[[int, int, bool], nn.Module]

#: Registry ``op name -> factory``. Add entries with :func:`register_op`, never by assignment,
#: so a name cannot be silently overwritten.
OPS: dict[str, OpFactory] = {}

_STRIDES = (1, 2)


def register_op(name: str) -> Callable[[OpFactory], OpFactory]:
    """Decorator that registers a factory in :data:`OPS` under ``name``.

    Args:
        name: The op's name, as genotypes spell it.

    Returns:
        A decorator that records the factory and returns it unchanged.

    Raises:
        ValueError: If ``name`` is empty or already registered.
    """
    if not name:
        raise ValueError("op name must be a non-empty string")
    if name in OPS:
        raise ValueError(f"op {name!r} is already registered")

    def decorator(factory: OpFactory) -> OpFactory:
        # Checked again at decoration time: two decorators may have been created before either ran.
        if name in OPS:
            raise ValueError(f"op {name!r} is already registered")
        OPS[name] = factory
        return factory

    return decorator


def create_op(name: str, C: int, stride: int, affine: bool = True) -> nn.Module:
    """Build the edge operation ``name`` for ``C`` channels.

    Args:
        name: A key of :data:`OPS`.
        C: Input and output channels, ``>= 1``.
        stride: 1 (same resolution) or 2 (halved, rounding up).
        affine: Whether BatchNorm layers learn a scale and shift.

    Returns:
        A fresh module mapping ``[B, C, H, W] -> [B, C, ceil(H/stride), ceil(W/stride)]``.

    Raises:
        ValueError: If ``name`` is unknown (the message lists the known ops), ``C < 1`` or
            ``stride`` is not 1 or 2.
    """
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}")
    if C < 1:
        raise ValueError(f"op {name!r} needs C >= 1 channels, got {C}")
    if stride not in _STRIDES:
        raise ValueError(f"op {name!r} needs stride 1 or 2, got {stride}")
    return OPS[name](C, stride, affine)


class Identity(nn.Module):
    """Returns its input unchanged (``skip_connect`` at stride 1); drop-path skips it."""

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x`` itself (no copy)."""
        return x


class Zero(nn.Module):
    """The ``none`` op: zeros shaped like the (subsampled) input, with no parameters.

    Args:
        stride: 1, or 2 to keep every second row and column (``[B, C, ceil(H/2), ceil(W/2)]``).
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Zeros of shape ``[B, C, ceil(H/stride), ceil(W/stride)]``, ``x``'s dtype and device."""
        if self.stride == 1:
            # Multiplying (rather than torch.zeros_like) keeps the op in the autograd graph.
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class ReLUConvBN(nn.Sequential):
    """ReLU, a dense convolution without bias, BatchNorm (DARTS's pre-activation block).

    Args:
        C_in: Input channels.
        C_out: Output channels.
        kernel_size: Square kernel size.
        stride: Convolution stride.
        padding: Zero padding on each side.
        affine: Whether the BatchNorm learns a scale and shift.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, a dilated depthwise convolution, a pointwise convolution, BatchNorm.

    Args:
        C_in: Input channels (the depthwise convolution keeps them).
        C_out: Output channels of the pointwise convolution.
        kernel_size: Depthwise kernel size.
        stride: Depthwise stride.
        padding: Depthwise zero padding (``dilation * (kernel_size - 1) // 2`` keeps the size).
        dilation: Depthwise dilation.
        affine: Whether the BatchNorm learns a scale and shift.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                C_in,
                C_in,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=C_in,
                bias=False,
            ),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked :class:`DilConv` blocks without dilation; only the first one strides.

    DARTS's separable convolution is applied twice, which is why ``sep_conv`` ops dominate the
    parameter and MAC counts of a cell.

    Args:
        C_in: Input channels.
        C_out: Output channels (the first block keeps ``C_in``).
        kernel_size: Depthwise kernel size.
        stride: Stride of the first depthwise convolution.
        padding: Depthwise zero padding (``kernel_size // 2`` keeps the size).
        affine: Whether the BatchNorm layers learn a scale and shift.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            DilConv(C_in, C_in, kernel_size, stride, padding, dilation=1, affine=affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, dilation=1, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing pixels: two 1x1 stride-2 convolutions, offset by one.

    One convolution samples the even rows/columns, the other the odd ones; their outputs are
    concatenated and batch-normalised. Unlike DARTS's version, odd input sizes work (the shifted
    branch is zero-padded at the bottom/right) and ``C_out`` may be odd.

    Args:
        C_in: Input channels.
        C_out: Output channels, split ``C_out // 2`` + ``C_out - C_out // 2`` between the branches.
        affine: Whether the BatchNorm learns a scale and shift.

    Raises:
        ValueError: If ``C_out < 2`` (each branch needs a channel).
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        if C_out < 2:
            raise ValueError(f"FactorizedReduce needs C_out >= 2, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``[B, C_in, H, W]`` to ``[B, C_out, ceil(H/2), ceil(W/2)]``."""
        x = self.relu(x)
        # Pad-then-shift equals DARTS's x[:, :, 1:, 1:] for even sizes and keeps both branches
        # the same size for odd ones.
        shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def drop_path(x: Tensor, drop_prob: float) -> Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the survivors.

    The caller decides when to apply it (training mode only); this function always draws a mask.
    Not in-place, so it is safe on any op's output.

    Args:
        x: ``[B, ...]`` floating tensor.
        drop_prob: Probability, in ``[0, 1)``, of zeroing one sample's whole tensor.

    Returns:
        ``x * mask / (1 - drop_prob)`` with one Bernoulli(``1 - drop_prob``) draw per sample;
        ``x`` itself when ``drop_prob == 0``.

    Raises:
        ValueError: If ``drop_prob`` is outside ``[0, 1)``.
    """
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
    if drop_prob == 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * mask / keep_prob


@register_op("none")
def _none(C: int, stride: int, affine: bool) -> nn.Module:
    return Zero(stride)


@register_op("max_pool_3x3")
def _max_pool_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.MaxPool2d(3, stride=stride, padding=1)


@register_op("avg_pool_3x3")
def _avg_pool_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


@register_op("skip_connect")
def _skip_connect(C: int, stride: int, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)


@register_op("sep_conv_3x3")
def _sep_conv_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(C, C, 3, stride, 1, affine=affine)


@register_op("sep_conv_5x5")
def _sep_conv_5x5(C: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(C, C, 5, stride, 2, affine=affine)


@register_op("dil_conv_3x3")
def _dil_conv_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return DilConv(C, C, 3, stride, 2, 2, affine=affine)


@register_op("dil_conv_5x5")
def _dil_conv_5x5(C: int, stride: int, affine: bool) -> nn.Module:
    return DilConv(C, C, 5, stride, 4, 2, affine=affine)
