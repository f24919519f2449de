"""The SAM attention's training kernels on the CPU: forward and fused backward in C++.

``attention_training.cpp`` computes what ``attention_banded.attention_forward`` and
``attention_backward`` compute (same inputs, same outputs), in one pass per image row instead of
dozens of torch ops per band; float32 and float64 (so ``gradcheck`` runs on the C++ backward
itself). ``attention_banded.PairwiseAttentionFunction`` uses these when ``training_kernels_usable``
and the banded torch ops otherwise (CUDA, no compiler, ``JDNET_NATIVE=0``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .native_build import load_native, native_status

SOURCE = Path(__file__).with_name("attention_training.cpp")


def training_kernels_status() -> str:
    """Why the training kernels are or are not in use."""
    return native_status(SOURCE.stem)


def training_kernels_usable(*tensors: torch.Tensor) -> bool:
    """True for float32 or float64 CPU tensors, once the kernels are built and loaded."""
    if any(t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) for t in tensors):
        return False
    return load_native(SOURCE)


def attention_forward_cpu(centre, neighbours, values, v: list[float], slope: float):
    """(out, softmax max, softmax sum) from the padded planes; see ``attention_banded.attention_forward``."""
    out, smax, ssum = torch.ops.jdnet_train.attention_forward(centre, neighbours, values, v, float(slope))
    return out, smax, ssum


def attention_backward_cpu(grad, centre, neighbours, values, v: list[float], slope: float, out, smax, ssum):
    """Gradients of (centre, padded neighbours, padded values, v) given dL/d(out)."""
    g_centre, g_neighbours, g_values, g_v = torch.ops.jdnet_train.attention_backward(
        grad, centre, neighbours, values, v, float(slope), out, smax, ssum
    )
    return g_centre, g_neighbours, g_values, g_v
