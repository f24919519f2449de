"""Seam-free tiled inference: a 16-px-aligned tile grid, feathered blending, batched tile runs.

The image stays in host memory; only the tiles in flight go through ``run``. Each tile's output is
weighted by a smooth ramp across its overlaps and the weights form a partition of unity, so the
blend has no hard cut anywhere.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch

from ..errors import JDNetError

# Three stride-2 levels below the SC-conv's 4x average pool: tile origins on multiples of 16
# make every pyramid level and pooling window of a tile line up with whole-image inference.
ALIGN = 16
MIN_TILE = 32
# Pixels right at a tile's border are the least reliable (zero padding where the whole image has
# content), so the ramp starts after a dead zone of this fraction of the overlap.
DEAD_FRACTION = 0.25

R = TypeVar("R")
# run(batch N x 3 x th x tw, origin (y0, x0) of the first tile, full image size (H, W)) -> N x 3 x th x tw
TileRunner = Callable[[torch.Tensor, tuple[int, int], tuple[int, int]], torch.Tensor]


@dataclass(frozen=True)
class TileGrid:
    """Row and column spans [start, end) of a tile grid and their normalised 1-D blend weights."""

    height: int
    width: int
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]
    row_weights: tuple[torch.Tensor, ...]
    col_weights: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)


def parse_tile(tile: int | str) -> int | None:
    """A --tile value: 'auto' -> None (choose per image), '0' -> 0 (whole image), 'N' -> N (>= MIN_TILE)."""
    text = str(tile).strip().lower()
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise JDNetError(f"tile must be auto, 0 or a size in pixels, not {tile!r}") from None
    if value != 0:
        _check_tile_size(value)
    return value


def _check_tile_size(tile: int) -> None:
    if tile < MIN_TILE:
        raise JDNetError(f"tile size {tile} is too small (use 0 for whole image, or at least {MIN_TILE})")


def normalise_tile(tile: int, overlap: int) -> tuple[int, int]:
    """Round ``tile`` down to the 16-px grid and make the stride a multiple of 16; returns (tile, overlap)."""
    _check_tile_size(tile)
    tile = tile // ALIGN * ALIGN
    if overlap < 0 or overlap >= tile:
        raise JDNetError(f"tile overlap {overlap} must be at least 0 and smaller than the tile ({tile})")
    stride = max(ALIGN, (tile - overlap) // ALIGN * ALIGN)
    return tile, tile - stride


def plan_axis(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Spans covering [0, length): starts on the 16-px grid, at least ``overlap`` shared, none longer than ``tile``."""
    if length <= tile:
        return [(0, length)]
    # The last span ends at the image edge (so it sees the same border as the whole image) and
    # starts on the grid, which makes it between tile-15 and tile long. The starts in between are
    # spread evenly in 16-px steps, so every overlap is at least ``overlap`` and none is wasteful.
    last = -(-(length - tile) // ALIGN)
    step = (tile - overlap) // ALIGN
    gaps = -(-last // step)
    starts, pos = [0], 0
    for k in range(gaps):
        pos += last // gaps + (1 if k < last % gaps else 0)
        starts.append(pos)
    return [(s * ALIGN, min(s * ALIGN + tile, length)) for s in starts]


def ramp(n: int) -> torch.Tensor:
    """Rising blend weights over ``n`` pixels: zero in a dead zone, then smoothstep; r(i) + r(n-1-i) == 1."""
    if n <= 0:
        return torch.ones(0, dtype=torch.float64)
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    dead = DEAD_FRACTION
    t = ((t - dead) / (1.0 - 2.0 * dead)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def axis_weights(spans: Sequence[tuple[int, int]], length: int, overlap: int) -> list[torch.Tensor]:
    """Per-span weights that sum to exactly 1 at every pixel: ramps into each inner edge, then normalised."""
    raw = []
    for start, end in spans:
        w = torch.ones(end - start, dtype=torch.float64)
        n = min(overlap, end - start)
        if start > 0:
            w[:n] = torch.minimum(w[:n], ramp(n))
        if end < length:
            w[end - start - n :] = torch.minimum(w[end - start - n :], ramp(n).flip(0))
        raw.append(w)
    total = torch.zeros(length, dtype=torch.float64)
    for (start, end), w in zip(spans, raw):
        total[start:end] += w
    if bool((total <= 0).any()):  # cannot happen for grids from plan_axis; guards hand-made ones
        raise ValueError("tile spans leave pixels with no weight")
    return [(w / total[start:end]).float() for (start, end), w in zip(spans, raw)]


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> TileGrid:
    """The tile grid for a ``height`` x ``width`` image (``tile`` and ``overlap`` from normalise_tile)."""
    rows, cols = plan_axis(height, tile, overlap), plan_axis(width, tile, overlap)
    return TileGrid(
        height, width, tuple(rows), tuple(cols),
        tuple(axis_weights(rows, height, overlap)), tuple(axis_weights(cols, width, overlap)),
    )


def run_tiled(image: torch.Tensor, run: TileRunner, grid: TileGrid, batch_size: int = 1) -> torch.Tensor:
    """Run ``run`` over the tiles of a 1 x C x H x W host image, ``batch_size`` same-sized tiles at a time.

    Returns the feathered blend as a float32 tensor on the image's device (the host).
    """
    _, channels, height, width = image.shape
    if (height, width) != (grid.height, grid.width):
        raise ValueError(f"grid is for {grid.height}x{grid.width}, image is {height}x{width}")
    out = torch.zeros((1, channels, height, width), dtype=torch.float32, device=image.device)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, (y0, y1) in enumerate(grid.rows):
        for j, (x0, x1) in enumerate(grid.cols):
            groups.setdefault((y1 - y0, x1 - x0), []).append((i, j))
    for members in groups.values():
        for k in range(0, len(members), max(1, batch_size)):
            chunk = members[k : k + max(1, batch_size)]
            spans = [(grid.rows[i], grid.cols[j]) for i, j in chunk]
            batch = torch.cat([image[..., y0:y1, x0:x1] for (y0, y1), (x0, x1) in spans])
            (y0, _), (x0, _) = spans[0]
            result = run(batch, (y0, x0), (height, width)).to(out.device, torch.float32)
            for n, (i, j) in enumerate(chunk):
                (y0, y1), (x0, x1) = spans[n]
                weight = grid.row_weights[i].view(-1, 1) * grid.col_weights[j].view(1, -1)
                out[0, :, y0:y1, x0:x1].addcmul_(result[n], weight)
            del batch, result
    return out


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA out-of-memory errors and failed host allocations."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def run_halving_on_oom(
    attempt: Callable[[int], R],
    tile: int,
    largest_side: int,
    on_retry: Callable[[int], None] | None = None,
    name: str = "image",
) -> R:
    """Call ``attempt(tile)``; on out-of-memory halve the tile (0 = whole image) and retry the same image.

    Raises JDNetError only when even a MIN_TILE tile does not fit.
    """
    while True:
        try:
            return attempt(tile)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            if not is_out_of_memory(err):
                raise
            current = tile or largest_side
        # Outside the except block, so the traceback no longer pins the failed tile's tensors.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        smaller = current // 2 // ALIGN * ALIGN
        if smaller < MIN_TILE:
            raise JDNetError(f"{name}: out of memory even with {current}x{current} tiles")
        tile = smaller
        if on_retry is not None:
            on_retry(tile)
