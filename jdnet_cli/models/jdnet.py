"""JDNet (Wang et al., ACM MM 2020): joint self-attention, scale aggregation, self-calibrated convs.

Network only. Module attribute names follow the authors' released ``ODE_DerainNet`` so that their
checkpoints load as they are; the classes are named after what each block is.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cpu_kernels import (
    FUSION_OUT,
    batchnorm_leaky_cpu,
    calibration_gate_cpu,
    cpu_kernels_usable,
    dense_fusion_cpu,
    fuse_segments_cpu,
    is_nhwc_slot,
    nhwc_kernels_usable,
    sam_attention_cpu,
    sam_attention_usable,
    scale_aggregate_cpu,
)
from .dense_buffer import dense_forward, reusable_feature_buffer, reusable_slot_groups
from .pairwise_attention import pairwise_attention_fast, pairwise_attention_reference, position_planes

SLOPE = 0.2
NUM_SCALES = 4
AttentionOp = Callable[..., torch.Tensor]


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(SLOPE)


class PairwiseSelfAttention(nn.Module):
    """SAN's pairwise attention, kernel 7, share 8: one 7x7 weight map serves all 8 channels."""

    def __init__(self, channels: int, rel_planes: int = 2, out_planes: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, rel_planes, 1)
        self.conv2 = nn.Conv2d(channels, rel_planes, 1)
        self.conv3 = nn.Conv2d(channels, out_planes, 1)
        self.conv_w = nn.Sequential(
            _lrelu(),
            nn.Conv2d(rel_planes + 2, rel_planes, 1, bias=False),
            nn.Conv2d(rel_planes, 1, 1),
        )
        self.conv_p = nn.Conv2d(2, 2, 1)
        self.op: AttentionOp = pairwise_attention_fast

    def forward(self, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        p = self.conv_p(loc.to(x.dtype))
        return self.op(
            self.conv1(x),
            self.conv2(x),
            self.conv3(x),
            p,
            self.conv_w[1].weight.flatten(1),
            self.conv_w[2].weight.flatten(1),
            self.conv_w[2].bias,
            SLOPE,
        )


class SelfAttentionBottleneck(nn.Module):
    """y = conv1x1(LReLU(BN(SAM(LReLU(BN(x)))))) + x."""

    def __init__(self, channels: int, attn_planes: int = 8):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.sam = PairwiseSelfAttention(channels, out_planes=attn_planes)
        self.bn2 = nn.BatchNorm2d(attn_planes)
        self.conv = nn.Conv2d(attn_planes, channels, 1)
        self.act = _lrelu()

    def forward(self, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        sam = self.sam
        if (
            not self.training
            and sam.op is pairwise_attention_fast  # a test's reference op runs as given
            and self.conv.out_channels == FUSION_OUT
            and sam_attention_usable(x, sam.conv3.out_channels)
            and nhwc_kernels_usable(x, params=(self.bn1.running_mean, self.conv.weight, sam.conv1.weight))
        ):
            # Channels-last already, with both BatchNorms and activations applied.
            h = sam_attention_cpu(
                x, self.bn1, [sam.conv1, sam.conv2, sam.conv3], sam.conv_p(loc.to(x.dtype)),
                sam.conv_w[1].weight.flatten(1), sam.conv_w[2].weight.flatten(1), self.bn2, SLOPE,
            )
        else:
            if not self.bn1.training and nhwc_kernels_usable(x, params=(self.bn1.running_mean, self.bn1.weight)):
                pre = batchnorm_leaky_cpu(x, self.bn1, SLOPE)
            else:
                pre = self.act(self.bn1(x))
            h = self.act(self.bn2(self.sam(pre, loc)))
        if self.conv.out_channels == FUSION_OUT and nhwc_kernels_usable(x, params=(h, self.conv.weight, self.conv.bias)):
            # The plain attention output is planar; the kernel reads pixel rows (no copy if NHWC).
            h = h.contiguous(memory_format=torch.channels_last)
            out = torch.empty_like(x, memory_format=torch.channels_last)
            return fuse_segments_cpu([h], self.conv.weight, self.conv.bias, x, out, activate=False, slope=SLOPE)
        return self.conv(h) + x


class StridedResBlock(nn.Module):
    """Halves the resolution: c = LReLU(conv3x3/2(x)); out = c + conv3x3(LReLU(conv3x3(c)))."""

    def __init__(self, channels: int):
        super().__init__()
        self.convert = nn.Sequential(nn.Conv2d(channels, channels, 3, 2, 1), _lrelu())
        self.res = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1), _lrelu(), nn.Conv2d(channels, channels, 3, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convert(x)
        return c + self.res(c)


class SelfCalibratedConv(nn.Module):
    """SC-conv: a 4x-downsampled context branch gates the full-resolution features."""

    def __init__(self, channels: int, pool: int = 4):
        super().__init__()
        self.k2 = nn.Sequential(nn.AvgPool2d(pool, pool), nn.Conv2d(channels, channels, 3, 1, 1))
        self.k3 = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1))
        self.k4 = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), _lrelu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.k2(x)
        features = self.k3(x)
        if nhwc_kernels_usable(x, context, features):
            gated = calibration_gate_cpu(x, context, features)
        else:
            gated = features * torch.sigmoid(x + F.interpolate(context, size=x.shape[-2:]))
        return self.k4(gated)


class SelfCalibratedBottleneck(nn.Module):
    """Split into a plain 3x3 branch and an SC-conv branch, fuse with 1x1, add the input."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1_a = nn.Conv2d(channels, half, 1)
        self.k1 = nn.Sequential(nn.Conv2d(half, half, 3, 1, 1), _lrelu())
        self.conv1_b = nn.Conv2d(channels, half, 1)
        self.scconv = SelfCalibratedConv(half)
        self.conv3 = nn.Conv2d(channels, channels, 1)
        self.act = _lrelu()

    def forward(self, z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out``: where to write the result (e.g. a slot of the dense feature buffer)."""
        if self.conv1_a.out_channels == self.conv1_b.out_channels == FUSION_OUT // 2 and nhwc_kernels_usable(
            z, params=(self.conv1_a.weight, self.conv1_b.weight)
        ):
            # Both branch inputs (with their activation) from one pass over z.
            a_in = torch.empty_like(z[:, : self.conv1_a.out_channels], memory_format=torch.channels_last)
            b_in = torch.empty_like(z[:, : self.conv1_b.out_channels], memory_format=torch.channels_last)
            fuse_segments_cpu(
                [z], torch.cat([self.conv1_a.weight, self.conv1_b.weight]), torch.cat([self.conv1_a.bias, self.conv1_b.bias]),
                None, a_in, activate=True, slope=SLOPE, out_high=b_in,
            )
        else:
            a_in, b_in = self.act(self.conv1_a(z)), self.act(self.conv1_b(z))
        a = self.k1(a_in)
        b = self.scconv(b_in)
        if (
            out is not None
            and is_nhwc_slot(out)
            and self.conv3.out_channels == FUSION_OUT
            and nhwc_kernels_usable(a, b, z, params=(out, self.conv3.weight, self.conv3.bias))
        ):
            return fuse_segments_cpu([a, b], self.conv3.weight, self.conv3.bias, z, out, activate=True, slope=SLOPE)
        result = self.act(self.conv3(torch.cat([a, b], 1)) + z)
        return result if out is None else out.copy_(result)


class JointUnit(nn.Module):
    """Self-attention, then scale aggregation over a 4-level stride-2 pyramid, then SC bottleneck."""

    def __init__(self, channels: int):
        super().__init__()
        self.san = SelfAttentionBottleneck(channels)
        self.res_list = nn.ModuleList(StridedResBlock(channels) for _ in range(NUM_SCALES))
        self.conv11 = nn.Sequential(nn.Conv2d(channels * (NUM_SCALES + 1), channels, 1), _lrelu())
        self.scn = SelfCalibratedBottleneck(channels)

    def forward(self, x: torch.Tensor, loc: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out``: where to write the result (e.g. a slot of the dense feature buffer)."""
        y = self.san(x, loc)
        size = y.shape[-2:]
        conv = self.conv11[0]
        c = y.shape[1]
        # conv11(cat(y, up(s1..s4))) == sum_j up(W_j * s_j): nearest upsampling commutes with a
        # 1x1 conv, so each scale is projected at its own (smaller) size and no 5x concat is built.
        smalls = []
        s = y
        for j, block in enumerate(self.res_list, start=1):
            s = block(s)
            smalls.append(F.conv2d(s, conv.weight[:, j * c : (j + 1) * c]))
        if c == FUSION_OUT and nhwc_kernels_usable(y, *smalls, params=(conv.weight,)):
            # The full-resolution projection runs inside the aggregation, row by row.
            return self.scn(scale_aggregate_cpu(y, y, smalls, SLOPE, weight=conv.weight[:, :c], bias=conv.bias), out)
        fused = F.conv2d(y, conv.weight[:, :c], conv.bias)
        if nhwc_kernels_usable(fused, y, *smalls):
            return self.scn(scale_aggregate_cpu(fused, y, smalls, SLOPE), out)
        for small in smalls:
            fused = fused + F.interpolate(small, size=size)
        return self.scn(self.conv11[1](fused) + y, out)


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _fuse_prefix(fuse: nn.Sequential, feats: torch.Tensor, k: int) -> torch.Tensor:
    """LReLU(conv1x1(feats[:, :k])) without copying the channel prefix out of the buffer."""
    conv, act = fuse[0], fuse[1]
    if _memory_format(feats) is torch.channels_last:
        # A channels-last prefix is strided; a conv would copy it, a GEMM reads it in place.
        n, c, h, w = feats.shape
        rows = feats.permute(0, 2, 3, 1).reshape(n * h * w, c)
        out = act(torch.addmm(conv.bias, rows[:, :k], conv.weight.view(conv.out_channels, k).t()))
        return out.view(n, h, w, -1).permute(0, 3, 1, 2)
    return act(conv(feats[:, :k]))


class DenseJointUnits(nn.Module):
    """Joint units with dense connections: unit i's input is a 1x1 fusion of all earlier outputs."""

    def __init__(self, channels: int, num_units: int):
        super().__init__()
        self.units = nn.ModuleList(JointUnit(channels) for _ in range(num_units))
        self.conv1x1 = nn.ModuleList(
            nn.Sequential(nn.Conv2d((i + 2) * channels, channels, 1), _lrelu()) for i in range(num_units)
        )

    def forward(self, f0: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and f0.requires_grad:
            return self._forward_autograd(f0, loc)
        n, c, h, w = f0.shape
        fusion = self.conv1x1[0][0]
        if (
            _memory_format(f0) is torch.channels_last and c == fusion.out_channels == FUSION_OUT
            and cpu_kernels_usable(f0, fusion.weight)
        ):
            return self._forward_cpu_kernels(f0, loc)
        # One preallocated buffer instead of a growing list: each unit writes its channel slice and
        # each fusion conv reads the contiguous prefix, so no unit re-copies the features before it.
        slots = c * (len(self.units) + 1)
        if f0.device.type == "cpu" and _memory_format(f0) is torch.channels_last:
            feats = reusable_feature_buffer(n, slots, h, w, f0)
        else:
            feats = torch.empty((n, slots, h, w), dtype=f0.dtype, device=f0.device, memory_format=_memory_format(f0))
        feats[:, :c] = f0
        current = f0
        for i, (unit, fuse) in enumerate(zip(self.units, self.conv1x1)):
            unit(current, loc, out=feats[:, (i + 1) * c : (i + 2) * c])
            current = _fuse_prefix(fuse, feats, (i + 2) * c)
        return current

    def _forward_cpu_kernels(self, f0: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        # Slots in pairs rather than one wide buffer: the fusion kernel then reads each pair's rows
        # front to back (see SlotGroups).
        n, c, h, w = f0.shape
        store = reusable_slot_groups(n, len(self.units) + 1, c, h, w, f0)
        store.slot(0).copy_(f0)
        current = f0
        for i, (unit, fuse) in enumerate(zip(self.units, self.conv1x1)):
            unit(current, loc, out=store.slot(i + 1))
            conv, act = fuse[0], fuse[1]
            rows = dense_fusion_cpu(store.prefix(i + 2), conv.weight, conv.bias, act.negative_slope)
            current = rows.view(n, h, w, c).permute(0, 3, 1, 2)
        return current

    def _forward_autograd(self, f0: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(f0.device.type):
            return dense_forward(self.units, self.conv1x1, f0, loc)
        # Under autocast the fusion convs pick their own dtypes; the plain concatenation keeps that.
        feats = f0
        current = f0
        for unit, fuse in zip(self.units, self.conv1x1):
            feats = torch.cat([feats, unit(current, loc)], 1)
            current = fuse(feats)
        return current


class JDNet(nn.Module):
    """Predicts the rain layer R and returns x - R. Input and output: N x 3 x H x W RGB in [0, 1]."""

    def __init__(self, channels: int = 32, num_units: int = 32):
        super().__init__()
        self.channels = channels
        self.num_units = num_units
        self.enterBlock = nn.Sequential(nn.Conv2d(3, channels, 3, 1, 1), _lrelu())
        self.derain_net = DenseJointUnits(channels, num_units)
        self.exitBlock = nn.Sequential(nn.Conv2d(channels, 3, 3, 1, 1), _lrelu())

    def forward(
        self,
        x: torch.Tensor,
        origin: tuple[int, int] = (0, 0),
        full_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Derain ``x``; for a tile, ``origin``/``full_size`` place it in the whole image."""
        h, w = x.shape[-2:]
        loc = position_planes(h, w, origin=origin, full_size=full_size, dtype=x.dtype, device=x.device)
        rain = self.exitBlock(self.derain_net(self.enterBlock(x), loc))
        return x - rain

    def set_attention_op(self, op: AttentionOp) -> "JDNet":
        """Switch every SAM block to ``op`` (the reference op for tests, a fast op for inference)."""
        for module in self.modules():
            if isinstance(module, PairwiseSelfAttention):
                module.op = op
        return self


ATTENTION_OPS: dict[str, AttentionOp] = {
    "reference": pairwise_attention_reference,
    "fast": pairwise_attention_fast,
}
