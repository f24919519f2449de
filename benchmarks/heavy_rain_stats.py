"""Rain statistics of a real paired set beside our renderer on the same clean images.

Per image, of d = mean over RGB of (rainy - clean): the floor (10th percentile: the veil), the 95th
percentile (bright streaks), the mean, the std of d minus its 6-px Gaussian blur (streak contrast), and
the dominant streak angle from the structure tensor of that residual; plus the share of pixels with
d > 0.05 and d > 0.3 over the whole set. Used to tune HEAVY_RAIN against heavy-18:
    python benchmarks/heavy_rain_stats.py [--light] [SHARED_DIR]
(--light: Rain12 and the Rain100L sample against the light and fine styles, which is how FINE_RAIN was
matched). Each clean image is rendered twice (seeds 0..).
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


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--light"]
    light = "--light" in sys.argv[1:]
    shared = Path(args[0]) if args else Path(__file__).resolve().parents[2] / "shared"
    plan = {"rain12": ("light", "fine"), "rain100l-sample": ("light", "fine")} if light else {"train-pairs/heavy-18": ("heavy",)}
    for dataset, styles in plan.items():
        pairs = [p.load() for p in find_pairs(shared / "data" / dataset)]
        print(f"real ({dataset}):  ", summary([(r - c).mean(2) for r, c in pairs]))
        for style in styles:
            rng = np.random.default_rng(0)
            rendered = [(render_rain(c, rng, RAIN_STYLES[style]) - c).mean(2) for _, c in pairs for _ in range(2)]
            print(f"{style} (same clean):".ljust(19), summary(rendered))


if __name__ == "__main__":
    main()
