"""Run a causal video VAE's 3D convolutions as 2D ones while it sees single frames (images).

A causal 3D convolution pads time with zeros in front, so on a one-frame input every temporal tap but the
last multiplies zeros: the result equals a 2D convolution with the last tap's kernel, at a third of the work
(for 3-tap kernels), and with gradients identical too (the other taps' inputs are zeros). PyTorch also sends
small-batch 3D convolutions on the CPU to a slow reference kernel, so the 2D form is many times faster there.
The patch is per module instance and undone on exit; inputs with several frames or a frame cache take the
original path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def _is_causal_conv(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Conv3d) and hasattr(module, "_padding")


def _two_d_forward(conv: torch.nn.Conv3d):
    original = conv.forward

    def forward(x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        if cache_x is not None or x.shape[2] != 1 or conv.stride[0] != 1 or conv.dilation[0] != 1:
            return original(x, cache_x)
        # _padding is F.pad's (left, right, top, bottom, front, back); the front padding is all zeros here.
        spatial = F.pad(x[:, :, 0], conv._padding[:4])
        out = F.conv2d(spatial, conv.weight[:, :, -1], conv.bias, stride=conv.stride[1:], dilation=conv.dilation[1:],
                       groups=conv.groups)
        return out.unsqueeze(2)

    return forward


@contextmanager
def single_frame_convs(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, the model's causal 3D convolutions run as 2D convolutions on one-frame inputs."""
    patched = [module for module in model.modules() if _is_causal_conv(module)]
    for module in patched:
        module.forward = _two_d_forward(module)
    try:
        yield model
    finally:
        for module in patched:
            del module.forward  # the instance attribute goes; the class's forward shows through again
