"""The SAM block's attention ops: the pairwise attention alone, and with the block's BatchNorms.

Which attention op a SAM module runs is its ``op`` attribute (``JDNet.set_attention_op``):
``ATTENTION_OPS["fast"]`` lets the ops pick a fused kernel; any other op is run as given, so
that "reference" means the unfold op. The reference back end (``backend("reference")``) runs the
unfold op whatever the module holds.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import cpu_kernels
from .backend import reference
from .bn_leaky import batchnorm_leaky
from .pairwise_attention import pairwise_attention_fast, pairwise_attention_reference
from .sam_training import sam_attention_training, sam_training_usable

AttentionOp = Callable[..., torch.Tensor]
ATTENTION_OPS: dict[str, AttentionOp] = {
    "reference": pairwise_attention_reference,
    "fast": pairwise_attention_fast,
}


def pairwise_self_attention(
    x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor, p: torch.Tensor,
    w1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, slope: float, op: AttentionOp = pairwise_attention_fast,
) -> torch.Tensor:
    """SAN pairwise attention (arguments as ``pairwise_attention_reference``) computed by ``op``."""
    if reference():
        op = pairwise_attention_reference
    return op(x1, x2, x3, p, w1, w2, b2, slope)


def sam_attention(
    x: torch.Tensor, loc: torch.Tensor, bn_in: nn.BatchNorm2d, sam: nn.Module, bn_out: nn.BatchNorm2d, slope: float
) -> torch.Tensor:
    """LReLU(bn_out(sam(LReLU(bn_in(x)), loc))) for a ``PairwiseSelfAttention`` module ``sam``."""
    if (
        not reference() and not (bn_in.training or bn_out.training)
        and sam.op is pairwise_attention_fast  # the fused kernel computes the fast op only
        and x.shape[1] == cpu_kernels.FUSION_OUT
        and cpu_kernels.sam_attention_usable(x, sam.conv3.out_channels)
        and cpu_kernels.nhwc_kernels_usable(x, params=(bn_in.running_mean, bn_out.running_mean, sam.conv1.weight))
    ):
        # Channels-last already, with both BatchNorms and activations applied.
        return cpu_kernels.sam_attention_cpu(
            x, bn_in, [sam.conv1, sam.conv2, sam.conv3], sam.conv_p(loc.to(x.dtype)),
            sam.conv_w[1].weight.flatten(1), sam.conv_w[2].weight.flatten(1), bn_out, slope,
        )
    if (
        not reference() and bn_in.training and torch.is_grad_enabled() and sam.op is pairwise_attention_fast
        and sam_training_usable(x, bn_in, sam.conv3.out_channels)
    ):
        # Training on the CPU: BatchNorm, LReLU, projections and attention as one autograd Function.
        return F.leaky_relu(bn_out(sam_attention_training(x, loc, bn_in, sam, slope)), slope)
    return F.leaky_relu(bn_out(sam(batchnorm_leaky(x, bn_in, slope), loc)), slope)
