"""The SAM block's attention in training on the CPU: BatchNorm, LReLU, projections and attention as one Function.

With autograd over plain ops this stage ran a dozen ops per block and direction: BatchNorm in
training mode, LReLU, three 1x1 convs of 2, 2 and 8 outputs (oneDNN calls whose cost is mostly
overhead at these widths), the gradients of their shared input summed twice, the planes
concatenated and reflect-padded, and the attention. ``SamAttentionFunction`` does the forward in
one pass of the inference kernel ``attention_inputs`` (fed the batch's statistics instead of the
running ones) plus the attention's C++ kernel, and the backward in the attention's C++ backward
plus ``projection_backward`` (``attention_training.cpp``), which recomputes the normalised input
instead of storing it. float64 (for gradcheck) builds the planes with torch ops and runs the same
C++ backward.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import cpu_kernels
from .attention_banded import PAD, plane_input_gradients, padded_planes, relation_weight_gradients
from .attention_cpu_training import training_kernels_usable


def sam_training_usable(x: torch.Tensor, bn: nn.BatchNorm2d, value_channels: int) -> bool:
    """Whether ``sam_attention_training`` can take ``x``: a float32/64 CPU map, BatchNorm with affine and batch stats."""
    return (
        x.dim() == 4 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
        and x.shape[1] % 8 == 0 and x.shape[1] <= 256 and 1 <= value_channels <= 8
        and min(x.shape[-2:]) > PAD and x.shape[0] * x.shape[2] * x.shape[3] > 1
        and type(bn) is nn.BatchNorm2d and bn.training and bn.affine  # (a SyncBatchNorm's statistics span processes)
        and training_kernels_usable(x)
        and (x.dtype == torch.float64 or cpu_kernels.prepare_cpu_kernels())
    )


def _update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """What nn.BatchNorm2d does to its buffers in a training forward."""
    if not bn.track_running_stats or bn.running_mean is None:
        return
    bn.num_batches_tracked.add_(1)
    factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
    bn.running_var.mul_(1 - factor).add_((var * count / (count - 1)).to(bn.running_var.dtype), alpha=factor)


def _planes_float64(x, mean, invstd, gamma, beta, weight, bias, p, slope, values):
    """The attention planes with torch ops (float64, where the float32 kernel does not apply)."""
    xhat = (x - mean.view(1, -1, 1, 1)) * invstd.view(1, -1, 1, 1)
    h = F.leaky_relu(xhat * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1), slope)
    proj = F.conv2d(h, weight.view(*weight.shape, 1, 1), bias)
    return padded_planes(proj[:, :2], proj[:, 2:4], proj[:, 4 : 4 + values], p, x.dtype)


class SamAttentionFunction(torch.autograd.Function):
    """attention(proj(LReLU(BN_batch(x)))) with BN's batch statistics; grads for x, BN affine, projections, p, v."""

    @staticmethod
    def forward(ctx, x, gamma, beta, weight, bias, p, w1, w2, b2, eps, slope, bn):
        n, _, hgt, wid = x.shape
        values = weight.shape[0] - 4
        x = x.contiguous(memory_format=torch.channels_last)
        mean, var = torch.ops.jdnet_train.channel_mean_var(x)
        invstd = (var + eps).rsqrt()
        if bn is not None:
            _update_running_stats(bn, mean, var, n * hgt * wid)
        if x.dtype == torch.float32:
            scale = gamma * invstd
            centre, neighbours, vals = cpu_kernels.attention_planes_cpu(x, scale, beta - mean * scale, weight, bias, p, slope)
        else:
            centre, neighbours, vals = _planes_float64(x, mean, invstd, gamma, beta, weight, bias, p, slope, values)
        v = (w2.view(2, 1) * w1).sum(0)
        out, smax, ssum = torch.ops.jdnet_train.attention_forward(centre, neighbours, vals, v.tolist(), float(slope))
        ctx.slope = slope
        ctx.p_batch = p.shape[0]
        ctx.save_for_backward(x, mean, invstd, gamma, beta, weight, w1, w2, b2, v, centre, neighbours, vals, out, smax, ssum)
        return out.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad):
        x, mean, invstd, gamma, beta, weight, w1, w2, b2, v, centre, neighbours, vals, out, smax, ssum = ctx.saved_tensors
        g_x1, g_x2, g_x3, g_p, g_v = plane_input_gradients(*torch.ops.jdnet_train.attention_backward(
            grad.to(out.dtype).contiguous(), centre, neighbours, vals, v.tolist(), float(ctx.slope), out, smax, ssum
        ))
        if ctx.p_batch != g_p.shape[0]:
            g_p = g_p.sum(0, keepdim=True)
        dx, g_weight, g_bias, g_gamma, g_beta = torch.ops.jdnet_train.projection_backward(
            x, mean, invstd, gamma, beta, weight, g_x1.contiguous(), g_x2.contiguous(), g_x3, float(ctx.slope),
        )
        g_w1, g_w2 = relation_weight_gradients(g_v, w1, w2)
        # Softmax is shift-invariant, so the logits' bias has zero gradient.
        return dx, g_gamma, g_beta, g_weight, g_bias, g_p, g_w1, g_w2, torch.zeros_like(b2), None, None, None


def sam_attention_training(x: torch.Tensor, loc: torch.Tensor, bn: nn.BatchNorm2d, sam: nn.Module, slope: float) -> torch.Tensor:
    """sam(LReLU(bn(x)), loc) for a training-mode ``bn`` and a ``PairwiseSelfAttention`` ``sam``, channels-last out."""
    weight = torch.cat([conv.weight.flatten(1) for conv in (sam.conv1, sam.conv2, sam.conv3)])
    bias = torch.cat([sam.conv1.bias, sam.conv2.bias, sam.conv3.bias])
    p = sam.conv_p(loc.to(x.dtype))
    return SamAttentionFunction.apply(
        x, bn.weight, bn.bias, weight, bias, p, sam.conv_w[1].weight.flatten(1), sam.conv_w[2].weight.flatten(1),
        sam.conv_w[2].bias, bn.eps, slope, bn,
    )
