"""Which back end the ops run on: each op's fastest available one, or the plain torch reference."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

BACKENDS = ("auto", "reference")
_current: contextvars.ContextVar[str] = contextvars.ContextVar("jdnet_ops_backend", default="auto")


@contextlib.contextmanager
def _set_in_context(var: contextvars.ContextVar, value: object) -> Iterator[None]:
    # Context variables, not globals: each thread keeps its own setting, and an exception inside
    # cannot leave it set.
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run the ops inside on ``name``: "auto" (default) or "reference" (plain torch ops throughout).

    The reference back end is JDNet as first written: the unfold attention, no C++ or Triton
    kernels, the dense inputs as a growing ``torch.cat``. It holds for this thread (context) only.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown ops back end {name!r}; choose from {', '.join(BACKENDS)}")
    with _set_in_context(_current, name):
        yield


def current_backend() -> str:
    """The back end the ops run on here and now."""
    return _current.get()


def reference() -> bool:
    """True inside ``backend("reference")``."""
    return _current.get() == "reference"


_mixed: contextvars.ContextVar[bool] = contextvars.ContextVar("jdnet_cpu_mixed_precision", default=False)


@contextlib.contextmanager
def cpu_mixed_precision(enabled: bool = True) -> Iterator[None]:
    """Inside, training on the CPU runs in mixed precision, as CUDA training runs under fp16 autocast.

    The dense fusions multiply bfloat16 operands into float32 sums (``fusion_bf16``) and each
    joint unit's plain convs, its pyramid and SC bottleneck, run under bfloat16 autocast
    (``low_precision_region``); the SAM block, the losses and the optimizer stay float32. Callers
    turn it on only where ``fusion_bf16.bf16_fusions_usable()`` (AVX512-BF16, which oneDNN's bf16
    convolutions need to be fast too). Inference never uses it. For this thread (context) only.
    """
    with _set_in_context(_mixed, enabled):
        yield


def cpu_mixed_precision_requested() -> bool:
    """True inside ``cpu_mixed_precision()``."""
    return _mixed.get()
