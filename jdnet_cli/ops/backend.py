"""Which back end the ops run on: each op's fastest available one, or the plain torch reference."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

BACKENDS = ("auto", "reference")
_current: contextvars.ContextVar[str] = contextvars.ContextVar("jdnet_ops_backend", default="auto")


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run the ops inside on ``name``: "auto" (default) or "reference" (plain torch ops throughout).

    The reference back end is JDNet as first written: the unfold attention, no C++ or Triton
    kernels, the dense inputs as a growing ``torch.cat``. It holds for this thread (context) only.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown ops back end {name!r}; choose from {', '.join(BACKENDS)}")
    token = _current.set(name)
    try:
        yield
    finally:
        _current.reset(token)


def current_backend() -> str:
    """The back end the ops run on here and now."""
    return _current.get()


def reference() -> bool:
    """True inside ``backend("reference")``."""
    return _current.get() == "reference"


_bf16_fusions: contextvars.ContextVar[bool] = contextvars.ContextVar("jdnet_cpu_bf16_fusions", default=False)


@contextlib.contextmanager
def cpu_bf16_fusions(enabled: bool = True) -> Iterator[None]:
    """Inside, training's dense fusions on the CPU multiply bfloat16 operands into float32 sums.

    Only where ``fusion_bf16.bf16_fusions_usable()`` (AVX512-BF16); elsewhere, and for inference,
    the fusions stay float32. Mixed precision as CUDA training's autocast is, for this thread only.
    """
    token = _bf16_fusions.set(enabled)
    try:
        yield
    finally:
        _bf16_fusions.reset(token)


def cpu_bf16_fusions_requested() -> bool:
    """True inside ``cpu_bf16_fusions()``."""
    return _bf16_fusions.get()
