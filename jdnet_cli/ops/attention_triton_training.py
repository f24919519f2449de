"""The SAM attention's training kernels for CUDA: forward and backward in Triton (imported when needed).

Same inputs and outputs as ``attention_banded.attention_forward`` / ``attention_backward`` (the
planar, reflect-padded planes; fp32), so ``PairwiseAttentionFunction`` can pick them for float32
CUDA planes where it would otherwise loop over the 49 offsets in torch ops. Three kernels:

* forward: one program per BLOCK pixels, an online softmax over the 49 offsets (as the inference
  kernel), writing the output and the softmax max and sum that backward needs;
* backward at the centres: recomputes each offset's weight p and dz = p (<g, value> - <g, out>),
  and gathers the centre planes' gradient and a per-program partial of dL/dv;
* backward at the neighbours: each padded position gathers from the 49 centres that read it, so the
  value and neighbour gradients need no atomics and come out the same on every run.

Without a GPU they run under ``TRITON_INTERPRET=1`` on CPU tensors (the tests). Not yet timed on a
GPU: no session has had one.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

KERNEL = 7
PAD = KERNEL // 2
BLOCK = 64


@triton.jit
def _lrelu(r, slope):
    return tl.where(r > 0, r, r * slope)


@triton.jit
def _centre_pixels(c_ptr, offs, total, H, W):
    """(mask, x, y, n, c0..c3): each lane's pixel and its four centre-plane values."""
    mask = offs < total
    x = offs % W
    t = offs // W
    y = t % H
    n = t // H
    cbase = c_ptr + n * 4 * H * W + y * W + x
    c0 = tl.load(cbase, mask=mask, other=0.0)
    c1 = tl.load(cbase + H * W, mask=mask, other=0.0)
    c2 = tl.load(cbase + 2 * H * W, mask=mask, other=0.0)
    c3 = tl.load(cbase + 3 * H * W, mask=mask, other=0.0)
    return mask, x, y, n, c0, c1, c2, c3


@triton.jit
def forward_kernel(
    c_ptr, nb_ptr, val_ptr, out_ptr, smax_ptr, ssum_ptr,
    total, H, W, v0, v1, v2, v3, slope,
    C: tl.constexpr, CP: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask, x, y, n, c0, c1, c2, c3 = _centre_pixels(c_ptr, offs, total, H, W)
    HW = H * W
    WP = W + K - 1
    HWP = (H + K - 1) * WP
    cidx = tl.arange(0, CP)
    vmask = mask[:, None] & (cidx < C)[None, :]
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, CP], tl.float32)
    for dy in tl.static_range(K):
        for dx in tl.static_range(K):
            q = (y + dy) * WP + x + dx
            nb = nb_ptr + n * 4 * HWP + q
            z = (
                v0 * _lrelu(c0 - tl.load(nb, mask=mask, other=0.0), slope)
                + v1 * _lrelu(c1 - tl.load(nb + HWP, mask=mask, other=0.0), slope)
                + v2 * _lrelu(c2 - tl.load(nb + 2 * HWP, mask=mask, other=0.0), slope)
                + v3 * _lrelu(c3 - tl.load(nb + 3 * HWP, mask=mask, other=0.0), slope)
            )
            m_new = tl.maximum(m, z)
            alpha = tl.exp(m - m_new)
            e = tl.exp(z - m_new)
            vals = tl.load(val_ptr + (n * C * HWP + q)[:, None] + cidx[None, :] * HWP, mask=vmask, other=0.0)
            acc = acc * alpha[:, None] + e[:, None] * vals
            s = s * alpha + e
            m = m_new
    pix = n * HW + y * W + x
    tl.store(out_ptr + (n * C * HW + y * W + x)[:, None] + cidx[None, :] * HW, acc / s[:, None], mask=vmask)
    tl.store(smax_ptr + pix, m, mask=mask)
    tl.store(ssum_ptr + pix, s, mask=mask)


@triton.jit
def centre_backward_kernel(
    g_ptr, c_ptr, nb_ptr, val_ptr, out_ptr, smax_ptr, ssum_ptr, gc_ptr, gdot_ptr, gv_ptr,
    total, H, W, v0, v1, v2, v3, slope,
    C: tl.constexpr, CP: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask, x, y, n, c0, c1, c2, c3 = _centre_pixels(c_ptr, offs, total, H, W)
    HW = H * W
    WP = W + K - 1
    HWP = (H + K - 1) * WP
    cidx = tl.arange(0, CP)
    vmask = mask[:, None] & (cidx < C)[None, :]
    planar = (n * C * HW + y * W + x)[:, None] + cidx[None, :] * HW
    g = tl.load(g_ptr + planar, mask=vmask, other=0.0)
    gdot = tl.sum(g * tl.load(out_ptr + planar, mask=vmask, other=0.0), 1)
    pix = n * HW + y * W + x
    m = tl.load(smax_ptr + pix, mask=mask, other=0.0)
    inv_s = 1.0 / tl.load(ssum_ptr + pix, mask=mask, other=1.0)
    gc0 = tl.zeros([BLOCK], tl.float32)
    gc1 = tl.zeros([BLOCK], tl.float32)
    gc2 = tl.zeros([BLOCK], tl.float32)
    gc3 = tl.zeros([BLOCK], tl.float32)
    gv0 = tl.zeros([BLOCK], tl.float32)
    gv1 = tl.zeros([BLOCK], tl.float32)
    gv2 = tl.zeros([BLOCK], tl.float32)
    gv3 = tl.zeros([BLOCK], tl.float32)
    for dy in tl.static_range(K):
        for dx in tl.static_range(K):
            q = (y + dy) * WP + x + dx
            nb = nb_ptr + n * 4 * HWP + q
            r0 = c0 - tl.load(nb, mask=mask, other=0.0)
            r1 = c1 - tl.load(nb + HWP, mask=mask, other=0.0)
            r2 = c2 - tl.load(nb + 2 * HWP, mask=mask, other=0.0)
            r3 = c3 - tl.load(nb + 3 * HWP, mask=mask, other=0.0)
            l0 = _lrelu(r0, slope)
            l1 = _lrelu(r1, slope)
            l2 = _lrelu(r2, slope)
            l3 = _lrelu(r3, slope)
            p = tl.exp(v0 * l0 + v1 * l1 + v2 * l2 + v3 * l3 - m) * inv_s
            vals = tl.load(val_ptr + (n * C * HWP + q)[:, None] + cidx[None, :] * HWP, mask=vmask, other=0.0)
            dz = tl.where(mask, p * (tl.sum(g * vals, 1) - gdot), 0.0)
            gv0 += dz * l0
            gv1 += dz * l1
            gv2 += dz * l2
            gv3 += dz * l3
            gc0 += dz * tl.where(r0 > 0, v0, v0 * slope)
            gc1 += dz * tl.where(r1 > 0, v1, v1 * slope)
            gc2 += dz * tl.where(r2 > 0, v2, v2 * slope)
            gc3 += dz * tl.where(r3 > 0, v3, v3 * slope)
    tl.store(gc_ptr + n * 4 * HW + y * W + x, gc0, mask=mask)
    tl.store(gc_ptr + n * 4 * HW + HW + y * W + x, gc1, mask=mask)
    tl.store(gc_ptr + n * 4 * HW + 2 * HW + y * W + x, gc2, mask=mask)
    tl.store(gc_ptr + n * 4 * HW + 3 * HW + y * W + x, gc3, mask=mask)
    tl.store(gdot_ptr + pix, gdot, mask=mask)
    tl.store(gv_ptr + pid * 4, tl.sum(gv0, 0))
    tl.store(gv_ptr + pid * 4 + 1, tl.sum(gv1, 0))
    tl.store(gv_ptr + pid * 4 + 2, tl.sum(gv2, 0))
    tl.store(gv_ptr + pid * 4 + 3, tl.sum(gv3, 0))


@triton.jit
def neighbour_backward_kernel(
    g_ptr, c_ptr, nb_ptr, val_ptr, smax_ptr, ssum_ptr, gdot_ptr, gnb_ptr, gval_ptr,
    total, H, W, v0, v1, v2, v3, slope,
    C: tl.constexpr, CP: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr,
):
    # One lane per padded position q; the centres that read q at offset (dy, dx) sit at q - (dy, dx).
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    WP = W + K - 1
    HP = H + K - 1
    X = offs % WP
    t = offs // WP
    Y = t % HP
    n = t // HP
    HW = H * W
    HWP = HP * WP
    nb = nb_ptr + n * 4 * HWP + Y * WP + X
    n0 = tl.load(nb, mask=mask, other=0.0)
    n1 = tl.load(nb + HWP, mask=mask, other=0.0)
    n2 = tl.load(nb + 2 * HWP, mask=mask, other=0.0)
    n3 = tl.load(nb + 3 * HWP, mask=mask, other=0.0)
    cidx = tl.arange(0, CP)
    cmask = (cidx < C)[None, :]
    qv = (n * C * HWP + Y * WP + X)[:, None] + cidx[None, :] * HWP
    vals = tl.load(val_ptr + qv, mask=mask[:, None] & cmask, other=0.0)
    gn0 = tl.zeros([BLOCK], tl.float32)
    gn1 = tl.zeros([BLOCK], tl.float32)
    gn2 = tl.zeros([BLOCK], tl.float32)
    gn3 = tl.zeros([BLOCK], tl.float32)
    gval = tl.zeros([BLOCK, CP], tl.float32)
    for dy in tl.static_range(K):
        for dx in tl.static_range(K):
            cy = Y - dy
            cx = X - dx
            ok = mask & (cy >= 0) & (cy < H) & (cx >= 0) & (cx < W)
            cyc = tl.where(ok, cy, 0)
            cxc = tl.where(ok, cx, 0)
            cbase = c_ptr + n * 4 * HW + cyc * W + cxc
            r0 = tl.load(cbase, mask=ok, other=0.0) - n0
            r1 = tl.load(cbase + HW, mask=ok, other=0.0) - n1
            r2 = tl.load(cbase + 2 * HW, mask=ok, other=0.0) - n2
            r3 = tl.load(cbase + 3 * HW, mask=ok, other=0.0) - n3
            z = v0 * _lrelu(r0, slope) + v1 * _lrelu(r1, slope) + v2 * _lrelu(r2, slope) + v3 * _lrelu(r3, slope)
            pix = n * HW + cyc * W + cxc
            m = tl.load(smax_ptr + pix, mask=ok, other=0.0)
            s = tl.load(ssum_ptr + pix, mask=ok, other=1.0)
            p = tl.where(ok, tl.exp(z - m) / s, 0.0)
            g = tl.load(
                g_ptr + (n * C * HW + cyc * W + cxc)[:, None] + cidx[None, :] * HW, mask=ok[:, None] & cmask, other=0.0
            )
            gdot = tl.load(gdot_ptr + pix, mask=ok, other=0.0)
            dz = p * (tl.sum(g * vals, 1) - gdot)
            gval += g * p[:, None]
            gn0 -= dz * tl.where(r0 > 0, v0, v0 * slope)
            gn1 -= dz * tl.where(r1 > 0, v1, v1 * slope)
            gn2 -= dz * tl.where(r2 > 0, v2, v2 * slope)
            gn3 -= dz * tl.where(r3 > 0, v3, v3 * slope)
    gnb = gnb_ptr + n * 4 * HWP + Y * WP + X
    tl.store(gnb, gn0, mask=mask)
    tl.store(gnb + HWP, gn1, mask=mask)
    tl.store(gnb + 2 * HWP, gn2, mask=mask)
    tl.store(gnb + 3 * HWP, gn3, mask=mask)
    tl.store(gval_ptr + qv, gval, mask=mask[:, None] & cmask)


def _check(*planes: torch.Tensor) -> None:
    if any(t.dtype != torch.float32 or not t.is_contiguous() for t in planes):
        raise ValueError("the Triton attention kernels take contiguous float32 planes")


def attention_forward_triton(centre, neighbours, values, v: list[float], slope: float):
    """(out, softmax max, softmax sum) from the padded planes; see ``attention_banded.attention_forward``."""
    _check(centre, neighbours, values)
    n, _, h, w = centre.shape
    c = values.shape[1]
    out = centre.new_empty((n, c, h, w))
    smax = centre.new_empty((n, 1, h, w))
    ssum = centre.new_empty((n, 1, h, w))
    total = n * h * w
    forward_kernel[(triton.cdiv(total, BLOCK),)](
        centre, neighbours, values, out, smax, ssum, total, h, w, *map(float, v), float(slope),
        C=c, CP=triton.next_power_of_2(c), K=KERNEL, BLOCK=BLOCK,
    )
    return out, smax, ssum


def attention_backward_triton(grad, centre, neighbours, values, v: list[float], slope: float, out, smax, ssum):
    """Gradients of (centre, padded neighbours, padded values, v) given dL/d(out)."""
    _check(grad, centre, neighbours, values, out, smax, ssum)
    n, _, h, w = centre.shape
    c = values.shape[1]
    total = n * h * w
    programs = triton.cdiv(total, BLOCK)
    g_centre = torch.empty_like(centre)
    gdot = torch.empty_like(smax)
    gv_parts = centre.new_empty((programs, 4))
    g_neigh = torch.empty_like(neighbours)
    g_values = torch.empty_like(values)
    meta = dict(C=c, CP=triton.next_power_of_2(c), K=KERNEL, BLOCK=BLOCK)
    scalars = (*map(float, v), float(slope))
    centre_backward_kernel[(programs,)](
        grad, centre, neighbours, values, out, smax, ssum, g_centre, gdot, gv_parts, total, h, w, *scalars, **meta
    )
    padded_total = n * (h + 2 * PAD) * (w + 2 * PAD)
    neighbour_backward_kernel[(triton.cdiv(padded_total, BLOCK),)](
        grad, centre, neighbours, values, smax, ssum, gdot, g_neigh, g_values, padded_total, h, w, *scalars, **meta
    )
    return g_centre, g_neigh, g_values, gv_parts.sum(0)
