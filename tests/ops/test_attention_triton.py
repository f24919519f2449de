"""The Triton attention kernel in interpreter mode (skipped where Triton is not installed)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import attention_inputs
from jdnet_cli.ops.pairwise_attention import pairwise_attention_reference

from ..conftest import make_tiny_model


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")

# Triton fixes its mode when torch first imports it, so the interpreter works only in a process that
# had TRITON_INTERPRET=1 from the start: tests/conftest.py sets it where there is no CUDA. Where there
# is CUDA the same process runs Triton's compiled GPU kernels, so these tests run in a child process.
INTERPRETER_FROM_START = os.environ.get("TRITON_INTERPRET") == "1"


@needs_triton
@pytest.mark.skipif(INTERPRETER_FROM_START, reason="the interpreter tests run in this process")
def test_interpreter_tests_pass_in_a_child_process():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-k", "not child_process", __file__],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    # Every interpreter test ran there: none skipped, so a missing interpreter cannot pass as green.
    assert " passed" in res.stdout and "skipped" not in res.stdout, res.stdout[-3000:]


@pytest.fixture
def triton_interpreter(monkeypatch):
    if not INTERPRETER_FROM_START:
        pytest.skip("TRITON_INTERPRET was not set when torch started: run by test_interpreter_tests_pass_in_a_child_process")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from jdnet_cli.ops import attention_triton

    attention_triton.triton_available.cache_clear()
    attention_triton._kernel.cache_clear()
    assert attention_triton.triton_available()
    yield attention_triton
    attention_triton._kernel.cache_clear()
    attention_triton.triton_available.cache_clear()


@needs_triton
def test_triton_kernel_in_interpreter_matches_reference(triton_interpreter):
    # Interpreted Triton is slow: one odd-sized NCHW map, one channels-last batch of two.
    for args in (attention_inputs(1, 9, 13, seed=1), attention_inputs(2, 5, 6, seed=2, channels_last=True)):
        out = triton_interpreter.pairwise_attention_triton(*args)
        assert out.is_contiguous(memory_format=torch.channels_last) == args[2].is_contiguous(memory_format=torch.channels_last)
        assert (out - pairwise_attention_reference(*args)).abs().max().item() <= 1e-4


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_kernel_in_interpreter_takes_half_precision_inputs(triton_interpreter, dtype):
    # What autocast hands the kernel on CUDA: the output keeps the dtype and, with fp32 arithmetic
    # inside, stays within one unit of that dtype's precision of the fp32 result on the same inputs.
    args = [t.to(dtype) for t in attention_inputs(1, 9, 13, seed=3)]
    out = triton_interpreter.pairwise_attention_triton(*args)
    ref = pairwise_attention_reference(*[t.float() for t in args])
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max().item() <= torch.finfo(dtype).eps * max(1.0, ref.abs().max().item())


@needs_triton
def test_model_with_triton_attention_in_interpreter_matches_reference(triton_interpreter):
    model = make_tiny_model(channels=8, units=2)
    x = torch.rand(1, 3, 11, 14, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = model.set_attention_op(pairwise_attention_reference)(x)
        out = model.set_attention_op(triton_interpreter.pairwise_attention_triton)(x)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.fixture
def triton_training(triton_interpreter):
    from jdnet_cli.ops import attention_triton_training

    return attention_triton_training


@needs_triton
@pytest.mark.parametrize("n, h, w, c", [(2, 9, 13, 8), (1, 5, 4, 3), (3, 4, 11, 8)])
def test_triton_training_kernels_in_interpreter_match_the_banded_ops(triton_training, n, h, w, c):
    # Odd sizes, a batch, the smallest map reflect padding allows and a channel count below the
    # power of two the kernels round up to; the banded ops are checked against autograd of the
    # unfold reference in test_attention_banded.
    from jdnet_cli.ops.attention_banded import attention_backward, attention_forward, padded_planes

    x1, x2, x3, p, w1, w2, _ = attention_inputs(n, h, w, c=c, seed=n + h + w)
    v = (w2.view(2, 1) * w1).sum(0).tolist()
    planes = padded_planes(x1, x2, x3, p, torch.float32)
    want = attention_forward(*planes, v, 0.2)
    got = triton_training.attention_forward_triton(*planes, v, 0.2)
    for a, b in zip(got, want):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())
    grad = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(7))
    want = attention_backward(grad, *planes, v, 0.2, *want)
    got = triton_training.attention_backward_triton(grad, *planes, v, 0.2, *got)
    for a, b in zip(got, want):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


@needs_triton
def test_attention_function_on_triton_kernels_gives_the_reference_gradients(triton_training, monkeypatch):
    # The whole autograd Function (padding, reflection backward, p's batch-1 broadcast, the 1x1
    # weights' gradients) with the Triton pair swapped in for the CPU tensors of the interpreter.
    from jdnet_cli.ops import attention_banded

    pair = (triton_training.attention_forward_triton, triton_training.attention_backward_triton)
    monkeypatch.setattr(attention_banded, "_kernels", lambda planes: pair)
    args = attention_inputs(2, 7, 9, seed=11, grad=True)
    out = attention_banded.pairwise_attention_banded(*args)
    ref = pairwise_attention_reference(*args)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad((out * weights).sum(), args[:6])
    want = torch.autograd.grad((ref * weights).sum(), args[:6])
    assert (out - ref).abs().max().item() <= 1e-5
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


def test_cuda_float32_planes_select_the_triton_training_kernels(monkeypatch):
    # No GPU here: the dispatch reads only each plane's device type and dtype.
    from types import SimpleNamespace

    from jdnet_cli.ops import attention_banded

    monkeypatch.setattr(attention_banded, "triton_available", lambda: True)
    cuda = torch.device("cuda")
    planes = tuple(SimpleNamespace(device=cuda, dtype=torch.float32) for _ in range(3))
    assert attention_banded.triton_training_usable(*planes)
    assert not attention_banded.triton_training_usable(*planes[:2], SimpleNamespace(device=cuda, dtype=torch.float64))
    monkeypatch.setattr(attention_banded, "triton_available", lambda: False)
    assert not attention_banded.triton_training_usable(*planes)
    assert not attention_banded.triton_training_usable(*(torch.zeros(1) for _ in range(3)))
