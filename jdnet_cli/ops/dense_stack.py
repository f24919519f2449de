"""The dense connections: unit i's input is a 1x1 fusion of the stack input and all earlier outputs.

``units[i](current, loc, out=...)`` computes unit i (writing into ``out`` when given) and
``fusions[i]`` is its fusion, ``nn.Sequential(conv1x1, LeakyReLU)``. Training runs through the
feature buffer of ``dense_buffer`` (``dense_forward``); inference writes every unit into one
reused buffer, or into slot pairs read by the C++ fusion kernel; the reference back end builds
the growing concatenation.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from . import cpu_kernels
from .backend import reference
from .dense_buffer import dense_forward, reusable_feature_buffer, reusable_slot_groups
from .layout import memory_format_of


def dense_units(units: Sequence[nn.Module], fusions: Sequence[nn.Sequential], f0: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """The last fusion's output, LReLU(fusions[-1](cat(f0, unit_0, ..., unit_{n-1})))."""
    if reference():
        return _by_concatenation(units, fusions, f0, loc)
    if torch.is_grad_enabled() and f0.requires_grad:
        if not torch.is_autocast_enabled(f0.device.type):
            return dense_forward(units, fusions, f0, loc)
        # Under autocast the fusion convs pick their own dtypes; the plain concatenation keeps that.
        return _by_concatenation(units, fusions, f0, loc)
    n, c, h, w = f0.shape
    fusion = fusions[0][0]
    if (
        memory_format_of(f0) is torch.channels_last and c == fusion.out_channels == cpu_kernels.FUSION_OUT
        and cpu_kernels.cpu_kernels_usable(f0, fusion.weight)
    ):
        return _slot_groups_forward(units, fusions, f0, loc)
    # One preallocated buffer instead of a growing list: each unit writes its channel slice and
    # each fusion conv reads the contiguous prefix, so no unit re-copies the features before it.
    slots = c * (len(units) + 1)
    if f0.device.type == "cpu" and memory_format_of(f0) is torch.channels_last:
        feats = reusable_feature_buffer(n, slots, h, w, f0)
    else:
        feats = torch.empty((n, slots, h, w), dtype=f0.dtype, device=f0.device, memory_format=memory_format_of(f0))
    feats[:, :c] = f0
    current = f0
    for i, (unit, fuse) in enumerate(zip(units, fusions)):
        unit(current, loc, out=feats[:, (i + 1) * c : (i + 2) * c])
        current = _fuse_prefix(fuse, feats, (i + 2) * c)
    return current


def _by_concatenation(units, fusions, f0: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    feats = current = f0
    for unit, fuse in zip(units, fusions):
        feats = torch.cat([feats, unit(current, loc)], 1)
        current = fuse(feats)
    return current


def _slot_groups_forward(units, fusions, f0: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    # Slots in pairs rather than one wide buffer: the fusion kernel then reads each pair's rows
    # front to back (see SlotGroups).
    n, c, h, w = f0.shape
    store = reusable_slot_groups(n, len(units) + 1, c, h, w, f0)
    store.slot(0).copy_(f0)
    current = f0
    for i, (unit, fuse) in enumerate(zip(units, fusions)):
        unit(current, loc, out=store.slot(i + 1))
        conv, act = fuse[0], fuse[1]
        rows = cpu_kernels.dense_fusion_cpu(store.prefix(i + 2), conv.weight, conv.bias, act.negative_slope)
        current = rows.view(n, h, w, c).permute(0, 3, 1, 2)
    return current


def _fuse_prefix(fuse: nn.Sequential, feats: torch.Tensor, k: int) -> torch.Tensor:
    """LReLU(conv1x1(feats[:, :k])) without copying the channel prefix out of the buffer."""
    conv, act = fuse[0], fuse[1]
    if memory_format_of(feats) is torch.channels_last:
        # A channels-last prefix is strided; a conv would copy it, a GEMM reads it in place.
        n, c, h, w = feats.shape
        rows = feats.permute(0, 2, 3, 1).reshape(n * h * w, c)
        out = act(torch.addmm(conv.bias, rows[:, :k], conv.weight.view(conv.out_channels, k).t()))
        return out.view(n, h, w, -1).permute(0, 3, 1, 2)
    return act(conv(feats[:, :k]))
