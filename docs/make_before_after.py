"""Rebuild docs/before_after.png: an example rainy photo beside its derained output (half size).

    python docs/make_before_after.py [--weights weights/jdnet.pt] [--input examples/rainy-kodim23.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jdnet_cli import Derainer  # noqa: E402
from jdnet_cli.io.images import Image, read_rgb, write_image  # noqa: E402

GAP = 6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(REPO / "weights" / "jdnet.pt"))
    ap.add_argument("--input", default=str(REPO / "examples" / "rainy-kodim23.png"))
    ap.add_argument("--output", default=str(REPO / "docs" / "before_after.png"))
    args = ap.parse_args()
    rainy = read_rgb(args.input)
    clean = Derainer(weights=args.weights, device="cpu", tile=0)(rainy)
    h, w = rainy.shape[:2]
    half = [cv2.resize(a, (w // 2, h // 2), interpolation=cv2.INTER_AREA) for a in (rainy, clean)]
    sheet = np.ones((h // 2, 2 * (w // 2) + GAP, 3), dtype=np.float32)
    sheet[:, : w // 2] = half[0]
    sheet[:, w // 2 + GAP :] = half[1]
    write_image(Path(args.output), Image(rgb=np.clip(sheet, 0, 1), format=".png"))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
