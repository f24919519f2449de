"""Write docs/rain_contact_sheet.png: real Rain12 rain beside our renderer's rain on the same clean crops.

Each row is one Rain12 image: column 1 its real (synthetic-by-the-authors) rainy version, columns 2-4
our renderer on its clean version with three seeds. Run from the repository root:
    python docs/make_rain_contact_sheet.py [SHARED_DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jdnet_cli.atomic import atomic_write_bytes  # noqa: E402
from jdnet_cli.datasets import find_pairs  # noqa: E402
from jdnet_cli.synthetic_rain import render_rain  # noqa: E402

TILE = 160
ROWS = (0, 4, 9)  # Rain12 images with light, medium and heavy rain
SEEDS = (1, 2, 3)


def main() -> None:
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared"
    pairs = find_pairs(shared / "data" / "rain12")
    rows = []
    for i in ROWS:
        rainy, clean = pairs[i].load()
        h, w = clean.shape[:2]
        y, x = (h - TILE) // 2, (w - TILE) // 2
        tiles = [rainy[y : y + TILE, x : x + TILE]]
        for seed in SEEDS:
            # Render on the whole image, then crop, as the real set was made.
            tiles.append(render_rain(clean, np.random.default_rng([seed, i]))[y : y + TILE, x : x + TILE])
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=1.0) for t in tiles], axis=1))
    sheet = np.concatenate(rows, axis=0)
    header = np.full((22, sheet.shape[1], 3), 255, np.uint8)
    for col, label in enumerate(["Rain12 rain", *(f"ours, seed {s}" for s in SEEDS)]):
        cv2.putText(header, label, (col * (TILE + 4) + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    dest = Path(__file__).resolve().parent / "rain_contact_sheet.png"
    rgb8 = np.concatenate([header, np.round(sheet * 255.0).astype(np.uint8)], axis=0)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb8[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    atomic_write_bytes(dest, png.tobytes())
    print(f"{dest}: {dest.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
