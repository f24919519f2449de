"""The bfloat16 dense-fusion kernels against float64 products of the same bfloat16 values, and
training's use of them (``backend.cpu_mixed_precision``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jdnet_cli import ops
from jdnet_cli.models import JDNet
from jdnet_cli.ops import cpu_kernels, dense_buffer
from jdnet_cli.ops.backend import cpu_mixed_precision
from jdnet_cli.ops.fusion_bf16 import bf16_fusions_status, bf16_fusions_usable, fusion_bf16, fusion_weight_grad_bf16

needs_bf16 = pytest.mark.skipif(not bf16_fusions_usable(), reason="no AVX512-BF16 or no compiler")


def _segments(rows: int, widths: list[int], seed: int, strided: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    segs = []
    for w in widths:
        t = torch.randn(rows, w + (32 if strided else 0), generator=g).to(torch.bfloat16)
        segs.append(t[:, :w] if strided else t)  # strided: a column prefix of wider rows, as the buffer's last pair
    return segs


@needs_bf16
@pytest.mark.parametrize("rows", [1, 7, 8, 193, 1000])
@pytest.mark.parametrize("widths,strided", [([32], False), ([64, 64, 32], False), ([64, 32], True), ([2, 6], False)])
@pytest.mark.parametrize("slope", [0.2, None])
def test_forward_is_the_float32_sum_of_bf16_products(rows, widths, strided, slope):
    # Rows below, at and past the 8-row register block and the 192-row panel; widths of one slot,
    # of slot pairs, a column prefix of a pair, and narrow ones.
    segs = _segments(rows, widths, seed=rows + sum(widths), strided=strided)
    k = sum(widths)
    weight_t = torch.randn(k, 32, generator=torch.Generator().manual_seed(k)) / k**0.5
    bias = torch.randn(32, generator=torch.Generator().manual_seed(1))
    out = fusion_bf16(segs, weight_t, bias, slope)
    ref = torch.cat(segs, 1).double() @ weight_t.to(torch.bfloat16).double() + bias.double()
    if slope is not None:
        ref = F.leaky_relu(ref, slope)
    assert out.dtype == torch.float32 and out.shape == (rows, 32)
    # float32 sums of exact bf16 x bf16 products: only the sums' rounding separates them.
    assert (out.double() - ref).abs().max().item() <= 2e-5 * max(1.0, ref.abs().max().item())


@needs_bf16
@pytest.mark.parametrize("rows", [1, 2, 63, 64, 130, 4097])
@pytest.mark.parametrize("widths,strided", [([16], False), ([64, 64, 32], False), ([64, 32], True)])
def test_weight_gradient_is_the_float32_sum_of_bf16_products(rows, widths, strided):
    # Odd pixel counts pair the last pixel with zero; 4097 spreads over all 8 row chunks.
    segs = _segments(rows, widths, seed=3 * rows + len(widths), strided=strided)
    grad = torch.randn(rows, 32, generator=torch.Generator().manual_seed(rows))
    dw = fusion_weight_grad_bf16(grad, segs)
    ref = grad.to(torch.bfloat16).double().t() @ torch.cat(segs, 1).double()
    assert dw.dtype == torch.float32 and dw.shape == (32, sum(widths))
    assert (dw.double() - ref).abs().max().item() <= 2e-5 * max(1.0, ref.abs().max().item())


@needs_bf16
def test_kernels_give_the_same_bits_on_any_thread_count():
    segs = _segments(3001, [64, 64, 32], seed=5)
    grad = torch.randn(3001, 32, generator=torch.Generator().manual_seed(6))
    weight_t = torch.randn(160, 32, generator=torch.Generator().manual_seed(7))
    bias = torch.zeros(32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((fusion_bf16(segs, weight_t, bias, 0.2), fusion_weight_grad_bf16(grad, segs)))
    finally:
        torch.set_num_threads(threads)
    for out, dw in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(dw, results[0][1])


@needs_bf16
def test_kernels_refuse_wrong_inputs():
    segs = _segments(10, [32], seed=1)
    with pytest.raises(RuntimeError, match="bfloat16 rows"):
        fusion_bf16([s.float() for s in segs], torch.zeros(32, 32), torch.zeros(32), 0.2)
    with pytest.raises(RuntimeError, match="packed as"):
        torch.ops.jdnet_bf16.fusion_forward(segs, torch.zeros(8, 32, 2, dtype=torch.bfloat16), torch.zeros(32), 0.2, True)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        fusion_weight_grad_bf16(torch.zeros(10, 32), _segments(10, [8], seed=2))
    with pytest.raises(RuntimeError, match="P x 32"):
        fusion_weight_grad_bf16(torch.zeros(9, 32), segs)


@pytest.fixture
def buffer_dtypes(monkeypatch) -> list[torch.dtype]:
    """The dtype of every training feature buffer made while the test runs."""
    dtypes: list[torch.dtype] = []
    real_buffer = dense_buffer.FeatureBuffer

    def spy(*args, **kwargs):
        buf = real_buffer(*args, **kwargs)
        dtypes.append(buf.blocks[0].dtype)
        return buf

    monkeypatch.setattr(dense_buffer, "FeatureBuffer", spy)
    return dtypes


def _model_grads(model: JDNet, x: torch.Tensor, y: torch.Tensor, bf16: bool):
    model.zero_grad()
    with cpu_mixed_precision(bf16):
        out = model(x)
    (out - y).abs().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@needs_bf16
def test_training_uses_them_only_when_asked_and_stays_close_to_float32(buffer_dtypes):
    # Mixed precision as a whole: the fusion kernels and the units' bf16 convs.
    assert cpu_kernels.prepare_cpu_kernels(), cpu_kernels.cpu_kernels_status()
    torch.manual_seed(0)
    model = JDNet(32, 3).to(memory_format=torch.channels_last).train()
    x = torch.rand(2, 3, 24, 20).contiguous(memory_format=torch.channels_last)
    y = torch.rand_like(x)
    out32, g32 = _model_grads(model, x, y, bf16=False)
    out16, g16 = _model_grads(model, x, y, bf16=True)
    assert buffer_dtypes == [torch.float32, torch.bfloat16], bf16_fusions_status()
    # The buffer's values and the fusion weights are rounded to 8 significant bits (relative
    # 2^-9), and so are the units' conv inputs (bf16 autocast); every sum stays float32. The output
    # is x minus a small rain layer and moves ~3e-4 (measured 2.1-5.7e-4 on three seeds). Against
    # random targets each weight gradient is a sum of terms of random sign that mostly cancel, so
    # the terms' small errors weigh more: all gradients together moved 1.9-5.2%. A slot or weight
    # mixed up in the fusions' wiring (tried: reversed segments or readers, no weight gradient)
    # moved them 30-45%.
    assert not torch.equal(out16, out32)
    assert ((out16 - out32).norm() / out32.norm()).item() < 1e-3
    diff = sum(((g16[n] - g32[n]) ** 2).sum() for n in g32) ** 0.5
    assert (diff / sum((g ** 2).sum() for g in g32.values()) ** 0.5).item() < 0.1


def test_without_the_instructions_the_feature_buffer_stays_float32(monkeypatch, buffer_dtypes):
    # (The trainer does not ask for mixed precision there at all: tests/test_training.py.)
    monkeypatch.setattr(dense_buffer, "bf16_fusions_usable", lambda: False)
    torch.manual_seed(0)
    model = JDNet(32, 2).to(memory_format=torch.channels_last).train()
    x = torch.rand(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with cpu_mixed_precision():
        model(x).sum().backward()
    assert buffer_dtypes == [torch.float32]


def test_units_convs_run_in_bf16_only_in_mixed_precision_training():
    torch.manual_seed(0)
    model = JDNet(8, 1).to(memory_format=torch.channels_last).train()
    seen: list[torch.dtype] = []
    model.derain_net.units[0].scn.k1[0].register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    x = torch.rand(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with cpu_mixed_precision():
        model(x)
        with torch.no_grad():  # inference
            model(x)
        with ops.backend("reference"):
            model(x)
        model.double()(x.double())
    model.float()(x)  # not asked for
    assert seen == [torch.bfloat16, torch.float32, torch.float32, torch.float64, torch.float32]
