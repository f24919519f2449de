"""Rain statistics of a real paired set beside our renderer on the same clean images.

Per image, of d = mean over RGB of (rainy - clean): the floor (10th percentile: the veil), the 95th
percentile (bright streaks), the mean, the std of d minus its 6-px Gaussian blur (streak contrast), and
the dominant streak angle from the structure tensor of that residual; plus the share of pixels with
d > 0.05 and d > 0.3 over the whole set. Used to tune HEAVY_RAIN against heavy-18:
    python benchmarks/heavy_rain_stats.py [--light | --composition] [SHARED_DIR]
(--light: Rain12 and the Rain100L sample against the light and fine styles, which is how FINE_RAIN was
matched). Each clean image is rendered twice (seeds 0..).

--composition asks how rain meets the background: over the same light-rain sets, the 95th percentile of
d per band of clean brightness (mean over RGB, bands of 0.125). Measured 2026-12-07: Rain12 0.09-0.10 and
the Rain100L sample 0.10-0.13 in every band up to 0.75 (then clipping): their streaks were *added*. The
light style falls from ~0.21 on dark backgrounds to ~0.04 on bright ones, as screening makes it; the
additive style (ADDITIVE_RAIN) was tuned to the sets' level. heavy-18 falls with brightness as added
streaks do (clipped at 1 - clean), not as screened ones: HEAVY_ADDITIVE_RAIN ("heavy-additive") was tuned to it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jdnet_cli.data.datasets import find_pairs  # noqa: E402
from jdnet_cli.data.synthetic_rain import RAIN_STYLES, render_rain  # noqa: E402


def per_image(d: np.ndarray) -> list[float]:
    """floor, p95, mean, residual std, |dominant angle| of one difference map."""
    res = d - cv2.GaussianBlur(d, (0, 0), 6)
    gx, gy = cv2.Sobel(res, cv2.CV_32F, 1, 0), cv2.Sobel(res, cv2.CV_32F, 0, 1)
    # The gradient across a near-vertical streak is horizontal: its angle is the streak's tilt.
    angle = 0.5 * np.degrees(np.arctan2(2 * (gx * gy).mean(), (gx * gx).mean() - (gy * gy).mean()))
    return [float(np.quantile(d, 0.1)), float(np.quantile(d, 0.95)), float(d.mean()), float(res.std()), abs(float(angle))]


def summary(diffs: list[np.ndarray]) -> str:
    """One line of the statistics over a set of difference maps."""
    a = np.array([per_image(d) for d in diffs])
    flat = np.concatenate([d.ravel() for d in diffs])
    return (f"floor {a[:, 0].mean():.3f}  p95 {a[:, 1].mean():.3f}  mean {a[:, 2].mean():.3f} "
            f"(per image {a[:, 2].min():.3f}-{a[:, 2].max():.3f})  streak contrast {a[:, 3].mean():.3f}  "
            f"|angle| {a[:, 4].mean():.1f} deg  d>0.05 {(flat > 0.05).mean():.2f}  d>0.3 {(flat > 0.3).mean():.2f}")


BANDS = np.arange(0.0, 1.0, 0.125)


def composition(pairs: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """95th percentile of d per band of clean brightness ('-' where a band has under 1,000 pixels)."""
    d = np.concatenate([(r - c).mean(2).ravel() for r, c in pairs])
    base = np.concatenate([c.mean(2).ravel() for _, c in pairs])
    cells = []
    for lo in BANDS:
        sel = d[(base >= lo) & (base < lo + 0.125)]
        cells.append(f"{np.quantile(sel, 0.95):.3f}" if sel.size >= 1000 else "  -  ")
    return " ".join(cells)


def rendered_summary(pairs: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """summary() of the (rainy, clean) pairs' difference maps."""
    return summary([(r - c).mean(2) for r, c in pairs])


def main() -> None:
    args = [a for a in sys.argv[1:] if a not in ("--light", "--composition")]
    shared = Path(args[0]) if args else Path(__file__).resolve().parents[2] / "shared"
    light_sets = {"rain12": ("light", "fine", "additive"), "rain100l-sample": ("light", "fine", "additive")}
    report = rendered_summary
    if "--composition" in sys.argv[1:]:
        plan, report = {**light_sets, "train-pairs/heavy-18": ("heavy", "heavy-additive")}, composition
        print("p95 of d per band of clean brightness:", " ".join(f"{lo:.3f}+" for lo in BANDS))
    elif "--light" in sys.argv[1:]:
        plan = light_sets
    else:
        plan = {"train-pairs/heavy-18": ("heavy", "heavy-additive")}
    for dataset, styles in plan.items():
        pairs = [p.load() for p in find_pairs(shared / "data" / dataset)]
        print(f"real ({dataset}):".ljust(28), report(pairs))
        for style in styles:
            rng = np.random.default_rng(0)
            rendered = [(render_rain(c, rng, RAIN_STYLES[style]), c) for _, c in pairs for _ in range(2)]
            print(f"{style} (same clean):".ljust(28), report(rendered))


if __name__ == "__main__":
    main()
