"""The scale aggregation's training path against the reference (per-scale upsampling)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from jdnet_cli import ops


def _pyramid(h: int, w: int, levels: int, generator: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    y = torch.randn(2, 4, h, w, generator=generator, dtype=torch.float64, requires_grad=True)
    scales, s = [], y
    for _ in range(levels):
        s = F.avg_pool2d(s, 2, ceil_mode=True, count_include_pad=False) * 1.5  # ceil: the stride-2 convs' sizes
        scales.append(s)
    return y, scales


@pytest.mark.parametrize("size", [(16, 24), (13, 10), (16, 12)])
def test_training_aggregation_matches_the_reference_on_exact_and_odd_sizes(size):
    # Three levels: 16x24 -> 8x12, 4x6, 2x3 halves exactly (the chained sum); 13x10 -> 7x5, 4x3,
    # 2x2 and 16x12 -> 8x6, 4x3, 2x2 do not (per-scale upsampling). float64, so the sums' order
    # is the only difference.
    g = torch.Generator().manual_seed(5)
    conv = nn.Conv2d(4 * 4, 4, 1).double()
    y, scales = _pyramid(*size, 3, g)
    results = []
    for name in ("auto", "reference"):
        with ops.backend(name):
            out = ops.aggregate_scales(y, scales, conv, 0.2)
        grads = torch.autograd.grad(out.square().sum(), [y, conv.weight, conv.bias], retain_graph=True)
        results.append((out.detach(), grads))
    (out_a, grads_a), (out_b, grads_b) = results
    assert (out_a - out_b).abs().max().item() <= 1e-12
    for a, b in zip(grads_a, grads_b):
        assert (a - b).abs().max().item() <= 1e-10


def test_chained_upsampling_is_used_only_where_every_scale_halves_exactly(monkeypatch):
    from jdnet_cli.ops import scale_aggregate

    sizes = []
    real = F.interpolate
    monkeypatch.setattr(scale_aggregate.F, "interpolate", lambda t, size: sizes.append(tuple(size)) or real(t, size=size))
    g = torch.Generator().manual_seed(6)
    conv = nn.Conv2d(4 * 4, 4, 1).double()
    y, scales = _pyramid(16, 24, 3, g)
    ops.aggregate_scales(y, scales, conv, 0.2)
    assert sizes == [(4, 6), (8, 12), (16, 24)]  # 2x3 -> 4x6 -> 8x12 -> full size once
    sizes.clear()
    y, scales = _pyramid(13, 10, 3, g)  # 7x5, 4x3, 2x2: not exact halves
    ops.aggregate_scales(y, scales, conv, 0.2)
    assert sizes == [(13, 10)] * 3
