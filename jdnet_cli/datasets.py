"""Paired (rainy, clean) datasets in the layouts people use, and an on-the-fly synthetic-rain set."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import JDNetError
from .image_io import is_image_path, read_rgb
from .synthetic_rain import RainStyle, render_rain

LAYOUTS_HELP = (
    "rain/ + norain/ folders (rain-N <-> norain-N, or equal names); rainy/ + norain/; "
    "input/ + target/; or a folder of side-by-side pair images (left half clean, right half rainy)"
)


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
        return read_rgb(self.rainy), read_rgb(self.clean)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))


def _match_key(name: str) -> str:
    stem = Path(name).stem.lower()
    stem = re.sub(r"^(no)?rain(y)?[-_]?", "", stem)
    stem = re.sub(r"x2$", "", stem)
    return stem


def _pair_folders(rain_dir: Path, clean_dir: Path) -> list[Pair]:
    clean_by_key = {}
    for p in _images(clean_dir):
        clean_by_key.setdefault(_match_key(p.name), p)
    pairs = []
    for r in _images(rain_dir):
        c = clean_by_key.get(_match_key(r.name))
        if c is not None:
            pairs.append(Pair(r, c))
    return pairs


def find_pairs(root: str | Path) -> list[Pair]:
    """Detect the layout under ``root`` and return its pairs; unknown layouts list what is understood."""
    root = Path(root)
    if not root.is_dir():
        raise JDNetError(f"{root}: not a directory")
    candidates = [("rain", "norain"), ("rainy", "norain"), ("input", "target"), ("rain", "clean"), ("data", "gt")]
    for rain_name, clean_name in candidates:
        if (root / rain_name).is_dir() and (root / clean_name).is_dir():
            pairs = _pair_folders(root / rain_name, root / clean_name)
            if not pairs:
                raise JDNetError(f"{root}: {rain_name}/ and {clean_name}/ hold no matching image names")
            return pairs
    # Rain100H/L-style flat folder: rain-N.png beside norain-N.png.
    files = _images(root)
    rain_files = [p for p in files if re.match(r"^rain(y)?[-_]", p.name.lower())]
    clean_files = [p for p in files if re.match(r"^norain[-_]", p.name.lower())]
    if rain_files and clean_files:
        return _pair_folders_flat(rain_files, clean_files)
    if files and all(_looks_side_by_side(p) for p in files[:3]):
        return [Pair(p, p, side_by_side=True) for p in files]
    raise JDNetError(f"{root}: unknown dataset layout; understood layouts: {LAYOUTS_HELP}")


def _pair_folders_flat(rain_files: list[Path], clean_files: list[Path]) -> list[Pair]:
    clean_by_key = {_match_key(p.name): p for p in clean_files}
    return [Pair(r, clean_by_key[_match_key(r.name)]) for r in rain_files if _match_key(r.name) in clean_by_key]


def _looks_side_by_side(path: Path) -> bool:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_4)
    return img is not None and img.shape[1] >= 2 * img.shape[0] * 0.9


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

    def __init__(self, clean_dir: str | Path, style: RainStyle = RainStyle()):
        folder = Path(clean_dir)
        if not folder.is_dir():
            raise JDNetError(f"{folder}: not a directory")
        files = _images(folder)
        if not files:
            raise JDNetError(f"{folder}: no images found")
        self.images = [read_rgb(p) for p in files]
        self.style = style

    def sample(self, rng: np.random.Generator, size: int, flips: bool, rotations: bool) -> tuple[np.ndarray, np.ndarray]:
        """One (rainy, clean) patch pair."""
        img = self.images[int(rng.integers(len(self.images)))]
        (clean,) = random_crop([img], size + 2 * self.MARGIN, rng)
        (clean,) = augment([clean], rng, flips, rotations)
        rainy = render_rain(clean, rng, self.style)
        m = self.MARGIN
        return rainy[m : m + size, m : m + size], clean[m : m + size, m : m + size]
