"""The memory-lean pairwise attention (forward and hand-written backward) against the unfold reference.

Every test runs on both kernel sets behind its autograd Function: the banded torch ops and the
C++ training kernels (``attention_training.cpp``).
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from .conftest import attention_inputs
from jdnet_cli.ops import attention_banded
from jdnet_cli.ops.attention_banded import pairwise_attention_banded
from jdnet_cli.ops.attention_cpu_training import training_kernels_status, training_kernels_usable
from jdnet_cli.ops.pairwise_attention import pairwise_attention_reference


@pytest.fixture(autouse=True, params=["torch", "cpp"])
def kernels(request, monkeypatch):
    """Which kernels the Function runs; the C++ set must build here (CI has a compiler)."""
    if request.param == "torch":
        monkeypatch.setattr(attention_banded, "training_kernels_usable", lambda *planes: False)
        yield request.param
        return
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler")
    assert training_kernels_usable(torch.zeros(1)), training_kernels_status()
    calls = []
    real = attention_banded.attention_forward_cpu
    monkeypatch.setattr(attention_banded, "attention_forward_cpu", lambda *a: calls.append(1) or real(*a))
    yield request.param
    assert calls, "the C++ forward was never called"


@pytest.mark.parametrize("band_pixels", [2048, 23])
@pytest.mark.parametrize("shape", [(1, 9, 13), (2, 16, 16), (1, 7, 31), (1, 4, 5), (3, 11, 6)])
def test_banded_forward_matches_reference(shape, band_pixels, monkeypatch):
    # 23 pixels per band forces one-row bands, so band seams and the last partial band are hit.
    monkeypatch.setattr(attention_banded, "BAND_PIXELS", band_pixels)
    args = attention_inputs(*shape, seed=sum(shape), channels_last=shape[0] == 2)
    with torch.no_grad():
        err = (pairwise_attention_banded(*args) - pairwise_attention_reference(*args)).abs().max().item()
    assert err <= 1e-4


def test_banded_keeps_dtype_and_accumulates_bf16_in_fp32():
    args = attention_inputs(1, 8, 9)
    low = [t.bfloat16() for t in args[:4]] + args[4:]
    with torch.no_grad():
        out = pairwise_attention_banded(*low)
        ref = pairwise_attention_reference(*[t.float() for t in low[:4]], *args[4:])
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max().item() <= 0.05


def test_banded_backward_passes_gradcheck(monkeypatch):
    # Two bands of two rows over a batch of two; fast mode checks random projections of the
    # Jacobian, which keeps this to seconds (the full Jacobian is compared below, vs autograd).
    monkeypatch.setattr(attention_banded, "BAND_PIXELS", 20)
    monkeypatch.setattr(attention_banded, "BACKWARD_BAND_PIXELS", 20)
    args = attention_inputs(2, 4, 5, c=2, dtype=torch.float64, seed=3, grad=True)
    assert torch.autograd.gradcheck(lambda *t: pairwise_attention_banded(*t, 0.2), args, fast_mode=True)


def test_banded_gradients_equal_autograd_of_reference(monkeypatch):
    monkeypatch.setattr(attention_banded, "BACKWARD_BAND_PIXELS", 70)  # three bands of 3, 3, 3 rows
    args = attention_inputs(2, 9, 11, dtype=torch.float64, seed=5, grad=True)
    grads = []
    for op in (pairwise_attention_reference, pairwise_attention_banded):
        out = op(*args)
        grads.append(torch.autograd.grad((out * out.detach().cos()).sum(), args, allow_unused=True))
    for name, ref, ours in zip(("x1", "x2", "x3", "p", "w1", "w2", "b2"), *grads):
        ref = torch.zeros_like(ours) if ref is None else ref
        assert (ref - ours).abs().max().item() <= 1e-9, name


def test_banded_output_and_gradients_keep_the_channels_last_layout_of_their_inputs():
    # An NCHW output or a strided gradient next to channels-last convs costs oneDNN a reorder per call.
    args = attention_inputs(2, 9, 11, seed=7, channels_last=True, grad=True)
    out = pairwise_attention_banded(*args)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    out.backward(torch.randn_like(out))
    for t in args[:3]:
        assert t.grad.is_contiguous(memory_format=torch.channels_last) and not t.grad.is_contiguous()
    planar = attention_inputs(2, 9, 11, seed=7, grad=True)
    out = pairwise_attention_banded(*planar)
    out.backward(torch.randn_like(out))
    assert out.is_contiguous() and all(t.grad.is_contiguous() for t in planar[:3])


def test_backward_passes_full_gradcheck_on_odd_sizes_and_a_batch_of_three():
    # The whole Jacobian (not random projections): 3 images of 5x7 reach every border case of
    # the reflect padding (a 7x7 window is wider than the image) and the scatter across images.
    args = attention_inputs(3, 5, 7, c=3, dtype=torch.float64, seed=11, grad=True)
    assert torch.autograd.gradcheck(lambda *t: pairwise_attention_banded(*t, 0.2), args, fast_mode=False)


def test_gradients_do_not_depend_on_the_thread_count():
    args = attention_inputs(4, 9, 10, seed=13, grad=True)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = pairwise_attention_banded(*args)
            results.append([out, *torch.autograd.grad((out * out.detach().sin()).sum(), args[:4])])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_the_function_runs_the_banded_torch_ops_off_the_cpu(kernels):
    # CUDA training has no C++ kernels: a non-CPU plane (meta here) must select the torch ops.
    planes = tuple(torch.empty(1, 4, 5, 5, device="meta") for _ in range(3))
    forward, backward = attention_banded._kernels(planes)
    assert (forward, backward) == (attention_banded.attention_forward, attention_banded.attention_backward)
    cpu = tuple(torch.zeros(1, 4, 5, 5) for _ in range(3))
    want = (attention_banded.attention_forward_cpu, attention_banded.attention_backward_cpu) if kernels == "cpp" else (forward, backward)
    assert attention_banded._kernels(cpu) == want
    pairwise_attention_banded(*attention_inputs(1, 5, 6))
