"""1x1 convolutions with their residual and activation, over inputs that may be channel segments."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import cpu_kernels
from .backend import reference


def conv1x1_residual(h: torch.Tensor, conv: nn.Conv2d, skip: torch.Tensor) -> torch.Tensor:
    """conv(h) + skip for a 1x1 conv."""
    if (
        not reference() and conv.out_channels == cpu_kernels.FUSION_OUT
        and cpu_kernels.nhwc_kernels_usable(skip, params=(h, conv.weight, conv.bias))
    ):
        # The plain attention output is planar; the kernel reads pixel rows (no copy if NHWC).
        h = h.contiguous(memory_format=torch.channels_last)
        out = torch.empty_like(skip, memory_format=torch.channels_last)
        return cpu_kernels.fuse_segments_cpu([h], conv.weight, conv.bias, skip, out, activate=False, slope=0.0)
    return conv(h) + skip


def conv1x1_pair_leaky(
    z: torch.Tensor, conv_a: nn.Conv2d, conv_b: nn.Conv2d, slope: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(LReLU(conv_a(z)), LReLU(conv_b(z))) for two 1x1 convs of the same input."""
    if (
        not reference() and conv_a.out_channels == conv_b.out_channels == cpu_kernels.FUSION_OUT // 2
        and cpu_kernels.nhwc_kernels_usable(z, params=(conv_a.weight, conv_b.weight))
    ):
        # Both outputs from one pass over z.
        a = torch.empty_like(z[:, : conv_a.out_channels], memory_format=torch.channels_last)
        b = torch.empty_like(z[:, : conv_b.out_channels], memory_format=torch.channels_last)
        cpu_kernels.fuse_segments_cpu(
            [z], torch.cat([conv_a.weight, conv_b.weight]), torch.cat([conv_a.bias, conv_b.bias]),
            None, a, activate=True, slope=slope, out_high=b,
        )
        return a, b
    return F.leaky_relu(conv_a(z), slope), F.leaky_relu(conv_b(z), slope)


def conv1x1_concat_residual_leaky(
    segments: list[torch.Tensor], conv: nn.Conv2d, skip: torch.Tensor, slope: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """LReLU(conv(cat(segments)) + skip), written into ``out`` when given (e.g. a slot of the dense buffer)."""
    if (
        not reference() and out is not None and cpu_kernels.is_nhwc_slot(out)
        and conv.out_channels == cpu_kernels.FUSION_OUT
        and cpu_kernels.nhwc_kernels_usable(*segments, skip, params=(out, conv.weight, conv.bias))
    ):
        return cpu_kernels.fuse_segments_cpu(segments, conv.weight, conv.bias, skip, out, activate=True, slope=slope)
    result = F.leaky_relu(conv(torch.cat(segments, 1)) + skip, slope)
    return result if out is None else out.copy_(result)
