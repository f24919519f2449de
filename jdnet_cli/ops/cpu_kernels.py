"""Fused float32 kernels for CPU inference, written in C++ (``cpu_kernels.cpp``).

* ``pairwise_attention_cpu``: the SAM attention in one pass per strip of 64 pixels, with the 49
  logits in a stack array (same maths as the reference op).
* ``dense_fusion_cpu``: a dense connection's 1x1 fusion plus its LReLU, reading the feature
  buffer's channel prefix in place (as row segments: the buffer's slot groups).
* ``dense_fusion_backward_cpu``: training's backward of that fusion (input gradients written or
  added into the gradient buffer's segments, and the weight gradient) in one pass per panel; or
  the weight gradient alone, when no gradient segments are given.
* ``fuse_segments_cpu``: the same 32-wide product over inputs given as separate channel segments
  (a concatenation never built), with a residual, written into a given output such as a slot of
  the feature buffer.
* ``batchnorm_leaky_cpu``: eval-mode BatchNorm + LReLU in one pass.
* ``sam_attention_cpu``: the SAM block from its input to the activation after its attention:
  BatchNorm + LReLU + the three 1x1 projections + padding in one pass (planar planes for the
  attention kernel), then the attention with BatchNorm + LReLU applied as it writes channels-last.
* ``scale_aggregate_cpu``, ``calibration_gate_cpu``: nearest-upsample-and-combine steps of the
  scale aggregation and the SC-conv in one pass over channels-last maps (``nhwc_kernels_usable``).

All but ``dense_fusion_backward_cpu`` are forward only: the ops of this package check
``cpu_kernels_usable`` and otherwise use plain torch ops (training, other dtypes, or no
compiler). Compiled on first use, see ``native_build``.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from .attention_banded import padded_planes
from .native_build import load_native, native_status

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
FUSION_OUT = 32  # the register block of dense_fusion holds exactly this many output channels


def cpu_kernels_status() -> str:
    """Why the kernels are or are not in use, for benchmark and debug output."""
    return native_status(SOURCE.stem)


def prepare_cpu_kernels() -> bool:
    """Build (first run on this machine) or load the kernels now; whether they can be used."""
    return load_native(SOURCE)


def cpu_kernels_usable(*tensors: torch.Tensor) -> bool:
    """True for float32 CPU tensors that need no gradient, once the kernels are built and loaded."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return load_native(SOURCE)


def pairwise_attention_cpu(x1, x2, x3, p, w1, w2, b2, slope: float = 0.2) -> torch.Tensor:
    """Fused attention forward; same arguments and result as the reference op."""
    centre, neighbours, values = padded_planes(x1, x2, x3, p, torch.float32)
    # The two 1x1 layers on the relation collapse to one 4-vector (no activation between them).
    v = (w2.view(2, 1).double() * w1.double()).sum(0).tolist()
    return torch.ops.jdnet.pairwise_attention(centre, neighbours, values, v, float(slope))


def dense_fusion_cpu(segments: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor, slope: float) -> torch.Tensor:
    """LReLU(bias + cat(segments, 1) @ weight.view(32, k).T) as a P x 32 tensor; segments may be strided rows."""
    k = sum(t.shape[1] for t in segments)
    weight_t = weight.reshape(FUSION_OUT, k).t().contiguous()
    return torch.ops.jdnet.dense_fusion(segments, weight_t, bias.contiguous(), float(slope))


def dense_fusion_backward_cpu(
    grad: torch.Tensor, weight: torch.Tensor, segments: list[torch.Tensor], grad_segments: list[torch.Tensor],
    overwrite: list[bool],
) -> torch.Tensor:
    """Backward of ``dense_fusion_cpu`` given dL/d(pre-activation) ``grad`` (P x 32): returns dW
    and writes (``overwrite``) or adds each segment's input gradient into ``grad_segments`` (none
    given: dW only)."""
    k = sum(t.shape[1] for t in segments)
    # Packed as (k / 16) blocks of 32 x 16, the layout the kernel's register block reads.
    packed = weight.reshape(FUSION_OUT, k // 16, 16).transpose(0, 1).contiguous()
    g_weight_t = torch.ops.jdnet.dense_fusion_backward(
        grad.contiguous(), packed, segments, grad_segments, [int(o) for o in overwrite]
    )
    return g_weight_t.t().reshape(weight.shape)


def _rows(t: torch.Tensor, *, view: bool = False) -> torch.Tensor:
    """P x C rows of a channels-last N x C x H x W map (or of a channel slice of one)."""
    n, c, h, w = t.shape
    t = t.permute(0, 2, 3, 1)
    # An output must be a view (a reshape that copied would take the writes); .view raises instead.
    return t.view(n * h * w, c) if view else t.reshape(n * h * w, c)


def fuse_segments_cpu(
    segments: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor, skip: torch.Tensor | None,
    out: torch.Tensor, activate: bool, slope: float, out_high: torch.Tensor | None = None,
) -> torch.Tensor:
    """out <- [LReLU](bias + conv1x1(cat(segments)) + skip) for channels-last maps; returns out.

    ``out`` may be a channel slice of a wider channels-last buffer (its rows are then strided).
    With ``out_high``, output channels 0-15 go to ``out`` and 16-31 to ``out_high``.
    """
    weight_t = weight.reshape(FUSION_OUT, -1).t().contiguous()
    torch.ops.jdnet.fuse_segments(
        [_rows(s) for s in segments], weight_t, bias.contiguous(), None if skip is None else _rows(skip),
        _rows(out, view=True), activate, float(slope), None if out_high is None else _rows(out_high, view=True),
    )
    return out


def is_nhwc_slot(t: torch.Tensor) -> bool:
    """True for a channels-last map or a channel slice of one (what ``fuse_segments_cpu`` can write)."""
    n, c, h, w = t.shape
    return t.stride(1) == 1 and (h == 1 or t.stride(2) == w * t.stride(3))


def nhwc_kernels_usable(*maps: torch.Tensor, params: tuple[torch.Tensor, ...] = ()) -> bool:
    """``cpu_kernels_usable`` for kernels on channels-last maps whose channels are a multiple of 8."""
    if not all(m.dim() == 4 and m.shape[1] % 8 == 0 and m.is_contiguous(memory_format=torch.channels_last) for m in maps):
        return False
    return cpu_kernels_usable(*maps, *params)


@functools.lru_cache(maxsize=512)
def nearest_index(in_size: int, out_size: int) -> torch.Tensor:
    """Source row (or column) of each output row for F.interpolate's default nearest mode.

    Read off F.interpolate itself rather than re-derived, so the kernels follow PyTorch's
    float rounding exactly. Shared by callers: never modify the result.
    """
    src = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
    return F.interpolate(src, size=(out_size, 1)).view(out_size).to(torch.int64)


def scale_aggregate_cpu(
    base: torch.Tensor, skip: torch.Tensor, smalls: list[torch.Tensor], slope: float,
    weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """LReLU(base + sum of nearest-upsampled ``smalls``) + skip, all channels-last float32.

    With ``weight`` (32 x 32 x 1 x 1) and ``bias``, ``base`` is replaced by conv1x1(base) first.
    """
    h, w = base.shape[-2:]
    rows = [nearest_index(s.shape[-2], h) for s in smalls]
    cols = [nearest_index(s.shape[-1], w) for s in smalls]
    if weight is None:
        return torch.ops.jdnet.scale_aggregate(base, skip, smalls, rows, cols, float(slope))
    weight_t = weight.reshape(FUSION_OUT, -1).t().contiguous()
    return torch.ops.jdnet.scale_aggregate(base, skip, smalls, rows, cols, float(slope), weight_t, bias.contiguous())


def calibration_gate_cpu(x: torch.Tensor, context: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """features * sigmoid(x + nearest-upsampled context), all channels-last float32."""
    h, w = x.shape[-2:]
    rows, cols = nearest_index(context.shape[-2], h), nearest_index(context.shape[-1], w)
    return torch.ops.jdnet.calibration_gate(x, context, rows, cols, features)


def batchnorm_affine(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(x) == x * scale + shift per channel, for an eval-mode BatchNorm2d."""
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.float().contiguous(), shift.float().contiguous()


def batchnorm_leaky_cpu(x: torch.Tensor, bn: torch.nn.BatchNorm2d, slope: float) -> torch.Tensor:
    """LReLU(bn(x)) for an eval-mode BatchNorm2d (running statistics) on a channels-last map."""
    return torch.ops.jdnet.affine_leaky(x, *batchnorm_affine(bn), float(slope))


ATTENTION_PROJECTION = 16  # attention_inputs' projection width: 2 + 2 + value channels, zero-padded


def sam_attention_usable(x: torch.Tensor, value_channels: int) -> bool:
    """Whether ``sam_attention_cpu`` can take this channels-last map (reflect padding needs > 3 px)."""
    return (
        x.dim() == 4 and x.shape[1] <= 256 and 4 + value_channels <= ATTENTION_PROJECTION
        and min(x.shape[-2:]) > 3
    )


def attention_planes_cpu(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    p: torch.Tensor, slope: float,
) -> list[torch.Tensor]:
    """The attention's (centre, padded neighbours, padded values) planes of a channels-last float32 ``x``.

    ``weight`` (rows: 2 centre, 2 neighbour, then value projections; C_in columns) and ``bias``
    project a = LReLU(x * scale + shift) per channel; ``p`` are the position planes.
    """
    c_in, outs = x.shape[1], weight.shape[0]
    weight_t = x.new_zeros(c_in, ATTENTION_PROJECTION)
    weight_t[:, :outs] = weight.t()
    bias_pad = x.new_zeros(ATTENTION_PROJECTION)
    bias_pad[:outs] = bias
    return torch.ops.jdnet.attention_inputs(
        x, scale.contiguous(), shift.contiguous(), weight_t, bias_pad, outs - 4, p.float().contiguous(), float(slope)
    )


def sam_attention_cpu(
    x: torch.Tensor, bn_in: torch.nn.BatchNorm2d, projections: list[torch.nn.Conv2d], p: torch.Tensor,
    w1: torch.Tensor, w2: torch.Tensor, bn_out: torch.nn.BatchNorm2d, slope: float,
) -> torch.Tensor:
    """LReLU(bn_out(attention(conv1(a), conv2(a), conv3(a), p))) with a = LReLU(bn_in(x)), channels-last.

    ``projections`` are conv1, conv2, conv3 (2, 2 and C outputs); ``p`` the position planes.
    """
    c_in = x.shape[1]
    weight = torch.cat([conv.weight.reshape(conv.out_channels, c_in) for conv in projections])
    bias = torch.cat([conv.bias for conv in projections])
    centre, neighbours, values = attention_planes_cpu(x, *batchnorm_affine(bn_in), weight, bias, p, slope)
    v = (w2.view(2, 1).double() * w1.double()).sum(0).tolist()
    return torch.ops.jdnet.pairwise_attention_bn_leaky(centre, neighbours, values, v, float(slope), *batchnorm_affine(bn_out))
