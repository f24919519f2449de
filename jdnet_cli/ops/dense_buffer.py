"""Feature buffers for the dense connections, so that no unit re-concatenates the ones before it.

``torch.cat`` per unit copies every earlier feature again, keeps each concatenation alive for
backward and, in backward, adds the growing gradients slice by slice. Here all features live in
one channels-last buffer (rows = pixels, columns = channels), each fusion conv is one GEMM over
the buffer's column prefix, and in backward every fusion accumulates its input gradient into one
matching gradient buffer with an in-place GEMM. Autograd only sees scalar tokens chaining the
appends, which keeps the backward order right (a unit's gradient is read after every fusion that
used it has run) at no cost.

With the CPU kernels the input gradients are deferred instead: each fusion's backward keeps its
pre-activation gradient g_i (P x 32) and computes only its weight gradient, and a slot's gradient
is computed once, when autograd asks for it, as sum_i g_i W_i[:, slot] over the fusions that read
it (one pass of the forward fusion kernel over the kept g_i). Accumulating into a gradient buffer
read and wrote every earlier slot's gradient once per fusion; now each is written once.

For inference the same idea needs no autograd: ``reusable_feature_buffer`` (one channels-last
buffer) and ``SlotGroups`` (slots in pairs, for the CPU fusion kernel) keep their storage per
thread between calls.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from . import cpu_kernels
from .backend import cpu_mixed_precision_requested
from .fusion_bf16 import bf16_fusions_usable, fusion_bf16, fusion_weight_grad_bf16

# Inference buffers up to this size are kept for the next call (same limit as cpu_allocator's
# heap: glibc keeps such blocks mapped anyway, so keeping the tensor costs no extra memory).
REUSE_LIMIT_BYTES = 1 << 30
_reusable = threading.local()


def _reusable_storage(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A flat CPU tensor of ``numel`` elements whose storage is reused by the next call on this thread.

    The dense buffer is JDNet's largest tensor (4 KiB per pixel at 32 units). Allocated afresh per
    image, it was either faulted in again page by page or, freed between other allocations, left
    the heap fragmented so that the next image's buffer needed new memory (peak RSS grew by ~60%
    from the first image to the second at 481x321). Per thread, so concurrent models never share one.
    """
    kept = getattr(_reusable, "storage", None)
    fits = (
        kept is not None and kept.numel() >= numel and kept.dtype == like.dtype
        and kept.is_inference() == torch.is_inference_mode_enabled()
    )
    if not fits:
        _reusable.storage = None  # drop the old one first, so the two never coexist
        kept = torch.empty(numel, dtype=like.dtype)
        if numel * kept.element_size() <= REUSE_LIMIT_BYTES:
            _reusable.storage = kept
    return kept[:numel]


def reusable_feature_buffer(n: int, channels: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """An N x C x H x W channels-last CPU buffer whose storage is reused by the next call on this thread."""
    return _reusable_storage(n * channels * h * w, like).view(n, h, w, channels).permute(0, 3, 1, 2)


SLOTS_PER_GROUP = 2


class SlotGroups:
    """Inference feature store for the CPU fusion kernel: slots in pairs, each pair its own row block.

    In one pixels x (slots * C) block, a fusion reading the first k channels reads a short piece of
    every 4 KiB row, which the memory system serves at ~8 GB/s here against ~22 GB/s for a
    contiguous read. With slots paired into P x 2C blocks (256-byte rows at C = 32) each block is
    read front to back. Measured with the kernel at 481x321: 126-157 GFLOP/s over all prefix
    lengths against 67-135 GFLOP/s in one block; groups of 1, 4 and 8 slots were slower at some
    lengths.
    """

    def __init__(self, storage: torch.Tensor, n: int, slots: int, channels: int, h: int, w: int):
        self.shape = (n, h, w)
        self.channels = channels
        pixels = n * h * w
        self.groups: list[torch.Tensor] = []
        offset = 0
        for first in range(0, slots, SLOTS_PER_GROUP):
            width = channels * min(SLOTS_PER_GROUP, slots - first)
            self.groups.append(storage[offset : offset + pixels * width].view(pixels, width))
            offset += pixels * width

    def slot(self, i: int) -> torch.Tensor:
        """N x C x H x W view (channels-last strides) of slot ``i``, for a unit to write its output into."""
        group, j = divmod(i, SLOTS_PER_GROUP)
        c = self.channels
        n, h, w = self.shape
        return self.groups[group][:, j * c : (j + 1) * c].view(n, h, w, c).permute(0, 3, 1, 2)

    def prefix(self, slots: int) -> list[torch.Tensor]:
        """The first ``slots`` slots as row segments (P x width), in channel order."""
        full, rest = divmod(slots, SLOTS_PER_GROUP)
        segments = self.groups[:full]
        if rest:
            segments = segments + [self.groups[full][:, : rest * self.channels]]
        return segments


def reusable_slot_groups(n: int, slots: int, channels: int, h: int, w: int, like: torch.Tensor) -> SlotGroups:
    """A ``SlotGroups`` store on this thread's reusable storage (see ``_reusable_storage``)."""
    return SlotGroups(_reusable_storage(n * slots * channels * h * w, like), n, slots, channels, h, w)


class FeatureBuffer:
    """Training feature store: pixels x channels row blocks with lazily allocated gradient twins.

    On the CPU the slots are paired into P x 2C blocks as in ``SlotGroups`` (a prefix is then read
    block by block, front to back, by the C++ fusion kernel or by one GEMM per block); elsewhere
    all slots share one P x (slots * C) block, so that each fusion is one GEMM. With ``dtype``
    bfloat16 (CPU mixed precision, see ``fusion_bf16``) the blocks hold bfloat16 copies of the
    units' outputs, and every fusion product runs in the bfloat16 kernels.
    """

    def __init__(self, like: torch.Tensor, slots: int, dtype: torch.dtype | None = None):
        n, c, h, w = like.shape
        self.shape = (n, h, w)
        self.channels = c
        per_block = SLOTS_PER_GROUP if like.device.type == "cpu" else slots
        pixels = n * h * w
        self.bf16 = dtype == torch.bfloat16
        self.blocks = [
            torch.empty((pixels, c * min(per_block, slots - first)), dtype=dtype or like.dtype, device=like.device)
            for first in range(0, slots, per_block)
        ]
        self.per_block = per_block
        self.grad_blocks: list[torch.Tensor] | None = None
        self.written: list[bool] = []
        # Deferred input gradients (CPU kernels): (channels read, weight C x k, g_i) per fusion
        # whose backward has run; None on the gradient-buffer path.
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] | None = None

    def defer_input_gradients(self) -> None:
        """Switch backward to deferred slot gradients (``slot_gradient``); set before any backward."""
        self.pending = []

    def slot_gradient(self, slot: int) -> torch.Tensor:
        """P x C gradient of ``slot``: sum of g_i W_i[:, slot] over the kept fusions that read it."""
        c = self.channels
        lo = slot * c
        readers = [(w, g) for k, w, g in self.pending if k > lo]
        weight_t = torch.cat([w[:, lo : lo + c] for w, _ in readers], 0)
        zero = torch.zeros(c, dtype=weight_t.dtype)
        if self.bf16:
            return fusion_bf16([g for _, g in readers], weight_t, zero, None)
        return torch.ops.jdnet.dense_fusion([g for _, g in readers], weight_t, zero, 1.0)

    def columns(self, slot: int, blocks: list[torch.Tensor]) -> torch.Tensor:
        """N x C x H x W view (channels-last strides) of one slot of ``blocks``."""
        c = self.channels
        n, h, w = self.shape
        block, j = divmod(slot, self.per_block)
        return blocks[block][:, j * c : (j + 1) * c].view(n, h, w, c).permute(0, 3, 1, 2)

    def prefix(self, k: int, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        """The first ``k`` channels of ``blocks`` as row segments (P x width), in channel order."""
        segments = []
        for block in blocks:
            if k <= 0:
                break
            segments.append(block[:, : min(k, block.shape[1])])
            k -= block.shape[1]
        return segments

    def gradients(self) -> list[torch.Tensor]:
        """The gradient twins; a block's contents are valid once ``written[i]`` (see ``gradient_block``)."""
        if self.grad_blocks is None:
            # Not zeroed: the first fusion to reach a block in backward (the last fusion, which
            # reads every slot) overwrites it whole, which spares a memset of the whole buffer
            # (69 MB at 32 units, batch 4 of 64x64) and a read of those zeros per step.
            self.grad_blocks = [torch.empty_like(b) for b in self.blocks]
            self.written = [False] * len(self.blocks)
        return self.grad_blocks

    def gradient_block(self, i: int) -> torch.Tensor:
        """Gradient block ``i``, zeroed first if nothing has written it yet."""
        blocks = self.gradients()
        if not self.written[i]:
            blocks[i].zero_()
            self.written[i] = True
        return blocks[i]


class _Append(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token, y, buf: FeatureBuffer, slot: int):
        buf.columns(slot, buf.blocks).copy_(y)
        ctx.buf, ctx.slot = buf, slot
        ctx.channels_last = y.is_contiguous(memory_format=torch.channels_last)
        return token.detach().clone()

    @staticmethod
    def backward(ctx, g_token):
        buf = ctx.buf
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        if buf.pending is not None:
            n, h, w = buf.shape
            g = buf.slot_gradient(ctx.slot).view(n, h, w, buf.channels).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
            if ctx.slot == 0:
                buf.pending = []  # the last reader: a second backward starts afresh
            return g_token, g, None, None
        buf.gradient_block(ctx.slot // buf.per_block)
        g = buf.columns(ctx.slot, buf.gradients()).contiguous(memory_format=fmt)
        if ctx.slot == 0:
            buf.grad_blocks = None  # the last reader: a second backward starts from zero again
        return g_token, g, None, None


def _fusion_kernel_usable(features: torch.Tensor, weight: torch.Tensor) -> bool:
    return weight.shape[0] == cpu_kernels.FUSION_OUT and cpu_kernels.cpu_kernels_usable(features, weight)


class _PrefixFuseLeaky(torch.autograd.Function):
    """LReLU(conv1x1(first k channels of the buffer)); saves only its output (LReLU keeps the sign)."""

    @staticmethod
    def forward(ctx, token, weight, bias, buf: FeatureBuffer, k: int, slope: float):
        co = weight.shape[0]
        n, h, w = buf.shape
        segments = buf.prefix(k, buf.blocks)
        w2 = weight.view(co, k)
        if buf.bf16:
            out = fusion_bf16(segments, w2.t(), bias, slope)
        elif _fusion_kernel_usable(buf.blocks[0], weight):
            # Register-blocked product with the activation in its epilogue, ~2x MKL's sgemm on
            # this tall, 32-wide product.
            out = cpu_kernels.dense_fusion_cpu(segments, weight, bias, slope)
        else:
            out = torch.addmm(bias, segments[0], w2[:, : segments[0].shape[1]].t())
            offset = segments[0].shape[1]
            for seg in segments[1:]:
                out.addmm_(seg, w2[:, offset : offset + seg.shape[1]].t())
                offset += seg.shape[1]
            F.leaky_relu(out, slope, inplace=True)
        ctx.buf, ctx.k, ctx.slope = buf, k, slope
        ctx.save_for_backward(weight, out)
        return out.view(n, h, w, co).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, g_out):
        weight, out = ctx.saved_tensors
        buf, k = ctx.buf, ctx.k
        co = weight.shape[0]
        w2 = weight.view(co, k)
        g = g_out.permute(0, 2, 3, 1).reshape(-1, co)
        g = torch.ops.aten.leaky_relu_backward(g, out, ctx.slope, True)
        segments = buf.prefix(k, buf.blocks)
        if buf.bf16:
            # Rounded once here: every slot this fusion read reuses it for its gradient.
            buf.pending.append((k, w2, g.to(torch.bfloat16)))
            g_weight = fusion_weight_grad_bf16(g, segments).view_as(weight)
            return torch.zeros((), dtype=g_out.dtype, device=g_out.device), g_weight, g.sum(0), None, None, None
        if buf.pending is not None:
            buf.pending.append((k, w2, g))
            g_weight = cpu_kernels.dense_fusion_backward_cpu(g, weight, segments, [], [])
            return torch.zeros((), dtype=g_out.dtype, device=g_out.device), g_weight, g.sum(0), None, None, None
        buf.gradients()
        g_weight = torch.empty_like(w2)
        offset = 0
        for i, seg in enumerate(segments):
            width = seg.shape[1]
            if not buf.written[i] and width == buf.blocks[i].shape[1]:
                torch.mm(g, w2[:, offset : offset + width], out=buf.grad_blocks[i])
                buf.written[i] = True
            else:
                buf.gradient_block(i)[:, :width].addmm_(g, w2[:, offset : offset + width])
            torch.mm(g.t(), seg, out=g_weight[:, offset : offset + width])
            offset += width
        return torch.zeros((), dtype=g_out.dtype, device=g_out.device), g_weight.view_as(weight), g.sum(0), None, None, None


def dense_forward(units, fusions, f0: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """Differentiable dense stack: unit i sees LReLU(conv1x1([f0, unit_0, ..., unit_{i-1}]))."""
    # The kernels' condition, decided once here so that every fusion's backward takes the same path.
    kernels = bool(fusions) and _fusion_kernel_usable(f0.detach(), fusions[0][0].weight.detach())
    bf16 = kernels and cpu_mixed_precision_requested() and bf16_fusions_usable()
    buf = FeatureBuffer(f0, len(units) + 1, torch.bfloat16 if bf16 else None)
    if kernels:
        buf.defer_input_gradients()
    token = _Append.apply(torch.zeros((), dtype=f0.dtype, device=f0.device), f0, buf, 0)
    current = f0
    for i, (unit, fuse) in enumerate(zip(units, fusions)):
        token = _Append.apply(token, unit(current, loc), buf, i + 1)
        conv, act = fuse[0], fuse[1]
        current = _PrefixFuseLeaky.apply(token, conv.weight, conv.bias, buf, (i + 2) * buf.channels, act.negative_slope)
    return current
