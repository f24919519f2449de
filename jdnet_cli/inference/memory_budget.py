"""How much memory inference may use, what one pixel of JDNet costs, and the largest tile that fits."""
from __future__ import annotations

import math
import os
import re

import torch

from ..errors import JDNetError
from .tiling import ALIGN, MIN_TILE

# Peak bytes per pixel beyond the dense feature buffer, in units of one feature-map element: the
# attention keeps ~3 x 49 fp32 logit/weight planes, the pyramid and SC bottleneck a few C-channel
# maps. For the full model (32 ch, 32 units, fp32) this estimate is 6772 B/px; whole-image passes
# on the CPU at 128, 256 and 384 px (`python benchmarks/tiled_memory.py --measure-cost`) measured a
# marginal 6162 B/px, so the estimate is 1.10x the measurement and auto tiles keep that margin.
ATTENTION_FP32_VALUES = 160
EXTRA_FEATURE_MAPS = 8
SAFETY = 1.15
CPU_BUDGET_FRACTION = 0.25
CPU_BUDGET_CAP = 3 * 1024**3
CPU_BUDGET_FLOOR = 256 * 1024**2
GPU_FREE_FRACTION = 0.85
MAX_BATCH = 16

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_byte_size(text: str | int | float) -> int:
    """'4GB' -> 4e9 bytes, '512MiB' -> 2**29; plain numbers are bytes."""
    if isinstance(text, (int, float)):
        value = int(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise JDNetError(f"cannot read memory size {text!r} (use e.g. 4GB, 512MiB or a number of bytes)")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise JDNetError(f"memory size {text!r} must be positive")
    return value


def available_host_memory() -> int:
    """MemAvailable from /proc/meminfo (Linux), else physical pages x page size."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3


def default_cpu_budget() -> int:
    """A quarter of available RAM, within [256 MiB, 3 GiB]: larger tiles barely speed up the CPU."""
    return int(min(CPU_BUDGET_CAP, max(CPU_BUDGET_FLOOR, CPU_BUDGET_FRACTION * available_host_memory())))


def device_budget(device: torch.device, max_memory: int | None) -> int:
    """Bytes inference may use on ``device``: free GPU memory (capped by max_memory), or the CPU budget."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Memory torch's caching allocator holds but is not using is free to us as well.
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        budget = int(GPU_FREE_FRACTION * free)
        return min(budget, max_memory) if max_memory else budget
    return max_memory or default_cpu_budget()


def bytes_per_pixel(channels: int, num_units: int, dtype: torch.dtype = torch.float32) -> int:
    """Estimated peak bytes per pixel of one JDNet forward pass (dense buffer + working set)."""
    elem = torch.finfo(dtype).bits // 8
    dense = channels * (num_units + 1) * elem
    work = channels * EXTRA_FEATURE_MAPS * elem + 4 * ATTENTION_FP32_VALUES
    return int(math.ceil(SAFETY * (dense + work)))


def choose_tile(height: int, width: int, per_pixel: int, budget: int) -> int:
    """Largest 16-px-aligned square tile whose pass fits ``budget``; 0 when the whole image fits."""
    if height * width * per_pixel <= budget:
        return 0
    side = int(math.sqrt(budget / per_pixel)) // ALIGN * ALIGN
    return max(MIN_TILE, side)


def choose_batch(tile_pixels: int, per_pixel: int, budget: int, tiles: int) -> int:
    """How many tiles of ``tile_pixels`` to run at once within ``budget`` (at least 1, at most MAX_BATCH)."""
    return max(1, min(MAX_BATCH, tiles, budget // max(1, tile_pixels * per_pixel)))
