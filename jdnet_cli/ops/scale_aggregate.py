"""Scale aggregation: a map and its downscaled versions, combined by one 1x1 conv."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import cpu_kernels
from .backend import reference


def aggregate_scales(y: torch.Tensor, scales: list[torch.Tensor], conv: nn.Conv2d, slope: float) -> torch.Tensor:
    """LReLU(conv(cat(y, up(s_1), ..., up(s_k)))) + y for nearest upsampling ``up`` to y's size."""
    c = y.shape[1]
    # conv(cat(y, up(s_1..s_k))) == sum_j up(W_j * s_j): nearest upsampling commutes with a 1x1
    # conv, so each scale is projected at its own (smaller) size and no (k+1)x concat is built.
    smalls = [F.conv2d(s, conv.weight[:, j * c : (j + 1) * c]) for j, s in enumerate(scales, start=1)]
    if not reference() and c == cpu_kernels.FUSION_OUT and cpu_kernels.nhwc_kernels_usable(y, *smalls, params=(conv.weight,)):
        # The full-resolution projection runs inside the aggregation, row by row.
        return cpu_kernels.scale_aggregate_cpu(y, y, smalls, slope, weight=conv.weight[:, :c], bias=conv.bias)
    fused = F.conv2d(y, conv.weight[:, :c], conv.bias)
    if not reference() and cpu_kernels.nhwc_kernels_usable(fused, y, *smalls):
        return cpu_kernels.scale_aggregate_cpu(fused, y, smalls, slope)
    for small in smalls:
        fused = fused + F.interpolate(small, size=y.shape[-2:])
    return F.leaky_relu(fused, slope) + y
