"""Model size and cost, counted the way NAS papers report them.

- :func:`count_parameters`: trainable-or-not parameters, with the auxiliary head left out by
  default (DARTS reports "3.3 M" for DARTS_V2 without it).
- :func:`count_macs`: multiply-accumulates of one forward pass for one image, counted on
  ``Conv2d`` and ``Linear`` layers only. BatchNorm, activations, pooling, additions and
  concatenations are ignored, as in DARTS-era tables; biases are not counted either. With this
  convention, DARTS_V2 at 20 cells x 36 channels costs about 528 M MACs per 32x32 image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


def count_parameters(model: nn.Module, *, exclude: Sequence[str] = ("auxiliary",)) -> int:
    """Number of scalar parameters of ``model``, each shared tensor counted once.

    Args:
        model: Any module.
        exclude: A parameter is left out when one of these strings occurs in its qualified name
            (DARTS's substring rule, so ``"auxiliary"`` drops ``auxiliary_head.*``).

    Returns:
        The count.
    """
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not any(pattern in name for pattern in exclude)
    )


def count_macs(model: nn.Module, input_shape: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Multiply-accumulates of one eval-mode forward pass for a single image.

    Counted with forward hooks: a ``Conv2d`` costs ``output elements * in_channels / groups *
    kernel_h * kernel_w`` (so depthwise, dilated and strided convolutions are right: dilation
    does not change the work per output, stride shows in the output size), a ``Linear`` costs
    ``output elements * in_features``. Everything else is free (see the module docstring). Layers
    not run in eval mode (``NetworkCIFAR``'s auxiliary head) are not counted; dead cell nodes are
    never built, so they cost nothing either.

    The pass runs under ``torch.no_grad()`` on a zero image of batch size 1, on the device and
    in the floating dtype of the model's first parameter (CPU / float32 without parameters).
    Every submodule's ``training`` flag is restored afterwards and the hooks are removed, even if
    the forward raises; BatchNorm running statistics are untouched (eval mode).

    Args:
        model: A module whose ``forward`` takes one ``[1, *input_shape]`` tensor.
        input_shape: ``(channels, height, width)`` of one image.

    Returns:
        MACs per image.

    Raises:
        ValueError: If ``input_shape`` is not three positive integers.
    """
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape must be (channels, height, width) >= 1, got {input_shape}")
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32

    total = 0

    def conv_hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        per_output = (module.in_channels // module.groups) * kh * kw
        total += output.numel() // output.shape[0] * per_output

    def linear_hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += output.numel() // output.shape[0] * module.in_features

    modes = {m: m.training for m in model.modules()}
    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    return total
