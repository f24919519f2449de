"""Fused pairwise attention for CUDA inference as one Triton kernel (imported only when needed).

One program handles BLOCK pixels. For each of the 49 offsets it reads the neighbour's two
relation channels, two position channels and C value channels (reflect-padded by index
arithmetic, no padded copies), forms the logit and folds it into an online softmax, so logits,
weights and neighbourhoods never touch device memory. Loads take any strides (NCHW or
channels-last, a batch-1 position map broadcast with stride 0) and any float dtype; arithmetic is
fp32. Triton is not a dependency of the package: without it CUDA falls back to the banded op.
Setting TRITON_INTERPRET=1 before import runs the kernel on CPU tensors (used by the tests).
"""
from __future__ import annotations

import functools
import os

import torch

KERNEL = 7
BLOCK = 128


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when Triton imports and can run here (a CUDA device, or the interpreter)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def pairwise_attention_kernel(
        x1_ptr, x2_ptr, x3_ptr, p_ptr, v_ptr, out_ptr,
        total, H, W, slope,
        s1n, s1c, s1h, s1w,
        s2n, s2c, s2h, s2w,
        s3n, s3c, s3h, s3w,
        spn, spc, sph, spw,
        son, soc, soh, sow,
        C: tl.constexpr, CP: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < total
        x = offs % W
        t = offs // W
        y = t % H
        n = t // H
        a0 = tl.load(x1_ptr + n * s1n + y * s1h + x * s1w, mask=mask, other=0.0).to(tl.float32)
        a1 = tl.load(x1_ptr + n * s1n + s1c + y * s1h + x * s1w, mask=mask, other=0.0).to(tl.float32)
        pa0 = tl.load(p_ptr + n * spn + y * sph + x * spw, mask=mask, other=0.0).to(tl.float32)
        pa1 = tl.load(p_ptr + n * spn + spc + y * sph + x * spw, mask=mask, other=0.0).to(tl.float32)
        v0 = tl.load(v_ptr)
        v1 = tl.load(v_ptr + 1)
        v2 = tl.load(v_ptr + 2)
        v3 = tl.load(v_ptr + 3)
        cidx = tl.arange(0, CP)
        vmask = mask[:, None] & (cidx < C)[None, :]
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK], tl.float32)
        acc = tl.zeros([BLOCK, CP], tl.float32)
        for dy in tl.static_range(K):
            yy = y + (dy - K // 2)
            yy = tl.where(yy < 0, -yy, yy)
            yy = tl.where(yy >= H, 2 * H - 2 - yy, yy)
            for dx in tl.static_range(K):
                xx = x + (dx - K // 2)
                xx = tl.where(xx < 0, -xx, xx)
                xx = tl.where(xx >= W, 2 * W - 2 - xx, xx)
                o2 = x2_ptr + n * s2n + yy * s2h + xx * s2w
                op = p_ptr + n * spn + yy * sph + xx * spw
                r0 = a0 - tl.load(o2, mask=mask, other=0.0).to(tl.float32)
                r1 = a1 - tl.load(o2 + s2c, mask=mask, other=0.0).to(tl.float32)
                r2 = pa0 - tl.load(op, mask=mask, other=0.0).to(tl.float32)
                r3 = pa1 - tl.load(op + spc, mask=mask, other=0.0).to(tl.float32)
                z = (
                    v0 * tl.where(r0 > 0, r0, r0 * slope)
                    + v1 * tl.where(r1 > 0, r1, r1 * slope)
                    + v2 * tl.where(r2 > 0, r2, r2 * slope)
                    + v3 * tl.where(r3 > 0, r3, r3 * slope)
                )
                m_new = tl.maximum(m, z)
                alpha = tl.exp(m - m_new)
                e = tl.exp(z - m_new)
                vals = tl.load(
                    x3_ptr + (n * s3n + yy * s3h + xx * s3w)[:, None] + cidx[None, :] * s3c, mask=vmask, other=0.0
                ).to(tl.float32)
                acc = acc * alpha[:, None] + e[:, None] * vals
                s = s * alpha + e
                m = m_new
        res = acc / s[:, None]
        dst = out_ptr + (n * son + y * soh + x * sow)[:, None] + cidx[None, :] * soc
        tl.store(dst, res.to(out_ptr.dtype.element_ty), mask=vmask)

    return pairwise_attention_kernel


def pairwise_attention_triton(x1, x2, x3, p, w1, w2, b2, slope: float = 0.2) -> torch.Tensor:
    """Forward-only fused op with the reference's signature; output has x3's dtype and layout."""
    import triton

    n, _, h, w = x1.shape
    c = x3.shape[1]
    # conv_w.2 . conv_w.1 collapses to one 4-vector; the bias cancels in the softmax.
    # (elementwise rather than a matmul, which autocast would run in fp16)
    v = (w2.float().view(2, 1) * w1.float()).sum(0).contiguous()
    p = p.expand(n, -1, -1, -1)
    out = torch.empty_like(x3)
    total = n * h * w
    grid = (triton.cdiv(total, BLOCK),)
    _kernel()[grid](
        x1, x2, x3, p, v, out,
        total, h, w, float(slope),
        *x1.stride(), *x2.stride(), *x3.stride(), *p.stride(), *out.stride(),
        C=c, CP=triton.next_power_of_2(c), K=KERNEL, BLOCK=BLOCK,
    )
    return out
