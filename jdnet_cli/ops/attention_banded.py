"""Memory-lean pairwise attention with a hand-written backward, in plain torch ops or C++.

The image is walked in bands of rows. Within a band every tensor is planar with the image row
innermost, so the 7x7 neighbourhood of a plane is a strided *view* (no copy) whose inner stride is
1 and every elementwise op vectorises. Per band the logits of all 49 offsets are one
N x 7 x 7 x rows x W block small enough to stay in cache; softmax normalisation is applied once
to the 8-channel result instead of to the 49 weights. Backward recomputes the logits from the
inputs and keeps only the per-pixel softmax max and sum from forward, so training memory is the
inputs plus two planes, not the 49x tensors autograd would save.

``PairwiseAttentionFunction`` is the attention's one autograd Function. On the CPU it runs the
C++ training kernels (``attention_cpu_training``: the same maths in one pass per image row, 5.6x
faster for forward plus backward at batch 4 of 64x64); on CUDA the Triton training kernels
(``attention_triton_training``, where Triton is installed); the banded torch ops here serve the
rest (no compiler, no Triton, float64 off the CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention_cpu_training import attention_backward_cpu, attention_forward_cpu, training_kernels_usable
from .attention_triton import triton_available
from .layout import in_layout_of

KERNEL = 7
PAD = KERNEL // 2
TAPS = KERNEL * KERNEL
# Pixels per band. Forward: about where the 49 x band logit and scratch blocks leave L2 and the
# per-band Python overhead stops mattering (2 threads, 481 wide: 2048 -> 79 ms, 4096 -> 62 ms,
# 8192 -> 62 ms per call on 96 rows). Backward loops 49 times per band over the scatter, so
# bigger bands win there (batch 4 of 64x64: one band was 2x faster than four).
BAND_PIXELS = 4096
BACKWARD_BAND_PIXELS = 16384


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _windows(padded: torch.Tensor, r0: int, rows: int, width: int) -> torch.Tensor:
    """N x C x (H+6) x (W+6) planar -> N x C x 7 x 7 x rows x W view of each pixel's neighbours."""
    sn, sc, sh, sw = padded.stride()
    n, c = padded.shape[:2]
    return padded.as_strided(
        (n, c, KERNEL, KERNEL, rows, width), (sn, sc, sh, sw, sh, sw), padded.storage_offset() + r0 * sh
    )


def padded_planes(x1, x2, x3, p, acc):
    """Planar (centre, reflect-padded neighbours, reflect-padded values) in dtype ``acc``."""
    n = x1.shape[0]
    p = p.to(acc).expand(n, -1, -1, -1)
    centre = torch.cat([x1.to(acc), p], 1).contiguous()
    neighbours = F.pad(torch.cat([x2.to(acc), p], 1), (PAD,) * 4, mode="reflect").contiguous()
    values = F.pad(x3.to(acc), (PAD,) * 4, mode="reflect").contiguous()
    return centre, neighbours, values


def _band_rows(n: int, w: int, pixels: int) -> int:
    return max(1, pixels // max(1, n * w))


def _logits(centre, nb_win, v, slope, r0, rows, out, scratch, keep_rel=None):
    """out <- sum_c v_c LReLU(centre_c - neighbour_c) for one band (the bias cancels in softmax)."""
    for c in range(centre.shape[1]):
        rel = keep_rel[:, c] if keep_rel is not None else scratch
        torch.sub(centre[:, c, None, None, r0 : r0 + rows], nb_win[:, c], out=rel)
        F.leaky_relu(rel, slope, inplace=True)
        if c == 0:
            torch.mul(rel, v[0], out=out)
        else:
            out.add_(rel, alpha=v[c])
    return out


def attention_forward(centre, neighbours, values, vs, slope):
    """Forward from the padded planes: (output N x C x H x W, softmax max, softmax sum)."""
    n, _, h, w = centre.shape
    acc, device = values.dtype, values.device
    out = torch.empty((n, values.shape[1], h, w), dtype=acc, device=device)
    smax = torch.empty((n, 1, h, w), dtype=acc, device=device)
    ssum = torch.empty((n, 1, h, w), dtype=acc, device=device)
    rows_per_band = _band_rows(n, w, BAND_PIXELS)
    block = n * TAPS * min(rows_per_band, h) * w
    logit_store = torch.empty(block, dtype=acc, device=device)
    scratch_store = torch.empty(block, dtype=acc, device=device)
    for r0 in range(0, h, rows_per_band):
        rows = min(rows_per_band, h - r0)
        shape = (n, KERNEL, KERNEL, rows, w)
        numel = n * TAPS * rows * w
        logits = logit_store[:numel].view(shape)
        _logits(centre, _windows(neighbours, r0, rows, w), vs, slope, r0, rows, logits, scratch_store[:numel].view(shape))
        e = logits.view(n, TAPS, rows, w)
        m = torch.amax(e, 1, keepdim=True)
        e.sub_(m).exp_()
        smax[:, :, r0 : r0 + rows] = m
        ssum[:, :, r0 : r0 + rows] = e.sum(1, keepdim=True)
        band = out[:, :, r0 : r0 + rows]
        for idx in range(TAPS):
            dy, dx = divmod(idx, KERNEL)
            src = values[:, :, r0 + dy : r0 + dy + rows, dx : dx + w]
            if idx == 0:
                torch.mul(src, e[:, 0:1], out=band)
            else:
                band.addcmul_(src, e[:, idx : idx + 1])
        band.div_(ssum[:, :, r0 : r0 + rows])
    return out, smax, ssum


def attention_backward(grad, centre, neighbours, values, vs, slope, out, smax, ssum):
    """Gradients of (centre, padded neighbours, padded values, v) given dL/d(out); recomputes the logits band by band."""
    n, _, h, w = centre.shape
    ch = values.shape[1]
    acc = out.dtype
    device = out.device
    g_centre = torch.empty_like(centre)
    g_neigh = torch.zeros_like(neighbours)
    g_values = torch.zeros_like(values)
    g_v = torch.zeros(4, dtype=acc, device=device)
    rows_per_band = _band_rows(n, w, BACKWARD_BAND_PIXELS)
    block = n * TAPS * min(rows_per_band, h) * w
    weight_store = torch.empty(block, dtype=acc, device=device)
    dz_store = torch.empty(block, dtype=acc, device=device)
    rel_store = torch.empty(4 * block, dtype=acc, device=device)
    for r0 in range(0, h, rows_per_band):
        rows = min(rows_per_band, h - r0)
        numel = n * TAPS * rows * w
        shape = (n, KERNEL, KERNEL, rows, w)
        rel = rel_store[: 4 * numel].view(n, 4, KERNEL, KERNEL, rows, w)
        wts = _logits(centre, _windows(neighbours, r0, rows, w), vs, slope, r0, rows, weight_store[:numel].view(shape), None, keep_rel=rel)
        wts = wts.view(n, TAPS, rows, w)
        wts.sub_(smax[:, :, r0 : r0 + rows]).exp_().div_(ssum[:, :, r0 : r0 + rows])
        g_band = grad[:, :, r0 : r0 + rows]
        # dL/dweight_o = <grad, value at offset o>; softmax backward subtracts <grad, out>.
        dz = dz_store[:numel].view(shape)
        val_win = _windows(values, r0, rows, w)
        for k in range(ch):
            gk = g_band[:, k, None, None]
            if k == 0:
                torch.mul(val_win[:, k], gk, out=dz)
            else:
                dz.addcmul_(val_win[:, k], gk)
        dz = dz.view(n, TAPS, rows, w)
        dz.sub_((g_band * out[:, :, r0 : r0 + rows]).sum(1, keepdim=True)).mul_(wts)
        for idx in range(TAPS):
            dy, dx = divmod(idx, KERNEL)
            g_values[:, :, r0 + dy : r0 + dy + rows, dx : dx + w].addcmul_(g_band, wts[:, idx : idx + 1])
        # rel holds LReLU(rel) now; its sign is the pre-activation's, which is all backward needs.
        flat_dz = dz.reshape(-1)
        for c in range(4):
            rc = rel[:, c]
            g_v[c] += torch.dot(flat_dz, rc.reshape(-1))
            rel[:, c] = torch.ops.aten.leaky_relu_backward(dz.view(shape), rc, slope, True)
        rel.mul_(torch.tensor(vs, dtype=acc, device=device).view(1, 4, 1, 1, 1, 1))
        g_centre[:, :, r0 : r0 + rows] = rel.view(n, 4, TAPS, rows, w).sum(2)
        g_neigh[:, :, r0 : r0 + rows + 2 * PAD] -= F.fold(
            rel.view(n, 4 * TAPS, rows * w), (rows + 2 * PAD, w + 2 * PAD), KERNEL
        )
    return g_centre, g_neigh, g_values, g_v


def plane_input_gradients(g_centre, g_neigh, g_values, g_v):
    """Plane gradients -> gradients of (x1, x2, x3, p, v): undo the padding, split off p."""
    n, _, h, w = g_centre.shape
    g_nb = torch.ops.aten.reflection_pad2d_backward(g_neigh, g_centre, [PAD] * 4)
    g_x3 = torch.ops.aten.reflection_pad2d_backward(g_values, g_values.new_empty((n, g_values.shape[1], h, w)), [PAD] * 4)
    g_p = g_centre[:, 2:] + g_nb[:, 2:]
    return g_centre[:, :2], g_nb[:, :2], g_x3, g_p, g_v


def relation_weight_gradients(g_v: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the two 1x1 layers on the relation (w1: 2 x 4, w2: 1 x 2) from that of v = w2 @ w1."""
    g_v = g_v.view(1, 4)
    return w2.to(g_v.dtype).view(2, 1) * g_v, (g_v * w1.to(g_v.dtype)).sum(1).view(1, 2)


def triton_training_usable(*planes) -> bool:
    """True for float32 CUDA planes when Triton can run there."""
    if not planes or any(t.device.type != "cuda" or t.dtype != torch.float32 for t in planes):
        return False
    return triton_available()


def _kernels(planes: tuple[torch.Tensor, ...]):
    """(forward, backward) for these planes: C++ on the CPU, Triton on CUDA, else the banded torch ops."""
    if training_kernels_usable(*planes):
        return attention_forward_cpu, attention_backward_cpu
    if triton_training_usable(*planes):
        from .attention_triton_training import attention_backward_triton, attention_forward_triton

        return attention_forward_triton, attention_backward_triton
    return attention_forward, attention_backward


class PairwiseAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves inputs plus softmax max/sum, recomputes the rest in backward."""

    @staticmethod
    def forward(ctx, x1, x2, x3, p, w1, w2, b2, slope):
        acc = _acc_dtype(x3)
        # Elementwise, not a matmul: autocast would run a matmul in fp16.
        v = (w2.to(acc).view(2, 1) * w1.to(acc)).sum(0)
        planes = padded_planes(x1, x2, x3, p, acc)
        forward, _ = _kernels(planes)
        out, smax, ssum = forward(*planes, v.tolist(), slope)
        ctx.slope = slope
        ctx.save_for_backward(x1, x2, x3, p, w1, w2, b2, v, out, smax, ssum)
        return in_layout_of(out.to(x3.dtype), x3)

    @staticmethod
    def backward(ctx, grad):
        x1, x2, x3, p, w1, w2, b2, v, out, smax, ssum = ctx.saved_tensors
        # The planes are cheap to rebuild (a concatenation and two pads); saving them would keep
        # a third more activation memory per SAM block.
        planes = padded_planes(x1, x2, x3, p, out.dtype)
        _, backward = _kernels(planes)
        grad = grad.to(out.dtype).contiguous()
        g1, g2, g3, gp, gv = plane_input_gradients(*backward(grad, *planes, v.tolist(), ctx.slope, out, smax, ssum))
        if p.shape[0] != gp.shape[0]:
            gp = gp.sum(0, keepdim=True)
        g_w1, g_w2 = relation_weight_gradients(gv, w1, w2)
        # Softmax is shift-invariant, so the logits' bias has zero gradient.
        g_b2 = torch.zeros_like(b2)
        return (
            in_layout_of(g1.to(x1.dtype), x1), in_layout_of(g2.to(x2.dtype), x2), in_layout_of(g3.to(x3.dtype), x3),
            gp.to(p.dtype), g_w1.to(w1.dtype), g_w2.to(w2.dtype), g_b2, None,
        )


def pairwise_attention_banded(x1, x2, x3, p, w1, w2, b2, slope: float = 0.2) -> torch.Tensor:
    """Banded pairwise attention (see module docstring); differentiable via its own backward."""
    return PairwiseAttentionFunction.apply(x1, x2, x3, p, w1, w2, b2, slope)
