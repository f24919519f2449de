"""Fused float32 kernels for CPU inference, written in C++ (``cpu_kernels.cpp``).

* ``pairwise_attention_cpu``: the SAM attention in one pass per strip of 64 pixels, with the 49
  logits in a stack array (same maths as the reference op).
* ``dense_fusion_cpu``: a dense connection's 1x1 fusion plus its LReLU, reading the feature
  buffer's channel prefix in place.

Forward only: callers check ``cpu_kernels_usable`` and otherwise use plain torch ops (training,
other dtypes, or no compiler). Compiled on first use, see ``jdnet_cli.native_build``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..native_build import load_native, native_status
from .attention_banded import _prepare

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
FUSION_OUT = 32  # the register block of dense_fusion holds exactly this many output channels


def cpu_kernels_status() -> str:
    """Why the kernels are or are not in use, for benchmark and debug output."""
    return native_status(SOURCE.stem)


def cpu_kernels_usable(*tensors: torch.Tensor) -> bool:
    """True for float32 CPU tensors that need no gradient, once the kernels are built and loaded."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return load_native(SOURCE)


def pairwise_attention_cpu(x1, x2, x3, p, w1, w2, b2, slope: float = 0.2) -> torch.Tensor:
    """Fused attention forward; same arguments and result as the reference op."""
    centre, neighbours, values = _prepare(x1, x2, x3, p, torch.float32)
    # The two 1x1 layers on the relation collapse to one 4-vector (no activation between them).
    v = (w2.view(2, 1).double() * w1.double()).sum(0).tolist()
    return torch.ops.jdnet.pairwise_attention(centre, neighbours, values, v, float(slope))


def dense_fusion_cpu(rows: torch.Tensor, k: int, weight: torch.Tensor, bias: torch.Tensor, slope: float) -> torch.Tensor:
    """LReLU(bias + rows[:, :k] @ weight.view(32, k).T) as a P x 32 tensor; rows may be strided."""
    weight_t = weight.reshape(FUSION_OUT, k).t().contiguous()
    return torch.ops.jdnet.dense_fusion(rows, k, weight_t, bias.contiguous(), float(slope))
