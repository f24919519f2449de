"""Helpers for the ops tests."""
from __future__ import annotations

import torch


def attention_inputs(n, h, w, c=8, dtype=torch.float32, seed=0, channels_last=False, grad=False) -> list[torch.Tensor]:
    """The seven arguments of the pairwise attention ops (x1, x2, x3, p, w1, w2, b2), seeded."""
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(n, k, h, w, generator=g, dtype=dtype) for k in (2, 2, c)]
    maps.append(torch.randn(1, 2, h, w, generator=g, dtype=dtype))
    if channels_last:
        maps = [t.contiguous(memory_format=torch.channels_last) for t in maps]
    params = [torch.randn(*s, generator=g, dtype=dtype) for s in ((2, 4), (1, 2), (1,))]
    return [t.requires_grad_(grad) for t in maps + params]
