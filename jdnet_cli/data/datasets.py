"""Paired (rainy, clean) datasets in the layouts people use, and an on-the-fly synthetic-rain set."""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import JDNetError
from ..io.images import is_image_path, read_rgb
from .synthetic_rain import HEAVY_RAIN, RainStyle, render_rain

LAYOUTS_HELP = (
    "rain/ + norain/ (also rainy/ + norain/, rain/ + clean/, data/ + gt/), pairing rain-N with norain-N "
    "or equal names; rainy/ with norain-N images beside it (Rain100L/H test sets); rain-N beside norain-N "
    "in one folder (Rain100L/H training sets); input/ + target/; or a folder of side-by-side pair images "
    "(left half clean, right half rainy)"
)
# (rainy folder, clean folder) names, tried in this order.
FOLDER_LAYOUTS = (("rain", "norain"), ("rainy", "norain"), ("input", "target"), ("rain", "clean"), ("data", "gt"))
_RAIN_PREFIX = re.compile(r"^(no)?rain(y)?(?=[-_\d])[-_]?")
_RAINY_NAME = re.compile(r"^rain(y)?[-_]?\d")
_CLEAN_NAME = re.compile(r"^norain[-_]?\d")


@dataclass(frozen=True)
class Pair:
    """One training or scoring example; ``side_by_side`` pairs live in one file."""

    rainy: Path
    clean: Path
    side_by_side: bool = False

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (rainy, clean) float32 RGB arrays in [0, 1]."""
        if self.side_by_side:
            img = read_rgb(self.rainy)
            half = img.shape[1] // 2
            return np.ascontiguousarray(img[:, half : 2 * half]), np.ascontiguousarray(img[:, :half])
        rainy, clean = read_rgb(self.rainy), read_rgb(self.clean)
        if rainy.shape != clean.shape:
            raise JDNetError(
                f"{self.rainy}: {rainy.shape[1]}x{rainy.shape[0]} does not match its clean twin {self.clean} "
                f"({clean.shape[1]}x{clean.shape[0]})"
            )
        return rainy, clean


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))


def _match_key(name: str) -> str:
    """The part of a file name shared by a rainy image and its clean twin: rain-007 / norain-7 -> '7'."""
    stem = _RAIN_PREFIX.sub("", Path(name).stem.lower())
    stem = re.sub(r"(?<=\d)x2$", "", stem)  # Rain100H's "norain-1x2" names
    return str(int(stem)) if stem.isdigit() else stem


def _pair_lists(rain_files: list[Path], clean_files: list[Path]) -> list[Pair]:
    clean_by_key: dict[str, Path] = {}
    for p in clean_files:
        clean_by_key.setdefault(_match_key(p.name), p)
    return [Pair(r, clean_by_key[_match_key(r.name)]) for r in rain_files if _match_key(r.name) in clean_by_key]


def _checked(pairs: list[Pair], where: str) -> list[Pair]:
    if not pairs:
        raise JDNetError(f"{where}: no rainy image has a clean twin (rain-N <-> norain-N, or equal names)")
    return pairs


def find_pairs(root: str | Path) -> list[Pair]:
    """Detect the layout under ``root`` and return its pairs; unknown layouts list what is understood."""
    root = Path(root)
    if not root.is_dir():
        raise JDNetError(f"{root}: not a directory")
    for rain_name, clean_name in FOLDER_LAYOUTS:
        if (root / rain_name).is_dir() and (root / clean_name).is_dir():
            pairs = _pair_lists(_images(root / rain_name), _images(root / clean_name))
            return _checked(pairs, f"{root}: {rain_name}/ and {clean_name}/")
    files = _images(root)
    clean_beside = [p for p in files if _CLEAN_NAME.match(p.name.lower())]
    # PReNet's copies of the Rain100L/H test sets: rainy/rain-N.png, with norain-N.png beside rainy/.
    for rain_name in ("rainy", "rain"):
        if (root / rain_name).is_dir() and clean_beside:
            return _checked(_pair_lists(_images(root / rain_name), clean_beside), f"{root}: {rain_name}/ and norain-N files")
    # Rain100L/H training sets: rain-N.png beside norain-N.png in one folder.
    rain_beside = [p for p in files if _RAINY_NAME.match(p.name.lower())]
    if rain_beside and clean_beside:
        return _checked(_pair_lists(rain_beside, clean_beside), f"{root}: rain-N and norain-N files")
    if files and all(_looks_side_by_side(p) for p in files[:3]):
        return [Pair(p, p, side_by_side=True) for p in files]
    raise JDNetError(f"{root}: unknown dataset layout; understood layouts: {LAYOUTS_HELP}")


def _looks_side_by_side(path: Path) -> bool:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_4)
    return img is not None and img.shape[1] >= 2 * img.shape[0] * 0.9


def rank_slice(items: list, rank: int, world: int) -> list:
    """Every ``world``-th item starting at ``rank`` (a DDP rank's own share); all items if too few."""
    return items[rank::world] or items


def random_crop(arrays: list[np.ndarray], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Crop the same random ``size`` window from each array (reflect-pads images smaller than it)."""
    h, w = arrays[0].shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        arrays = [np.pad(a, ((0, ph), (0, pw), (0, 0)), mode="reflect") for a in arrays]
        h, w = arrays[0].shape[:2]
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return [a[y : y + size, x : x + size] for a in arrays]


def augment(arrays: list[np.ndarray], rng: np.random.Generator, flips: bool, rotations: bool) -> list[np.ndarray]:
    """The same random horizontal flip / 90-degree rotation for every array."""
    if flips and rng.random() < 0.5:
        arrays = [a[:, ::-1] for a in arrays]
    if rotations:
        k = int(rng.integers(0, 4))
        arrays = [np.rot90(a, k) for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


class PairedPatches:
    """Random patches from real (rainy, clean) pairs, all loaded in memory once."""

    def __init__(self, pairs: list[Pair]):
        self.images = [p.load() for p in pairs]

    def sample(self, rng: np.random.Generator, size: int, flips: bool, rotations: bool) -> tuple[np.ndarray, np.ndarray]:
        """One (rainy, clean) patch pair."""
        rainy, clean = self.images[int(rng.integers(len(self.images)))]
        rainy, clean = random_crop([rainy, clean], size, rng)
        rainy, clean = augment([rainy, clean], rng, flips, rotations)
        return rainy, clean


class SyntheticRainPatches:
    """Clean photos with rain rendered on the fly, a new rain sample every time."""

    MARGIN = 24  # streaks are rendered past the patch edge so they enter it naturally

    def __init__(self, clean_dir: str | Path, style: RainStyle = RainStyle(), rank: int = 0, world: int = 1, limit: int = 0,
                 heavy_fraction: float = 0.0, heavy_style: RainStyle | None = None):
        folder = Path(clean_dir)
        if not folder.is_dir():
            raise JDNetError(f"{folder}: not a directory")
        files = _images(folder)
        if not files:
            raise JDNetError(f"{folder}: no images found")
        # Shard before decoding: a DDP rank holds only its own share of the photos in memory.
        self.files = rank_slice(files[: limit or None], rank, world)
        self.images = [read_rgb(p) for p in self.files]
        self.style = style
        self.heavy_fraction = heavy_fraction
        self.heavy_style = heavy_style or HEAVY_RAIN

    def sample(self, rng: np.random.Generator, size: int, flips: bool, rotations: bool) -> tuple[np.ndarray, np.ndarray]:
        """One (rainy, clean) patch pair."""
        img = self.images[int(rng.integers(len(self.images)))]
        (clean,) = random_crop([img], size + 2 * self.MARGIN, rng)
        (clean,) = augment([clean], rng, flips, rotations)
        # No extra draw without heavy rain, so light-only runs replay as before.
        heavy = self.heavy_fraction > 0 and rng.random() < self.heavy_fraction
        rainy = render_rain(clean, rng, self.heavy_style if heavy else self.style)
        m = self.MARGIN
        return rainy[m : m + size, m : m + size], clean[m : m + size, m : m + size]


class MixedPatches:
    """Draws each patch from one of several sources, picked at random in proportion to its weight."""

    def __init__(self, sources: list[tuple[PairedPatches | SyntheticRainPatches, float]], names: list[str] | None = None):
        if not sources:
            raise JDNetError("no training data: give a paired dataset (DATA or --pairs) or --clean DIR")
        weights = np.array([w for _, w in sources], dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise JDNetError("source weights must be >= 0 and not all 0")
        self.sources = [s for s, _ in sources]
        self.names = names or [str(i) for i in range(len(sources))]
        self.probs = weights / weights.sum()
        self.drawn = [0] * len(sources)

    @property
    def images(self) -> list:
        """All source images (their count is what the run reports)."""
        return [im for s in self.sources for im in s.images]

    def sample(self, rng: np.random.Generator, size: int, flips: bool, rotations: bool) -> tuple[np.ndarray, np.ndarray]:
        """One (rainy, clean) patch pair from a source drawn by weight."""
        # A single source consumes no extra random number, so one-source runs replay as before.
        i = 0 if len(self.sources) == 1 else int(rng.choice(len(self.sources), p=self.probs))
        self.drawn[i] += 1
        return self.sources[i].sample(rng, size, flips, rotations)


def split_weight(spec: str) -> tuple[str, float]:
    """``DIR`` or ``DIR:WEIGHT`` -> (DIR, weight); a suffix that is not a number stays part of the path."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return spec, 1.0
        if not np.isfinite(weight) or weight < 0:
            raise JDNetError(f"{spec}: the sampling weight after ':' must be a number >= 0")
        return head, weight
    return spec, 1.0


def write_synthetic_pairs(
    clean_dir: str | Path, out_dir: str | Path, seed: int = 0, style: RainStyle = RainStyle(),
    on_pair: Callable[[Path], None] | None = None, on_failure: Callable[[Path, str], None] | None = None,
) -> int:
    """Render rain over every image in ``clean_dir`` into OUT/rain and OUT/norain (same PNG names); return the
    pairs written. A photo that cannot be read goes to ``on_failure`` (path, reason) and the rest go on; without
    it, its JDNetError is raised."""
    from ..io.images import Image, write_image

    src, out = Path(clean_dir), Path(out_dir)
    if not src.is_dir():
        raise JDNetError(f"{src}: not a directory")
    files = _images(src)
    if not files:
        raise JDNetError(f"{src}: no images found")
    names: dict[str, Path] = {}
    for p in files:
        other = names.setdefault(p.stem + ".png", p)
        if other != p:
            raise JDNetError(f"{p}: same name as {other.name}; both would be written as {p.stem}.png")
    inputs = {p.resolve() for p in files}
    for name in names:
        for dest in (out / "rain" / name, out / "norain" / name):
            if dest.resolve() in inputs:
                raise JDNetError(f"{dest}: would overwrite an input image; choose another OUT_DIR")
    written = 0
    for name, path in names.items():
        try:
            clean = read_rgb(path)
        except JDNetError as err:
            if on_failure is None:
                raise
            on_failure(path, str(err).removeprefix(f"{path}: "))
            continue
        # A per-file stream, keyed by name: adding or removing a photo leaves the others' rain as it was.
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        rainy = render_rain(clean, rng, style)
        for dest, rgb in ((out / "norain" / name, np.round(clean * 255.0) / 255.0), (out / "rain" / name, rainy)):
            try:
                write_image(dest, Image(rgb=rgb))
            except OSError as err:  # e.g. OUT_DIR is a file, a read-only or full disk
                raise JDNetError(f"cannot write {dest}: {err.strerror or err}") from None
        written += 1
        if on_pair:
            on_pair(path)
    return written
