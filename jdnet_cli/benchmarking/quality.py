"""Score models on paired datasets: PSNR/SSIM (Y and RGB, BasicSR convention) of the rainy input and of each model's output."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..data.datasets import Pair, find_pairs
from ..errors import JDNetError
from ..inference.derainer import Derainer
from ..io.images import Image, write_image
from .metrics import score_pair

SCORE_KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
INPUT_NAME = "input"  # the rainy image scored as it is: the baseline every model must beat


@dataclass(frozen=True)
class ImageScore:
    """Scores of one pair for one entry (``input`` or a model name)."""

    dataset: str
    image: str
    model: str
    scores: dict[str, float]


@dataclass
class DatasetScores:
    """Mean scores per entry over one dataset's pairs."""

    name: str
    path: Path
    pairs: int
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


def quantize_8bit(rgb: np.ndarray) -> np.ndarray:
    """Round to the 256 levels an 8-bit file would store (same rounding as the image writer)."""
    return (np.round(np.clip(rgb, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def model_names(weights: list[Path]) -> list[str]:
    """Short, unique display names for weight files: the file stem, or the path where stems clash."""
    stems = [Path(w).stem for w in weights]
    return [str(w) if stems.count(s) > 1 or s == INPUT_NAME else s for w, s in zip(weights, stems)]


def dataset_names(roots: list[Path]) -> list[str]:
    """Folder names, made unique with a numeric suffix."""
    names: list[str] = []
    for root in roots:
        base = Path(root).resolve().name or str(root)
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def load_datasets(roots: list[str | Path]) -> list[tuple[str, Path, list[Pair]]]:
    """(name, path, pairs) for each dataset root; unknown layouts raise JDNetError naming the folder."""
    paths = [Path(r) for r in roots]
    return [(name, path, find_pairs(path)) for name, path in zip(dataset_names(paths), paths)]


def _score(out: np.ndarray, ref: np.ndarray, crop_border: int, what: str) -> dict[str, float]:
    try:
        return score_pair(out, ref, crop_border)
    except ValueError as err:
        raise JDNetError(f"{what}: {err}") from None


def _pair_label(pair: Pair, root: Path) -> str:
    try:
        return pair.rainy.relative_to(root).as_posix()
    except ValueError:
        return pair.rainy.name  # never an absolute path: labels become paths under --save-outputs


def _check_crop(shape: tuple[int, ...], crop_border: int, what: str) -> None:
    if crop_border < 0:
        raise JDNetError(f"--crop-border must be >= 0, got {crop_border}")
    if min(shape[:2]) - 2 * crop_border < 11:
        raise JDNetError(f"{what}: {shape[1]}x{shape[0]} leaves less than 11x11 for SSIM after --crop-border {crop_border}")


def score_datasets(
    datasets: list[tuple[str, Path, list[Pair]]],
    models: Mapping[str, Derainer],
    crop_border: int = 0,
    quantize: bool = True,
    save_dir: str | Path | None = None,
    on_image: Callable[[ImageScore], None] | None = None,
) -> tuple[list[DatasetScores], list[ImageScore]]:
    """Score the input and every model on every pair; return per-dataset means and per-image rows."""
    save_dir = Path(save_dir) if save_dir else None
    inputs = {p.resolve() for _, _, pairs in datasets for pair in pairs for p in (pair.rainy, pair.clean)}
    summaries, rows = [], []
    for name, root, pairs in datasets:
        per_entry: dict[str, list[dict[str, float]]] = {INPUT_NAME: [], **{m: [] for m in models}}
        for pair in pairs:
            label = _pair_label(pair, root)
            rainy, clean = pair.load()
            what = f"{pair.rainy}" if pair.side_by_side else f"{pair.rainy} vs {pair.clean}"
            _check_crop(clean.shape, crop_border, what)
            entries = [(INPUT_NAME, rainy)]
            for model_name, derainer in models.items():
                out = derainer(rainy)
                if quantize:
                    out = quantize_8bit(out)
                if save_dir is not None:
                    _save_output(out, save_dir / _safe(model_name) / name / Path(label).with_suffix(".png"), inputs)
                entries.append((model_name, out))
            for entry, img in entries:
                row = ImageScore(name, label, entry, _score(img, clean, crop_border, what))
                per_entry[entry].append(row.scores)
                rows.append(row)
                if on_image:
                    on_image(row)
        summary = DatasetScores(name, root, len(pairs))
        for entry, scores in per_entry.items():
            summary.scores[entry] = {k: float(np.mean([s[k] for s in scores])) if scores else math.nan for k in SCORE_KEYS}
        summaries.append(summary)
    return summaries, rows


def _safe(name: str) -> str:
    """A model name usable as one folder name (names of clashing stems are paths)."""
    return name.replace("/", "_").replace("\\", "_").lstrip(".") or "model"


def _save_output(rgb: np.ndarray, dest: Path, inputs: set[Path]) -> None:
    if dest.resolve() in inputs:
        raise JDNetError(f"{dest}: refusing to overwrite an input file; choose another --save-outputs DIR")
    write_image(dest, Image(rgb=rgb, bit_depth=8))


def _finite(x: float) -> float | None:
    # JSON has no inf/nan; a PSNR of identical images is infinite, reported as null.
    return x if math.isfinite(x) else None


def quality_report(summaries: list[DatasetScores], device: str, models: Mapping[str, Derainer], settings: dict) -> dict:
    """The ``--json`` document: datasets with mean scores per entry, plus device, models and settings."""
    import torch

    from .. import __version__

    return {
        "datasets": [
            {
                "name": s.name,
                "path": str(s.path),
                "pairs": s.pairs,
                "scores": {entry: {k: _finite(v) for k, v in sc.items()} for entry, sc in s.scores.items()},
            }
            for s in summaries
        ],
        "device": device,
        "models": [
            {
                "name": name,
                "weights": str(d.weights_path) if d.weights_path else None,
                "channels": d.model.channels,
                "units": d.model.num_units,
                "precision": d.precision,
            }
            for name, d in models.items()
        ],
        "settings": settings,
        "jdnet": __version__,
        "torch": torch.__version__,
    }


def write_csv(rows: list[ImageScore], dest: str | Path) -> None:
    """Per-image rows (dataset, image, model, four scores) written atomically."""
    import csv
    import io

    from ..io.atomic import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "image", "model", *SCORE_KEYS])
    for r in rows:
        writer.writerow([r.dataset, r.image, r.model, *(f"{r.scores[k]:.6f}" for k in SCORE_KEYS)])
    atomic_write_bytes(dest, buf.getvalue().encode())
