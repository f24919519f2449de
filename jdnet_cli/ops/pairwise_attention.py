"""Pairwise self-attention op of SAN (Zhao et al. 2020) as used in JDNet's SAM block.

Two implementations of the same maths:

* ``pairwise_attention_reference``: the plain unfold formulation, kept as the yardstick that every
  fast path is tested against.
* ``pairwise_attention_fast``: never materialises the 49x neighbourhood tensors: a fused Triton
  kernel for CUDA inference (``attention_triton``), a fused C++ kernel for CPU inference
  (``cpu_kernels``), otherwise the memory-lean op with a hand-written backward
  (``attention_banded``): C++ training kernels on the CPU, Triton ones on CUDA, banded torch ops
  elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu_kernels
from .attention_banded import pairwise_attention_banded

KERNEL = 7


def position_planes(
    height: int,
    width: int,
    *,
    origin: tuple[int, int] = (0, 0),
    full_size: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Return the 1x2xHxW ``loc`` planes (x then y) of a window at ``origin`` in a full image.

    The step is 2/(W-1) of the *full* image so that a tile sees exactly what whole-image
    inference would (the attention's position term depends on image size).
    """
    full_h, full_w = full_size if full_size is not None else (height, width)
    oy, ox = origin

    def axis(n: int, full: int, start: int) -> torch.Tensor:
        if full == 1:
            return torch.full((n,), -1.0, dtype=torch.float64, device=device)
        idx = torch.arange(start, start + n, dtype=torch.float64, device=device)
        return -1.0 + 2.0 * idx / (full - 1)

    xs = axis(width, full_w, ox).to(dtype)
    ys = axis(height, full_h, oy).to(dtype)
    loc_x = xs.view(1, width).expand(height, width)
    loc_y = ys.view(height, 1).expand(height, width)
    return torch.stack([loc_x, loc_y]).unsqueeze(0)


def _unfold_neighbours(t: torch.Tensor, kernel: int = KERNEL) -> torch.Tensor:
    """N x C x H x W -> N x C x k*k x H x W with reflect padding (edge pixel not repeated)."""
    n, c, h, w = t.shape
    pad = kernel // 2
    padded = F.pad(t, (pad, pad, pad, pad), mode="reflect")
    cols = F.unfold(padded, kernel)  # N x C*k*k x H*W, neighbour index kh*k+kw
    return cols.view(n, c, kernel * kernel, h, w)


def pairwise_attention_reference(
    x1: torch.Tensor,
    x2: torch.Tensor,
    x3: torch.Tensor,
    p: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    slope: float = 0.2,
) -> torch.Tensor:
    """Plain unfold-based pairwise attention; the reference for tests.

    x1, x2: N x 2 x H x W; x3: N x C x H x W; p: 1 or N x 2 x H x W (conv_p output);
    w1: 2 x 4 (conv_w.1, no bias); w2: 1 x 2 and b2: 1 (conv_w.2).
    """
    n = x1.shape[0]
    p = p.expand(n, -1, -1, -1)
    rel_x = x1.unsqueeze(2) - _unfold_neighbours(x2)
    rel_p = p.unsqueeze(2) - _unfold_neighbours(p)
    rel = F.leaky_relu(torch.cat([rel_x, rel_p], 1), slope)  # N x 4 x 49 x H x W
    hidden = torch.einsum("oc,nckhw->nokhw", w1, rel)
    logits = torch.einsum("oc,nckhw->nokhw", w2, hidden) + b2.view(1, -1, 1, 1, 1)
    weights = torch.softmax(logits, dim=2)  # N x 1 x 49 x H x W: one map for all channels
    return (weights * _unfold_neighbours(x3)).sum(2)


def pairwise_attention_fast(
    x1: torch.Tensor,
    x2: torch.Tensor,
    x3: torch.Tensor,
    p: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    slope: float = 0.2,
) -> torch.Tensor:
    """Same result as the reference without the 49x tensors; accumulates in fp32 or better.

    Inference runs a fused kernel where there is one: Triton on CUDA when Triton is installed, the
    C++ kernel on the CPU in float32 when it could be built. Everything else (training, float64,
    no kernel) runs the banded torch op, which has its own memory-lean backward.
    """
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x1, x2, x3, p, w1, w2, b2))
    if cpu_kernels.cpu_kernels_usable(x1, x2, x3, p, w1, w2, b2):
        return cpu_kernels.pairwise_attention_cpu(x1, x2, x3, p, w1, w2, b2, slope)
    if x1.is_cuda and not needs_grad and x3.dtype != torch.float64:
        from .attention_triton import pairwise_attention_triton, triton_available

        if triton_available():
            return pairwise_attention_triton(x1, x2, x3, p, w1, w2, b2, slope)
    return pairwise_attention_banded(x1, x2, x3, p, w1, w2, b2, slope)
