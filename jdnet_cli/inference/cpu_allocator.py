"""glibc malloc settings for CPU inference and training: reuse freed feature maps instead of unmapping them."""
from __future__ import annotations

import ctypes
import ctypes.util

# By default glibc serves every block over 32 MiB (dynamic threshold) with a fresh mmap and unmaps
# it on free, so each of JDNet's ~1,000 full-size intermediate tensors per pass pays kernel page
# faults and zeroing again. Serving them from the heap and not trimming it made a 481x321 pass
# ~25% faster on the 2-core CPU at the same peak RSS (benchmarks/conv_stack_yardstick.py).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_HEAP_LIMIT = 1 << 30  # blocks above 1 GiB still get their own mapping and go back on free

_applied = False


def keep_freed_memory() -> bool:
    """Serve large allocations from glibc's heap and keep freed memory; False where not glibc."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _HEAP_LIMIT) == 1 and mallopt(_M_TRIM_THRESHOLD, _HEAP_LIMIT) == 1
    _applied = ok
    return ok
