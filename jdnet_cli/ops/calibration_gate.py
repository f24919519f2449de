"""The SC-conv's gate: full-resolution features gated by the upsampled context."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu_kernels
from .backend import reference


def self_calibration(x: torch.Tensor, context: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """features * sigmoid(x + nearest-upsampled context)."""
    if not reference() and cpu_kernels.nhwc_kernels_usable(x, context, features):
        return cpu_kernels.calibration_gate_cpu(x, context, features)
    return features * torch.sigmoid(x + F.interpolate(context, size=x.shape[-2:]))
