"""Rebuild docs/before_after.png: an example rainy photo beside its derained output.

    python docs/make_before_after.py [--weights weights/jdnet.pt] [--input examples/rainy-kodim23.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    sheet = np.ones((h, 2 * w + GAP, 3), dtype=np.float32)
    sheet[:, :w] = rainy
    sheet[:, w + GAP :] = clean
    write_image(Path(args.output), Image(rgb=np.clip(sheet, 0, 1), format=".png"))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
