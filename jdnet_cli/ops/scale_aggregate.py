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
    if not reference() and _halves_exactly(y, scales):
        # Each scale is exactly half the one before, so nearest upsampling by 2 twice is
        # upsampling by 4 (floor(floor(i/2)/2) == floor(i/4)): the projections are summed from the
        # smallest up, and only one map of full size is upsampled and added instead of k.
        acc = smalls[-1]
        for small in reversed(smalls[:-1]):
            acc = small + F.interpolate(acc, size=small.shape[-2:])
        smalls = [acc]
    for small in smalls:
        fused = fused + F.interpolate(small, size=y.shape[-2:])
    return F.leaky_relu(fused, slope) + y


def _halves_exactly(y: torch.Tensor, scales: list[torch.Tensor]) -> bool:
    sizes = [tuple(y.shape[-2:])] + [tuple(s.shape[-2:]) for s in scales]
    return all(big[0] == 2 * small[0] and big[1] == 2 * small[1] for big, small in zip(sizes, sizes[1:]))
