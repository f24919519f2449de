"""The C++ CPU inference kernels against plain torch ops, and the fallback without them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from jdnet_cli import ops
from jdnet_cli.ops import cpu_kernels
from jdnet_cli.ops.attention_banded import padded_planes
from jdnet_cli.ops.cpu_kernels import (
    batchnorm_leaky_cpu,
    calibration_gate_cpu,
    cpu_kernels_status,
    cpu_kernels_usable,
    dense_fusion_cpu,
    fuse_segments_cpu,
    pairwise_attention_cpu,
    sam_attention_cpu,
    scale_aggregate_cpu,
)
from jdnet_cli.ops.pairwise_attention import pairwise_attention_fast, pairwise_attention_reference, position_planes

from ..conftest import REPO, make_tiny_model
from .conftest import attention_inputs


HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")


@pytest.fixture(autouse=True, scope="module")
def _kernels_loaded():
    # The *_cpu wrappers call torch.ops.jdnet directly (loading is the dispatcher's job), so a test
    # chosen alone with -k must load the library itself, not rely on an earlier test having done it.
    if HAS_COMPILER:
        cpu_kernels_usable(torch.zeros(1))


@needs_compiler
def test_cpu_kernels_build_and_load_here():
    assert cpu_kernels_usable(torch.zeros(1)), cpu_kernels_status()
    assert cpu_kernels_status().startswith("loaded ")


@needs_compiler
@pytest.mark.parametrize("shape", [(1, 9, 13), (2, 5, 64), (1, 7, 70), (3, 4, 129), (1, 12, 200)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_attention_kernel_matches_reference(shape, channels_last):
    # Widths below one strip (64), exactly one, a ragged end (70, 129, 200) and several batches.
    args = attention_inputs(*shape, seed=sum(shape), channels_last=channels_last)
    with torch.inference_mode():
        out = pairwise_attention_cpu(*args)
        ref = pairwise_attention_reference(*args)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-4


@needs_compiler
def test_cpu_attention_kernel_takes_any_value_channel_count():
    args = attention_inputs(2, 6, 67, c=3, seed=9)
    with torch.inference_mode():
        assert (pairwise_attention_cpu(*args) - pairwise_attention_reference(*args)).abs().max().item() <= 1e-4


@needs_compiler
def test_loading_cpu_kernels_keeps_subnormal_floats_in_torch_ops():
    # A -ffast-math link used to add crtfastmath.o, which switched the whole process to
    # flush-to-zero when the library loaded.
    assert cpu_kernels_usable(torch.zeros(1))
    tiny = torch.tensor([1e-39])
    assert (tiny * 1.0).item() > 0.0
    args = attention_inputs(1, 5, 70, seed=4)
    with torch.inference_mode():
        pairwise_attention_cpu(*args)  # the kernel flushes subnormals inside its own threads only
    assert (tiny * 1.0).item() > 0.0


@needs_compiler
@pytest.mark.parametrize("spread", [30.0, 300.0])
def test_cpu_attention_kernel_matches_reference_with_peaked_softmax(spread):
    # Large relation inputs spread the logits over hundreds: the kernel's exp then runs over its
    # whole range, down to the clamp at -87 where weights vanish next to the maximum's 1.
    x1, x2, x3, p, w1, w2, b2 = attention_inputs(2, 6, 133, seed=int(spread))
    args = [x1 * spread, x2 * spread, x3, p, w1, w2, b2]
    with torch.inference_mode():
        out = pairwise_attention_cpu(*args)
        # Logits in the hundreds carry float32 rounding of ~1e-5 into the weights; the float32
        # reference itself is ~2e-4 off at spread 300, so the yardstick is float64.
        ref = pairwise_attention_reference(*[a.double() for a in args])
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max().item() <= 1e-4


@needs_compiler
@pytest.mark.parametrize("widths", [[1], [32], [64], [300], [1056], [64, 64, 32], [64] * 16 + [32], [7, 129, 64]])
def test_dense_fusion_kernel_matches_gemm(widths):
    # 7 x 29 = 203 pixels: not a multiple of the 3-pixel register block or the 192-pixel panel;
    # 300 and 1056 cross the 128-channel depth chunk; every segment is a strided column prefix of a
    # wider block, as the last slot group of an odd slot count is.
    g = torch.Generator().manual_seed(sum(widths) + len(widths))
    blocks = [torch.randn(7 * 29, width + 32, generator=g) for width in widths]
    segments = [block[:, :width] for block, width in zip(blocks, widths)]
    k = sum(widths)
    weight = torch.randn(32, k, 1, 1, generator=g) / k**0.5
    bias = torch.randn(32, generator=g)
    with torch.inference_mode():
        out = dense_fusion_cpu(segments, weight, bias, 0.2)
        ref = F.leaky_relu(torch.addmm(bias, torch.cat(segments, 1), weight.view(32, k).t()), 0.2)
    assert out.shape == (7 * 29, 32)
    assert (out - ref).abs().max().item() <= 1e-4


@needs_compiler
def test_dense_fusion_kernel_refuses_mismatched_segments():
    rows = torch.zeros(10, 64)
    with pytest.raises(RuntimeError, match="sum of widths"):
        torch.ops.jdnet.dense_fusion([rows, rows[:, :32]], torch.zeros(64, 32), torch.zeros(32), 0.2)
    with pytest.raises(RuntimeError, match="P x k float32 rows"):
        torch.ops.jdnet.dense_fusion([rows, torch.zeros(9, 32)], torch.zeros(96, 32), torch.zeros(32), 0.2)


@needs_compiler
@pytest.mark.parametrize("widths", [[16], [64], [64, 32], [64] * 16 + [32], [48, 64, 16]])
@pytest.mark.parametrize("rows", [1, 203, 1031])
def test_dense_fusion_backward_kernel_matches_gemms(widths, rows):
    # 203 and 1031 pixels: not multiples of the 4-pixel block, the 64-pixel panel or the 8 row
    # chunks (1 pixel leaves 7 chunks empty). Segments are strided column prefixes of wider
    # blocks; the first segment's gradient is overwritten, the others accumulate onto old values.
    from jdnet_cli.ops.cpu_kernels import dense_fusion_backward_cpu, prepare_cpu_kernels

    assert prepare_cpu_kernels()
    g = torch.Generator().manual_seed(sum(widths) + rows)
    segments = [torch.randn(rows, w + 32, generator=g)[:, :w] for w in widths]
    grads = [torch.randn(rows, w + 16, generator=g)[:, :w] for w in widths]
    before = [t.clone() for t in grads]
    k = sum(widths)
    weight = torch.randn(32, k, 1, 1, generator=g)
    grad = torch.randn(rows, 32, generator=g)
    overwrite = [True] + [False] * (len(widths) - 1)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            work = [t.clone() for t in before]
            outs = [t[:, : t.shape[1]] for t in work]
            g_weight = dense_fusion_backward_cpu(grad, weight, segments, outs, overwrite)
            results.append((g_weight, work))
    finally:
        torch.set_num_threads(threads)
    g_weight, got = results[0]
    ref_weight = (grad.t() @ torch.cat(segments, 1)).view_as(weight)
    assert g_weight.shape == weight.shape
    assert (g_weight - ref_weight).abs().max().item() <= 1e-4 * max(1.0, ref_weight.abs().max().item())
    offset = 0
    for i, (w, old, new) in enumerate(zip(widths, before, got)):
        want = grad @ weight.view(32, k)[:, offset : offset + w] + (0 if overwrite[i] else old)
        assert (new - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
        offset += w
    # Fixed row chunks: the same sums whatever the thread count.
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


_WEIGHT_GRAD_SCRIPT = """
import sys, torch
from jdnet_cli.ops.cpu_kernels import dense_fusion_backward_cpu, prepare_cpu_kernels
assert prepare_cpu_kernels()
g = torch.Generator().manual_seed(5)
widths = [64] * 7 + [32, 16]
segments = [torch.randn(1031, w + 32, generator=g)[:, :w] for w in widths]
weight = torch.randn(32, sum(widths), 1, 1, generator=g)
grad = torch.randn(1031, 32, generator=g)
torch.save(dense_fusion_backward_cpu(grad, weight, segments, [], []), sys.argv[1])
"""


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512f" in f.read().split()
    except OSError:
        return False


@needs_compiler
@pytest.mark.skipif(not _has_avx512(), reason="this CPU has no AVX-512, so there is only the AVX2 path")
def test_dense_fusion_weight_gradient_same_bits_with_and_without_avx512(tmp_path):
    # Both paths sum every dW element over the same rows in the same order with FMAs.
    results = []
    for name, extra in (("avx512", {}), ("avx2", {"JDNET_CPU_AVX2_ONLY": "1"})):
        env = {k: v for k, v in os.environ.items() if k != "JDNET_CPU_AVX2_ONLY"} | extra
        env["PYTHONPATH"] = str(REPO)
        out = tmp_path / f"{name}.pt"
        subprocess.run([sys.executable, "-c", _WEIGHT_GRAD_SCRIPT, str(out)], env=env, check=True, timeout=600)
        results.append(torch.load(out, weights_only=True))
    assert torch.equal(results[0], results[1])
    assert results[0].abs().max().item() > 1.0  # a real gradient, not zeros


@needs_compiler
def test_dense_fusion_backward_kernel_refuses_widths_it_cannot_block():
    from jdnet_cli.ops.cpu_kernels import prepare_cpu_kernels

    assert prepare_cpu_kernels()
    rows = torch.zeros(10, 24)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        torch.ops.jdnet.dense_fusion_backward(torch.zeros(10, 32), torch.zeros(1, 32, 16), [rows], [rows.clone()], [1])


@needs_compiler
@pytest.mark.parametrize("batch", [1, 2])
def test_model_with_cpu_kernels_matches_plain_torch_ops(monkeypatch, batch):
    """Full inference path (32 channels, so the fusion kernel is used) against the torch ops."""
    model = make_tiny_model(channels=32, units=3).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, 23, 70, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=torch.channels_last)
    assert cpu_kernels_usable(x), cpu_kernels_status()
    calls = {}
    for name in ("dense_fusion_cpu", "fuse_segments_cpu", "scale_aggregate_cpu", "calibration_gate_cpu", "sam_attention_cpu",
                 "batchnorm_leaky_cpu", "pairwise_attention_cpu"):
        def counted(*a, _f=getattr(cpu_kernels, name), _n=name, **k):
            calls[_n] = calls.get(_n, 0) + 1
            return _f(*a, **k)
        monkeypatch.setattr(cpu_kernels, name, counted)
    with torch.inference_mode():
        fast = model(x)
    # Per unit: one dense fusion, three segment fusions (attention tail, bottleneck in and out), one
    # of each other; the BatchNorm and plain attention kernels are only for the non-fused SAM path.
    assert calls == {"dense_fusion_cpu": 3, "fuse_segments_cpu": 9, "scale_aggregate_cpu": 3, "calibration_gate_cpu": 3,
                     "sam_attention_cpu": 3}
    counted_fast = dict(calls)
    with torch.inference_mode():
        # Every op asks cpu_kernels_usable (nhwc_kernels_usable too), so this is the no-kernel path.
        monkeypatch.setattr(cpu_kernels, "cpu_kernels_usable", lambda *t, **k: False)
        plain = model(x)
        with ops.backend("reference"):
            reference = model(x)
    assert calls == counted_fast
    assert (fast - plain).abs().max().item() <= 1e-4
    assert (fast - reference).abs().max().item() <= 1e-4


def test_cpu_kernels_are_not_used_where_gradients_are_needed():
    args = attention_inputs(1, 6, 70, grad=True)
    out = pairwise_attention_fast(*args)
    assert out.grad_fn is not None and "PairwiseAttentionFunction" in type(out.grad_fn).__name__


_FALLBACK_PROBE = """
import torch
from jdnet_cli.ops.cpu_kernels import cpu_kernels_status, cpu_kernels_usable
from jdnet_cli.ops.pairwise_attention import pairwise_attention_fast, pairwise_attention_reference
g = torch.Generator().manual_seed(0)
args = [torch.randn(*s, generator=g) for s in ((1, 2, 6, 9), (1, 2, 6, 9), (1, 8, 6, 9), (1, 2, 6, 9), (2, 4), (1, 2), (1,))]
with torch.inference_mode():
    err = (pairwise_attention_fast(*args) - pairwise_attention_reference(*args)).abs().max().item()
print(cpu_kernels_usable(args[0]), err <= 1e-4, cpu_kernels_status())
"""


@pytest.mark.parametrize("env, status", [({"JDNET_NATIVE": "0"}, "disabled by JDNET_NATIVE=0"),
                                         ({"CXX": "false"}, "build or load failed: compiler exit 1")])
def test_without_cpu_kernels_inference_falls_back_to_torch_ops(tmp_path, env, status):
    full_env = dict(os.environ, PYTHONPATH=str(REPO), JDNET_CACHE_DIR=str(tmp_path), **env)
    out = subprocess.run([sys.executable, "-c", _FALLBACK_PROBE], env=full_env, capture_output=True, text=True, check=True)
    usable, correct, said = out.stdout.strip().split(" ", 2)
    assert (usable, correct) == ("False", "True")
    assert said.startswith(status)
    assert not any(p.suffix == ".so" for p in tmp_path.rglob("*"))


def _nhwc(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).contiguous(memory_format=torch.channels_last)


@needs_compiler
@pytest.mark.parametrize("h, w", [(321, 37), (17, 19), (8, 8)])
def test_scale_aggregate_kernel_matches_upsample_and_add(h, w):
    # 321 rows from a 21-row map is where PyTorch's nearest rule stops being plain block repetition.
    base, skip = _nhwc(2, 32, h, w, seed=1), _nhwc(2, 32, h, w, seed=2)
    smalls, sh, sw = [], h, w
    for j in range(4):
        sh, sw = (sh + 1) // 2, (sw + 1) // 2
        smalls.append(_nhwc(2, 32, sh, sw, seed=3 + j))
    with torch.inference_mode():
        out = scale_aggregate_cpu(base, skip, smalls, 0.2)
        ref = base
        for s in smalls:
            ref = ref + F.interpolate(s, size=(h, w))
        ref = F.leaky_relu(ref, 0.2) + skip
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max().item() <= 1e-5


@needs_compiler
@pytest.mark.parametrize("h, w", [(321, 37), (9, 13)])
def test_calibration_gate_kernel_matches_sigmoid_gate(h, w):
    x, features = _nhwc(1, 16, h, w, seed=4), _nhwc(1, 16, h, w, seed=5)
    context = _nhwc(1, 16, h // 4, w // 4, seed=6)
    with torch.inference_mode():
        out = calibration_gate_cpu(x, context, features)
        ref = features * torch.sigmoid(x + F.interpolate(context, size=(h, w)))
    assert (out - ref).abs().max().item() <= 1e-5


@needs_compiler
def test_upsample_kernels_refuse_bad_index_tables():
    base = _nhwc(1, 8, 6, 6, seed=7)
    small = _nhwc(1, 8, 3, 3, seed=8)
    rows = torch.tensor([0, 0, 1, 1, 2, 3])  # 3 is outside the 3-row map
    cols = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.jdnet.scale_aggregate(base, base, [small], [rows], [cols], 0.2)


@needs_compiler
@pytest.mark.parametrize("activate", [False, True])
def test_fuse_segments_kernel_writes_conv_of_concatenation_into_a_buffer_slot(activate):
    a, b, skip = _nhwc(2, 16, 9, 11, seed=10), _nhwc(2, 8, 9, 11, seed=11), _nhwc(2, 32, 9, 11, seed=12)
    weight = torch.randn(32, 24, 1, 1, generator=torch.Generator().manual_seed(13)) / 5
    bias = torch.randn(32, generator=torch.Generator().manual_seed(14))
    buffer = torch.zeros(2, 96, 9, 11).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = fuse_segments_cpu([a, b], weight, bias, skip, buffer[:, 32:64], activate=activate, slope=0.2)
        ref = F.conv2d(torch.cat([a, b], 1), weight, bias) + skip
        ref = F.leaky_relu(ref, 0.2) if activate else ref
    assert out.data_ptr() == buffer[:, 32:64].data_ptr()
    assert (buffer[:, 32:64] - ref).abs().max().item() <= 1e-5
    assert buffer[:, :32].abs().max().item() == 0 and buffer[:, 64:].abs().max().item() == 0


@needs_compiler
def test_batchnorm_leaky_kernel_matches_eval_batchnorm_then_leaky_relu():
    bn = torch.nn.BatchNorm2d(16).eval()
    g = torch.Generator().manual_seed(15)
    with torch.no_grad():
        for t in (bn.running_mean, bn.weight, bn.bias):
            t.copy_(torch.randn(16, generator=g))
        bn.running_var.uniform_(0.2, 2.0, generator=g)
    x = _nhwc(2, 16, 7, 9, seed=16)
    with torch.inference_mode():
        assert (batchnorm_leaky_cpu(x, bn, 0.2) - F.leaky_relu(bn(x), 0.2)).abs().max().item() <= 1e-5


def _random_batchnorm(channels: int, seed: int) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(channels).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in (bn.running_mean, bn.weight, bn.bias):
            t.copy_(torch.randn(channels, generator=g))
        bn.running_var.uniform_(0.2, 2.0, generator=g)
    return bn


def _random_convs(seed: int, outs=(2, 2, 8)) -> list[torch.nn.Conv2d]:
    torch.manual_seed(seed)
    return [torch.nn.Conv2d(32, o, 1) for o in outs]


@needs_compiler
@pytest.mark.parametrize("n, h, w, p_batch", [(1, 4, 4, 1), (2, 9, 13, 1), (2, 7, 70, 2), (1, 33, 5, 1)])
def test_attention_inputs_kernel_matches_batchnorm_projections_and_reflect_padding(n, h, w, p_batch):
    x = _nhwc(n, 32, h, w, seed=20)
    bn = _random_batchnorm(32, seed=21)
    convs = _random_convs(22)
    p = torch.randn(p_batch, 2, h, w, generator=torch.Generator().manual_seed(23))
    weight = torch.cat([c.weight.view(c.out_channels, 32) for c in convs])
    weight_t = torch.zeros(32, 16)
    weight_t[:, :12] = weight.t()
    bias = torch.zeros(16)
    bias[:12] = torch.cat([c.bias for c in convs])
    scale = bn.running_var.add(bn.eps).rsqrt() * bn.weight
    shift = bn.bias - bn.running_mean * scale
    with torch.inference_mode():
        got = torch.ops.jdnet.attention_inputs(x, scale, shift, weight_t, bias, 8, p, 0.2)
        pre = F.leaky_relu(bn(x), 0.2)
        want = padded_planes(*(c(pre) for c in convs), p, torch.float32)
    assert [t.shape for t in got] == [t.shape for t in want]
    for g, r in zip(got, want):
        assert (g - r).abs().max().item() <= 1e-5


@needs_compiler
def test_attention_inputs_kernel_refuses_maps_too_small_to_reflect():
    x = _nhwc(1, 32, 3, 8, seed=24)
    with pytest.raises(RuntimeError, match="at least 4 rows"):
        torch.ops.jdnet.attention_inputs(x, torch.ones(32), torch.zeros(32), torch.zeros(32, 16), torch.zeros(16), 8,
                                         torch.zeros(1, 2, 3, 8), 0.2)


@needs_compiler
@pytest.mark.parametrize("shape", [(1, 9, 13), (2, 5, 64), (1, 7, 70), (2, 4, 129)])
def test_attention_with_batchnorm_epilogue_writes_channels_last(shape):
    args = attention_inputs(*shape, seed=sum(shape) + 1)
    centre, neighbours, values = padded_planes(*args[:4], torch.float32)
    v = (args[5].view(2, 1) * args[4]).sum(0).tolist()
    bn = _random_batchnorm(8, seed=25)
    scale = bn.running_var.add(bn.eps).rsqrt() * bn.weight
    shift = bn.bias - bn.running_mean * scale
    with torch.inference_mode():
        out = torch.ops.jdnet.pairwise_attention_bn_leaky(centre, neighbours, values, v, 0.2, scale, shift)
        ref = F.leaky_relu(bn(pairwise_attention_reference(*args)), 0.2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max().item() <= 1e-4


@needs_compiler
@pytest.mark.parametrize("n, h, w", [(1, 4, 5), (2, 11, 70)])
def test_sam_attention_kernel_path_matches_the_block_in_torch_ops(n, h, w):
    from jdnet_cli.models.jdnet import SelfAttentionBottleneck

    torch.manual_seed(26)
    block = SelfAttentionBottleneck(32).eval()
    block.bn1.load_state_dict(_random_batchnorm(32, seed=27).state_dict())
    block.bn2.load_state_dict(_random_batchnorm(8, seed=28).state_dict())
    x = _nhwc(n, 32, h, w, seed=29)
    loc = position_planes(h, w)
    sam = block.sam
    with torch.inference_mode():
        h_att = sam_attention_cpu(x, block.bn1, [sam.conv1, sam.conv2, sam.conv3], sam.conv_p(loc),
                                  sam.conv_w[1].weight.flatten(1), sam.conv_w[2].weight.flatten(1), block.bn2, 0.2)
        fast = block(x, loc)
        with ops.backend("reference"):
            ref_att = F.leaky_relu(block.bn2(sam(F.leaky_relu(block.bn1(x), 0.2), loc)), 0.2)
            reference = block(x, loc)
    assert (h_att - ref_att).abs().max().item() <= 1e-4
    assert (fast - reference).abs().max().item() <= 1e-4


@needs_compiler
def test_fuse_segments_kernel_splits_its_outputs_over_two_maps():
    z = _nhwc(2, 32, 5, 7, seed=30)
    weight = torch.randn(32, 32, 1, 1, generator=torch.Generator().manual_seed(31)) / 5
    bias = torch.randn(32, generator=torch.Generator().manual_seed(32))
    low = torch.empty(2, 16, 5, 7).contiguous(memory_format=torch.channels_last)
    high = torch.empty_like(low)
    with torch.inference_mode():
        fuse_segments_cpu([z], weight, bias, None, low, activate=True, slope=0.2, out_high=high)
        ref = F.leaky_relu(F.conv2d(z, weight, bias), 0.2)
    assert (low - ref[:, :16]).abs().max().item() <= 1e-5
    assert (high - ref[:, 16:]).abs().max().item() <= 1e-5


@needs_compiler
@pytest.mark.parametrize("h, w", [(321, 37), (9, 13)])
def test_scale_aggregate_kernel_applies_the_full_resolution_projection(h, w):
    y = _nhwc(2, 32, h, w, seed=33)
    smalls = [_nhwc(2, 32, (h + 1) // 2, (w + 1) // 2, seed=34), _nhwc(2, 32, (h + 3) // 4, (w + 3) // 4, seed=35)]
    weight = torch.randn(32, 32, 1, 1, generator=torch.Generator().manual_seed(36)) / 5
    bias = torch.randn(32, generator=torch.Generator().manual_seed(37))
    with torch.inference_mode():
        out = scale_aggregate_cpu(y, y, smalls, 0.2, weight=weight, bias=bias)
        ref = F.conv2d(y, weight, bias)
        for s in smalls:
            ref = ref + F.interpolate(s, size=(h, w))
        ref = F.leaky_relu(ref, 0.2) + y
    assert (out - ref).abs().max().item() <= 1e-5
