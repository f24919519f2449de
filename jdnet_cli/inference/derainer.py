"""``Derainer``: one object that owns the model, device, precision, tiling and pre/post-processing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import JDNetError
from ..models import ATTENTION_OPS, JDNet
from ..ops import cpu_kernels_status, prepare_cpu_kernels
from .checkpoint import load_model
from .cpu_allocator import keep_freed_memory
from .devices import device_name, resolve_device, resolve_precision
from .memory_budget import bytes_per_pixel, choose_batch, choose_tile, device_budget, parse_byte_size
from .shipped_weights import resolve_weights
from .tiling import ALIGN, is_out_of_memory, normalise_tile, parse_tile, plan_tiles, run_halving_on_oom, run_tiled

# The SC-conv average-pools by 4 and the attention reflect-pads by 3, so smaller inputs are
# replicate-padded up to this size and cropped back.
MIN_SIDE = 8
DEFAULT_OVERLAP = 32

# Self-ensemble: average the outputs for flipped copies of the input. Only flips: rain falls
# roughly vertically, and transposed copies (horizontal streaks, never seen in training) scored
# 1.5 dB *worse* on Rain12 than no ensemble, while the mirror alone gained 0.09 dB.
ENSEMBLE_FLIPS: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((),),
    2: ((), (-1,)),
    4: ((), (-1,), (-2,), (-2, -1)),
}


def _flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.flip(dims) if dims else x


class Derainer:
    """Derain RGB float arrays (H x W x 3 in [0, 1]) with a loaded JDNet on one device."""

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        tile: int | str = "auto",
        tile_overlap: int | None = None,
        max_memory: int | str | None = None,
        attention: str = "fast",
        model: JDNet | None = None,
        ensemble: int = 1,
    ):
        if ensemble not in ENSEMBLE_FLIPS:
            raise JDNetError(f"ensemble must be one of {', '.join(map(str, ENSEMBLE_FLIPS))}, not {ensemble}")
        self.ensemble = ensemble
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.precision = precision
        if model is None:
            self.weights_path = resolve_weights(weights or None)
            model, self.meta = load_model(self.weights_path)
        else:
            self.weights_path, self.meta = None, {}
        self.model = model.eval().to(self.device)
        self.cpu_kernels = False
        self.model.set_attention_op(ATTENTION_OPS[attention])
        if self.device.type == "cpu":
            # mkldnn convs are ~3x faster in NHWC for these 32-channel layers.
            self.model = self.model.to(memory_format=torch.channels_last)
            keep_freed_memory()
            # Build (first run on this machine, ~12 s) or load the fused kernels now rather than
            # stalling the first image; without them inference runs on plain torch ops.
            self.cpu_kernels = prepare_cpu_kernels()
        self.tile = parse_tile(tile)
        # None: the default overlap, which shrinks to half of a small tile (--tile 32); an overlap the user
        # chose is kept, and one as large as their --tile is refused now rather than per image.
        self._overlap_chosen = tile_overlap is not None
        tile_overlap = DEFAULT_OVERLAP if tile_overlap is None else tile_overlap
        if tile_overlap < 0:
            raise JDNetError(f"tile overlap must be at least 0, not {tile_overlap}")
        if self.tile and self._overlap_chosen:
            normalise_tile(self.tile, tile_overlap)
        self.tile_overlap = tile_overlap
        self.max_memory = parse_byte_size(max_memory) if max_memory is not None else None
        self.bytes_per_pixel = bytes_per_pixel(self.model.channels, self.model.num_units, self.dtype)
        # Largest tile side that has run without running out of memory since an OOM; later images
        # start there instead of failing again.
        self._tile_cap: int | None = None

    @property
    def device_description(self) -> str:
        """e.g. 'NVIDIA H100 80GB HBM3' or 'CPU (x86_64, 2 threads)', plus '(no C++ kernels)' if so."""
        name = device_name(self.device)
        if self.device.type == "cpu" and not self.cpu_kernels:
            name += " (no C++ kernels: " + cpu_kernels_status() + ")"
        return name

    def _autocast(self):
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def run_tensor(
        self, x: torch.Tensor, origin: tuple[int, int] = (0, 0), full_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """N x 3 x H x W float32 on any device -> derained float32 on the same device (unclamped)."""
        src_device = x.device
        x = x.to(self.device, torch.float32)
        h, w = x.shape[-2:]
        ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            y = self.model(x, origin=origin, full_size=full_size)
        y = y[..., :h, :w].float()
        return y.to(src_device)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Derain one H x W x 3 float32 RGB image in [0, 1]; returns the same shape, clipped."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
            raise ValueError(f"expected H x W x 3 RGB, got shape {rgb.shape}")
        if rgb.dtype.kind != "f":
            # uint8 from cv2.imread would run as 0..255 and come back nearly all white.
            raise ValueError(f"expected floats in [0, 1], got {rgb.dtype} (divide 8-bit images by 255, 16-bit by 65535; "
                             "derain_frames takes uint8/uint16 frames)")
        if not np.isfinite(rgb).all():
            raise ValueError("the image holds NaN or infinite values")
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        y = self._run_image(x)
        return y[0].permute(1, 2, 0).clamp(0.0, 1.0).numpy()

    @torch.inference_mode()
    def derain_frames(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Derain same-size H x W x 3 uint8/uint16 frames; same scaling and rounding as ``jdnet derain``.

        Frames that fit run as one batch; frames that need tiles (or a batch that runs out of
        memory) go one by one through the image path, which tiles and backs off on OOM.
        """
        if not frames:
            return []
        high = frames[0].dtype == np.uint16
        for frame in frames:  # one uint16 frame among uint8 ones would be scaled as 8-bit
            if frame.dtype != frames[0].dtype or frame.dtype not in (np.uint8, np.uint16) or frame.ndim != 3 \
                    or frame.shape[2] != 3 or frame.shape != frames[0].shape or 0 in frame.shape:
                raise ValueError(f"expected same-size H x W x 3 uint8 or uint16 frames, got {frame.dtype} {frame.shape} "
                                 f"beside {frames[0].dtype} {frames[0].shape}")
        scale = 65535.0 if high else 255.0
        arr = np.stack(frames)
        # uint8 crosses the bus as bytes (4x less than float); torch has no uint16 arithmetic, so widen first.
        x = torch.from_numpy(arr.astype(np.int32) if high else arr).permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        y = None
        if self.plan_tile(h, w) == 0 and len(frames) > 1:
            try:
                dev = x.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else x
                y = self._ensembled(self.run_tensor, dev.float().div_(scale)).cpu()
            except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
                if not is_out_of_memory(err):
                    raise
                y = None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        if y is None:
            xf = x.float().div_(scale)
            y = torch.cat([self._run_image(xf[i : i + 1]) for i in range(len(frames))])
        y = y.clamp_(0.0, 1.0).mul_(scale).round_().permute(0, 2, 3, 1)
        out = (y.to(torch.int32) if high else y.to(torch.uint8)).numpy()
        return list(out.astype(np.uint16) if high else out)

    def plan_tile(self, height: int, width: int) -> int:
        """Tile side for an image of this size: 0 means whole image."""
        tile = self.tile
        if tile is None:
            tile = choose_tile(height, width, self.bytes_per_pixel, device_budget(self.device, self.max_memory))
        if self._tile_cap is not None and (tile == 0 or tile > self._tile_cap):
            tile = self._tile_cap
        if tile and tile >= max(height, width):
            return 0  # one tile covers the image: that is whole-image inference
        return tile

    def _ensembled(self, run, x: torch.Tensor) -> torch.Tensor:
        """Mean of ``run`` over the ensemble's flipped copies of ``x``, each flipped back."""
        flips = ENSEMBLE_FLIPS[self.ensemble]
        total = run(x)
        for dims in flips[1:]:
            total = total + _flip(run(_flip(x, dims)), dims)
        return total / len(flips) if len(flips) > 1 else total

    def _run_image(self, x: torch.Tensor) -> torch.Tensor:
        """Whole-image or tiled inference of a 1 x 3 x H x W CPU tensor; result on the CPU."""
        return self._ensembled(self._run_image_once, x)

    def _run_image_once(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]

        def attempt(tile: int) -> torch.Tensor:
            if tile == 0 or tile >= max(h, w):
                return self.run_tensor(x).cpu()
            return self._run_tiled(x, tile)

        def remember(tile: int) -> None:
            self._tile_cap = tile

        return run_halving_on_oom(attempt, self.plan_tile(h, w), max(h, w), on_retry=remember)

    def _run_tiled(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        overlap = self.tile_overlap
        if overlap >= tile // ALIGN * ALIGN:
            # The memory budget, an out-of-memory retry or a small --tile with the default overlap (an overlap
            # the user chose is checked up front): blend over half the tile rather than fail the image.
            overlap = tile // 2 // ALIGN * ALIGN
        tile, overlap = normalise_tile(tile, overlap)
        grid = plan_tiles(x.shape[-2], x.shape[-1], tile, overlap)
        budget = device_budget(self.device, self.max_memory)
        batch = choose_batch(tile * tile, self.bytes_per_pixel, budget, len(grid))
        return run_tiled(x, lambda t, origin, full: self.run_tensor(t, origin=origin, full_size=full), grid, batch)
