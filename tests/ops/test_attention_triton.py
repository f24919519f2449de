"""The Triton attention kernel in interpreter mode (skipped where Triton is not installed)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from .conftest import attention_inputs
from jdnet_cli.ops.pairwise_attention import pairwise_attention_reference

from ..conftest import make_tiny_model


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")


@pytest.fixture
def triton_interpreter(monkeypatch):
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
