"""Real rainy photos beside each model's output, one row per photo (for model-card comparisons).

    python docs/make_real_rain_comparison.py --weights A.pt --weights B.pt --output docs/real_rain.png \
        ../shared/data/real-photos/113.jpg ../shared/data/real-photos/120.jpg
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jdnet_cli import Derainer  # noqa: E402
from jdnet_cli.io.images import Image, read_rgb, write_image  # noqa: E402

COLUMN = 300


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", nargs="+")
    ap.add_argument("--weights", action="append", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    inputs = [read_rgb(p) for p in args.photos]
    outputs = []
    for w in args.weights:
        derainer = Derainer(weights=w, device="cpu", tile=0)
        outputs.append([derainer(x) for x in inputs])
    rows = []
    for i, x in enumerate(inputs):
        row = [x] + [out[i] for out in outputs]
        rows.append(np.hstack([cv2.resize(r, (COLUMN, round(COLUMN * r.shape[0] / r.shape[1])), interpolation=cv2.INTER_AREA) for r in row]))
    h = min(r.shape[0] for r in rows)
    sheet = np.clip(np.vstack([r[:h] for r in rows]), 0, 1)
    write_image(Path(args.output), Image(rgb=sheet, format=".png"))
    print(f"wrote {args.output}: columns input, {', '.join(args.weights)}")


if __name__ == "__main__":
    main()
