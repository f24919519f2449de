"""The SAM block's training Function (BatchNorm, LReLU, projections, attention; C++ backward) against torch ops."""
from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch

from jdnet_cli import ops
from jdnet_cli.models.jdnet import SelfAttentionBottleneck
from jdnet_cli.ops import attention as attention_ops
from jdnet_cli.ops.attention_cpu_training import training_kernels_status, training_kernels_usable
from jdnet_cli.ops.sam_training import SamAttentionFunction, sam_training_usable

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")


@pytest.fixture(autouse=True)
def kernels_built():
    assert training_kernels_usable(torch.zeros(1)), training_kernels_status()


def _block(channels: int, dtype: torch.dtype, seed: int) -> SelfAttentionBottleneck:
    torch.manual_seed(seed)
    block = SelfAttentionBottleneck(channels).to(dtype).train()
    with torch.no_grad():  # BatchNorm's default affine (1, 0) would hide a swapped gamma and beta
        for bn in (block.bn1, block.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return block


def _function_args(n, c, h, w, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    gamma = torch.rand(c, generator=g, dtype=dtype) + 0.5
    beta = torch.randn(c, generator=g, dtype=dtype) * 0.3
    weight = torch.randn(12, c, generator=g, dtype=dtype) * 0.5
    bias = torch.randn(12, generator=g, dtype=dtype) * 0.1
    p = torch.randn(1, 2, h, w, generator=g, dtype=dtype)
    w1 = torch.randn(2, 4, generator=g, dtype=dtype)
    w2 = torch.randn(1, 2, generator=g, dtype=dtype)
    b2 = torch.randn(1, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, gamma, beta, weight, bias, p, w1, w2, b2)]


@pytest.mark.parametrize("shape", [(2, 8, 6, 7), (3, 16, 5, 9)])
def test_function_passes_gradcheck_in_float64(shape):
    # Odd sizes, batch > 1, borders everywhere (7x7 taps reflect on a 5-9 pixel map). The
    # bias of the logits has a zero gradient by softmax shift invariance, and so does every
    # gradient the BatchNorm would remove downstream; gradcheck compares all of them numerically.
    args = _function_args(*shape, seed=sum(shape))
    fn = lambda *t: SamAttentionFunction.apply(*t, 1e-5, 0.2, None)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=False)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_block_matches_the_reference_ops_with_running_stats(dtype, tol):
    fast = _block(16, dtype, seed=3)
    ref = copy.deepcopy(fast)
    x = torch.randn(3, 16, 11, 9, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    loc = ops.position_planes(11, 9, dtype=dtype, device=x.device)
    assert sam_training_usable(x, fast.bn1, 8)
    calls = []
    real = attention_ops.sam_attention_training
    try:
        attention_ops.sam_attention_training = lambda *a: calls.append(1) or real(*a)
        y_fast = fast(x, loc)
    finally:
        attention_ops.sam_attention_training = real
    assert calls, "the training Function was not used"
    with ops.backend("reference"):
        y_ref = ref(x, loc)
    assert (y_fast - y_ref).abs().max().item() <= tol * max(1.0, y_ref.abs().max().item())
    grad = torch.randn_like(y_ref)
    names = ["x"] + [name for name, _ in fast.named_parameters()]
    got = torch.autograd.grad(y_fast, [x, *fast.parameters()], grad)
    want = torch.autograd.grad(y_ref, [x, *ref.parameters()], grad)
    for name, a, b in zip(names, got, want):
        # Gradients that are zero in exact arithmetic (biases that a BatchNorm or the softmax
        # removes) are rounding noise in both: compared against the largest gradient overall.
        scale = max(b.abs().max().item(), 1.0)
        assert (a - b).abs().max().item() <= tol * 10 * scale, name
    for bn_fast, bn_ref in ((fast.bn1, ref.bn1), (fast.bn2, ref.bn2)):
        assert bn_fast.num_batches_tracked.item() == bn_ref.num_batches_tracked.item() == 1
        assert torch.allclose(bn_fast.running_mean, bn_ref.running_mean, rtol=tol, atol=tol)
        assert torch.allclose(bn_fast.running_var, bn_ref.running_var, rtol=tol, atol=tol)


def test_channel_statistics_match_torch_and_ignore_the_thread_count():
    x = (torch.randn(3, 24, 13, 7, dtype=torch.float64) * 3 + 100).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(torch.ops.jdnet_train.channel_mean_var(x))
    finally:
        torch.set_num_threads(threads)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    assert torch.allclose(results[0][0], mean, rtol=1e-14, atol=0)
    assert torch.allclose(results[0][1], var, rtol=1e-10, atol=0)  # mean 100, sd 3: two passes keep it
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[1]))


def test_projection_backward_ignores_the_thread_count():
    args = _function_args(3, 16, 9, 10, seed=1, dtype=torch.float32)
    with torch.no_grad():
        x, gamma, beta, weight = args[0], args[1], args[2], args[3]
        mean, var = torch.ops.jdnet_train.channel_mean_var(x)
        g = torch.Generator().manual_seed(2)
        planes = [torch.randn(3, k, 9, 10, generator=g) for k in (2, 2, 8)]
        threads = torch.get_num_threads()
        try:
            results = []
            for n in (1, 2):
                torch.set_num_threads(n)
                results.append(torch.ops.jdnet_train.projection_backward(
                    x, mean, (var + 1e-5).rsqrt(), gamma, beta, weight, *planes, 0.2))
        finally:
            torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[1]))
    assert results[0][0].abs().max().item() > 0


def test_projection_backward_refuses_what_it_cannot_read():
    x = torch.zeros(1, 8, 5, 5)  # planar, not channels-last
    stats = [torch.zeros(8)] * 4
    planes = [torch.zeros(1, 2, 5, 5), torch.zeros(1, 2, 5, 5), torch.zeros(1, 8, 5, 5)]
    with pytest.raises(RuntimeError, match="channels-last"):
        torch.ops.jdnet_train.projection_backward(x, *stats, torch.zeros(12, 8), *planes, 0.2)
    x = x.contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="weight must be"):
        torch.ops.jdnet_train.projection_backward(x, *stats, torch.zeros(11, 8), *planes, 0.2)


def test_eval_mode_and_no_grad_keep_their_paths():
    block = _block(16, torch.float32, seed=4)
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    block.eval()
    assert not sam_training_usable(x, block.bn1, 8)  # running statistics: the inference kernels' job
    block.train()
    assert sam_training_usable(x, block.bn1, 8)
    assert not sam_training_usable(x[:1, :, :1, :1].contiguous(memory_format=torch.channels_last), block.bn1, 8)
