"""Dense connections: the training feature buffer, the inference buffers and slot pairs."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from jdnet_cli.ops.pairwise_attention import position_planes

from ..conftest import make_tiny_model


def _dense_by_concatenation(dense, f0, loc):
    feats, current = f0, f0
    for unit, fuse in zip(dense.units, dense.conv1x1):
        feats = torch.cat([feats, unit(current, loc)], 1)
        current = fuse(feats)
    return current


def test_buffer_dense_training_path_matches_concatenation():
    # float64 NCHW: CPU float64 convolutions in channels-last are very slow, and the buffer's
    # layout does not depend on the input's.
    model = make_tiny_model(units=2).double().train()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 8, 9, generator=g, dtype=torch.float64)
    params = list(model.parameters())
    results = []
    for forward in (lambda f0, loc: model.derain_net(f0, loc), lambda f0, loc: _dense_by_concatenation(model.derain_net, f0, loc)):
        loc = position_planes(8, 9, dtype=torch.float64)
        f0 = model.enterBlock(x)
        out = model.exitBlock(forward(f0, loc))
        # Gradients twice through the same graph: the buffer path must not carry state between them.
        grads1 = torch.autograd.grad(out.square().sum(), params, retain_graph=True)
        grads2 = torch.autograd.grad(out.square().sum(), params)
        results.append((out.detach(), grads1, grads2))
    (out_a, ga1, ga2), (out_b, gb1, gb2) = results
    assert (out_a - out_b).abs().max().item() <= 1e-12
    for a1, a2, b1 in zip(ga1, ga2, gb1):
        assert (a1 - b1).abs().max().item() <= 1e-10
        assert torch.equal(a1, a2)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")
def test_training_fusions_run_the_cpu_kernel_and_match_concatenation(monkeypatch):
    # 32 channels in float32 on the CPU: the fusions' forward is the C++ kernel (with the LReLU in
    # its epilogue) over slot pairs; the backward computes weight gradients only and each slot's
    # gradient once, deferred. 3 units make 4 slots, so prefixes end both on a pair boundary and
    # inside a pair.
    from jdnet_cli.ops import cpu_kernels, dense_buffer

    calls, backward_grad_segments = [], []
    real = cpu_kernels.dense_fusion_cpu
    monkeypatch.setattr(cpu_kernels, "dense_fusion_cpu", lambda *a: calls.append(1) or real(*a))
    real_backward = cpu_kernels.dense_fusion_backward_cpu
    monkeypatch.setattr(cpu_kernels, "dense_fusion_backward_cpu",
                        lambda g, w, segs, gsegs, ow: backward_grad_segments.append(len(gsegs)) or real_backward(g, w, segs, gsegs, ow))
    model = make_tiny_model(channels=32, units=3).train().to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 9, 10, generator=g).contiguous(memory_format=torch.channels_last)
    params = list(model.parameters())
    results = []
    for forward in (lambda f0, loc: model.derain_net(f0, loc), lambda f0, loc: _dense_by_concatenation(model.derain_net, f0, loc)):
        loc = position_planes(9, 10)
        out = model.exitBlock(forward(model.enterBlock(x), loc))
        grads = torch.autograd.grad(out.square().sum(), params, retain_graph=True)
        # Twice through the same graph: the deferred gradients must not carry over.
        assert all(torch.equal(a, b) for a, b in zip(grads, torch.autograd.grad(out.square().sum(), params)))
        results.append((out.detach(), grads))
    assert len(calls) == 3 and dense_buffer.SLOTS_PER_GROUP == 2
    assert backward_grad_segments == [0] * 6  # 3 fusions, two backward passes, dW only
    (out_a, grads_a), (out_b, grads_b) = results
    assert (out_a - out_b).abs().max().item() <= 1e-5
    for a, b in zip(grads_a, grads_b):
        # float32 sums in another order: relative to the gradient's scale.
        assert (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


def test_slot_groups_views_cover_the_storage_in_channel_order():
    from jdnet_cli.ops.dense_buffer import SlotGroups

    n, slots, c, h, w = 2, 5, 32, 3, 4
    storage = torch.arange(n * slots * c * h * w, dtype=torch.float32)
    store = SlotGroups(storage, n, slots, c, h, w)
    assert [g.shape for g in store.groups] == [(24, 64), (24, 64), (24, 32)]
    for i in range(slots):
        view = store.slot(i)
        assert view.shape == (n, c, h, w) and view.stride(1) == 1
        view.fill_(float(i))
    # Every element belongs to exactly one slot, and the prefix lists slots in order.
    seen = torch.cat(store.prefix(slots), 1)
    assert seen.shape == (n * h * w, slots * c)
    assert torch.equal(seen, torch.arange(slots).repeat_interleave(c).float().expand_as(seen))
    assert [t.shape[1] for t in store.prefix(3)] == [64, 32]
    assert sorted(storage.unique().tolist()) == list(range(slots))


def test_inference_feature_buffer_is_reused_per_thread_and_never_aliases_outputs():
    import threading

    from jdnet_cli.ops.dense_buffer import reusable_feature_buffer

    like = torch.zeros(1)
    with torch.inference_mode():
        a = reusable_feature_buffer(1, 64, 5, 7, like)
        b = reusable_feature_buffer(1, 64, 4, 7, like)  # smaller: same storage
        assert b.data_ptr() == a.data_ptr() and b.is_contiguous(memory_format=torch.channels_last)
        c = reusable_feature_buffer(2, 64, 5, 7, like)  # larger: a new one
        assert c.shape == (2, 64, 5, 7) and c.is_contiguous(memory_format=torch.channels_last)
        other = {}
        t = threading.Thread(target=lambda: other.update(ptr=reusable_feature_buffer(1, 64, 5, 7, like).data_ptr()))
        t.start()
        t.join()
        assert other["ptr"] != reusable_feature_buffer(1, 64, 5, 7, like).data_ptr()
    # Outside inference mode an inference tensor cannot be written, so it is not handed out there.
    with torch.no_grad():
        d = reusable_feature_buffer(1, 64, 5, 7, like)
        d[:, :32] = 1.0
        assert not d.is_inference()

    model = make_tiny_model(channels=32, units=2).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(3)
    x1, x2 = (torch.rand(1, 3, 9, 12, generator=g).contiguous(memory_format=torch.channels_last) for _ in range(2))
    with torch.inference_mode():
        first = model(x1)
        model(x2)
        again = model(x1)
    assert torch.equal(first, again)


def test_training_feature_buffer_pairs_slots_on_the_cpu_only():
    from jdnet_cli.ops.dense_buffer import FeatureBuffer

    cpu = FeatureBuffer(torch.zeros(2, 8, 3, 4), slots=5)
    assert [b.shape for b in cpu.blocks] == [(24, 16), (24, 16), (24, 8)]
    # Elsewhere (CUDA) one block, so that each fusion is one GEMM.
    other = FeatureBuffer(torch.zeros(2, 8, 3, 4, device="meta"), slots=5)
    assert [b.shape for b in other.blocks] == [(24, 40)]
    assert [s.shape[1] for s in cpu.prefix(24, cpu.blocks)] == [16, 8]
