"""The dense fusions' training products in bfloat16 with float32 sums, in C++ (``fusion_bf16.cpp``).

Used by ``dense_buffer`` when training asks for it (``backend.cpu_mixed_precision``) and the CPU has
AVX512-BF16: the feature buffer then holds bfloat16 rows, and a fusion's forward, its slots'
gradients and its weight gradient multiply bfloat16 operands into float32 sums. Everything else in
the step, and inference always, stays float32.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .native_build import load_native, native_status

SOURCE = Path(__file__).with_name("fusion_bf16.cpp")
OUT = 32  # the kernels' output width


def bf16_fusions_status() -> str:
    """Why the kernels are or are not in use."""
    return native_status(SOURCE.stem)


def bf16_fusions_usable() -> bool:
    """True once the kernels are built and loaded on a CPU with AVX512-BF16."""
    return load_native(SOURCE) and bool(torch.ops.jdnet_bf16.cpu_supported())


def pack_pairs(weight_t: torch.Tensor) -> torch.Tensor:
    """A k x 32 weight (inputs x outputs) as the kernel's (k / 2) x 32 x 2 bfloat16 pairs."""
    k = weight_t.shape[0]
    return weight_t.reshape(k // 2, 2, OUT).transpose(1, 2).to(torch.bfloat16).contiguous()


def fusion_bf16(
    segments: list[torch.Tensor], weight_t: torch.Tensor, bias: torch.Tensor, slope: float | None
) -> torch.Tensor:
    """P x 32 float32: bias + cat(segments, 1) @ weight_t, then LReLU(slope) unless slope is None.

    ``segments`` are bfloat16 rows (P x w, w even, rows may be strided); ``weight_t`` is k x 32.
    """
    activate = slope is not None
    return torch.ops.jdnet_bf16.fusion_forward(
        segments, pack_pairs(weight_t), bias.float().contiguous(), float(slope if activate else 1.0), activate
    )


def fusion_weight_grad_bf16(grad: torch.Tensor, segments: list[torch.Tensor]) -> torch.Tensor:
    """32 x k float32: grad^T @ cat(segments, 1), grad (P x 32 float32) rounded to bfloat16 first."""
    return torch.ops.jdnet_bf16.fusion_weight_grad(grad.contiguous(), segments)
