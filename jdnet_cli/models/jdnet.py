"""JDNet (Wang et al., ACM MM 2020): joint self-attention, scale aggregation, self-calibrated convs.

Network only: each block calls one function of ``jdnet_cli.ops`` per operation, and the op picks
its back end. Module attribute names follow the authors' released ``ODE_DerainNet`` so that their
checkpoints load as they are; the classes are named after what each block is.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import ops

SLOPE = 0.2
NUM_SCALES = 4
AttentionOp = ops.AttentionOp


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
        self.op: AttentionOp = ops.ATTENTION_OPS["fast"]

    def forward(self, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        p = self.conv_p(loc.to(x.dtype))
        return ops.pairwise_self_attention(
            self.conv1(x),
            self.conv2(x),
            self.conv3(x),
            p,
            self.conv_w[1].weight.flatten(1),
            self.conv_w[2].weight.flatten(1),
            self.conv_w[2].bias,
            SLOPE,
            op=self.op,
        )


class SelfAttentionBottleneck(nn.Module):
    """y = conv1x1(LReLU(BN(SAM(LReLU(BN(x)))))) + x."""

    def __init__(self, channels: int, attn_planes: int = 8):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.sam = PairwiseSelfAttention(channels, out_planes=attn_planes)
        self.bn2 = nn.BatchNorm2d(attn_planes)
        self.conv = nn.Conv2d(attn_planes, channels, 1)

    def forward(self, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        h = ops.sam_attention(x, loc, self.bn1, self.sam, self.bn2, SLOPE)
        return ops.conv1x1_residual(h, self.conv, x)


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
        return self.k4(ops.self_calibration(x, context, features))


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

    def forward(self, z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out``: where to write the result (e.g. a slot of the dense feature buffer)."""
        a_in, b_in = ops.conv1x1_pair_leaky(z, self.conv1_a, self.conv1_b, SLOPE)
        return ops.conv1x1_concat_residual_leaky([self.k1(a_in), self.scconv(b_in)], self.conv3, z, SLOPE, out)


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
        with ops.low_precision_region(y):
            scales = []
            s = y
            for block in self.res_list:
                s = block(s)
                scales.append(s)
            return self.scn(ops.aggregate_scales(y, scales, self.conv11[0], SLOPE), out)


class DenseJointUnits(nn.Module):
    """Joint units with dense connections: unit i's input is a 1x1 fusion of all earlier outputs."""

    def __init__(self, channels: int, num_units: int):
        super().__init__()
        self.units = nn.ModuleList(JointUnit(channels) for _ in range(num_units))
        self.conv1x1 = nn.ModuleList(
            nn.Sequential(nn.Conv2d((i + 2) * channels, channels, 1), _lrelu()) for i in range(num_units)
        )

    def forward(self, f0: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        return ops.dense_units(self.units, self.conv1x1, f0, loc)


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
        loc = ops.position_planes(h, w, origin=origin, full_size=full_size, dtype=x.dtype, device=x.device)
        rain = self.exitBlock(self.derain_net(self.enterBlock(x), loc))
        return x - rain

    def set_attention_op(self, op: AttentionOp) -> "JDNet":
        """Switch every SAM block to ``op`` (the reference op for tests, a fast op for inference)."""
        for module in self.modules():
            if isinstance(module, PairwiseSelfAttention):
                module.op = op
        return self


ATTENTION_OPS = ops.ATTENTION_OPS
