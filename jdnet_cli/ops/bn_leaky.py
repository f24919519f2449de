"""BatchNorm followed by LeakyReLU."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import cpu_kernels
from .backend import reference


def batchnorm_leaky(x: torch.Tensor, bn: nn.BatchNorm2d, slope: float) -> torch.Tensor:
    """LReLU(bn(x)); one pass of the C++ kernel for an eval-mode BatchNorm on a channels-last map."""
    if not reference() and not bn.training and cpu_kernels.nhwc_kernels_usable(x, params=(bn.running_mean, bn.weight)):
        return cpu_kernels.batchnorm_leaky_cpu(x, bn, slope)
    return F.leaky_relu(bn(x), slope)
