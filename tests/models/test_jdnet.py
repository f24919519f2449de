"""The network: golden outputs of the authors' model, op equivalence, tiles' position term."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from jdnet_cli.models import ATTENTION_OPS, JDNet
from jdnet_cli.ops import pairwise_attention_fast, pairwise_attention_reference, position_planes

from ..conftest import shared_path


def golden():
    data = np.load(shared_path("reference", "golden_units3.npz"))
    state = {k[len("weights/"):]: torch.from_numpy(data[k]) for k in data.files if k.startswith("weights/")}
    return data, state


@pytest.mark.parametrize("op", ["reference", "fast"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_golden_float64(op, channels_last):
    data, state = golden()
    model = JDNet(32, 3).double().eval()
    model.load_state_dict(state, strict=True)
    model.set_attention_op(ATTENTION_OPS[op])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        for i in (1, 2):
            x = torch.from_numpy(data[f"input_{i}"])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            err = (model(x) - torch.from_numpy(data[f"output_{i}"])).abs().max().item()
            assert err <= 1e-6, (op, i, err)


def test_parameter_count_matches_reference():
    assert sum(p.numel() for p in JDNet().parameters()) == 4_681_859


def test_state_dict_names_match_authors():
    keys_file = shared_path("reference", "reference_state_dict_keys.txt")
    expected = {}
    for line in keys_file.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            expected[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    ours = {k: tuple(v.shape) for k, v in JDNet().state_dict().items()}
    assert ours == expected


@pytest.mark.parametrize("shape", [(1, 9, 13), (2, 16, 16), (1, 7, 31), (1, 4, 5)])
def test_fast_attention_matches_reference(shape):
    n, h, w = shape
    g = torch.Generator().manual_seed(h * 100 + w)
    x1, x2 = torch.randn(n, 2, h, w, generator=g), torch.randn(n, 2, h, w, generator=g)
    x3 = torch.randn(n, 8, h, w, generator=g)
    p = torch.randn(1, 2, h, w, generator=g)
    w1, w2, b2 = torch.randn(2, 4, generator=g), torch.randn(1, 2, generator=g), torch.randn(1, generator=g)
    ref = pairwise_attention_reference(x1, x2, x3, p, w1, w2, b2)
    fast = pairwise_attention_fast(x1, x2, x3, p, w1, w2, b2)
    assert (ref - fast).abs().max().item() <= 1e-4


def test_fast_attention_gradients_match_reference():
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(1, c, 9, 11, generator=g, dtype=torch.float64, requires_grad=True) for c in (2, 2, 8, 2)]
    params = [torch.randn(2, 4, generator=g, dtype=torch.float64), torch.randn(1, 2, generator=g, dtype=torch.float64), torch.randn(1, generator=g, dtype=torch.float64)]
    grads = []
    for op in (pairwise_attention_reference, pairwise_attention_fast):
        out = op(*args, *params)
        grads.append(torch.autograd.grad((out * out).sum(), args))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-9)


def test_position_planes_of_a_window_equal_the_full_planes():
    full = position_planes(20, 30, dtype=torch.float64)
    assert torch.allclose(full[0, 0, 0], torch.linspace(-1, 1, 30, dtype=torch.float64))
    assert torch.allclose(full[0, 1, :, 0], torch.linspace(-1, 1, 20, dtype=torch.float64))
    window = position_planes(8, 12, origin=(5, 16), full_size=(20, 30), dtype=torch.float64)
    assert torch.equal(window, full[:, :, 5:13, 16:28])


def test_full_32_unit_model_smoke():
    torch.manual_seed(0)
    model = JDNet().eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 19, 23).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    ref = JDNet().eval()
    ref.load_state_dict(model.state_dict())
    ref.set_attention_op(ATTENTION_OPS["reference"])
    with torch.inference_mode():
        assert (ref(x.contiguous()) - y).abs().max().item() < 1e-3
