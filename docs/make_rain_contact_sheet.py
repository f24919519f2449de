"""Contact sheets of reference rain beside our renderer's rain on the same clean crops.

docs/rain_contact_sheet.png: each row one Rain12 image, column 1 its rainy version (rendered by
the set's authors), columns 2-4 our light style on its clean version with three seeds.
docs/heavy_rain_contact_sheet.png (--heavy): the same for heavy-18 and our HEAVY_RAIN style;
docs/heavy_additive_rain_contact_sheet.png (--heavy-additive): heavy-18 and HEAVY_ADDITIVE_RAIN.
Run from the repository root:
    python docs/make_rain_contact_sheet.py [--heavy | --heavy-additive] [SHARED_DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jdnet_cli.io.atomic import atomic_write_bytes  # noqa: E402
from jdnet_cli.data.datasets import find_pairs  # noqa: E402
from jdnet_cli.data.synthetic_rain import HEAVY_ADDITIVE_RAIN, HEAVY_RAIN, RainStyle, render_rain  # noqa: E402

TILE = 160
SEEDS = (1, 2, 3)
# (dataset under shared/data, rows, style, reference label, output name)
SHEETS = {
    None: ("rain12", (0, 4, 9), RainStyle(), "Rain12 rain", "rain_contact_sheet.png"),  # light, medium, heavy
    "--heavy": ("train-pairs/heavy-18", (0, 4, 8, 13), HEAVY_RAIN, "heavy-18 rain", "heavy_rain_contact_sheet.png"),
    "--heavy-additive": ("train-pairs/heavy-18", (0, 4, 8, 13), HEAVY_ADDITIVE_RAIN, "heavy-18 rain",
                         "heavy_additive_rain_contact_sheet.png"),
}


def main() -> None:
    flags = [a for a in sys.argv[1:] if a in SHEETS]
    args = [a for a in sys.argv[1:] if a not in SHEETS]
    dataset, rows_at, style, ref_label, name = SHEETS[flags[0] if flags else None]
    shared = Path(args[0]) if args else Path(__file__).resolve().parents[2] / "shared"
    pairs = find_pairs(shared / "data" / dataset)
    rows = []
    for i in rows_at:
        rainy, clean = pairs[i].load()
        h, w = clean.shape[:2]
        y, x = (h - TILE) // 2, (w - TILE) // 2
        tiles = [rainy[y : y + TILE, x : x + TILE]]
        for seed in SEEDS:
            # Render on the whole image, then crop, as the real set was made.
            tiles.append(render_rain(clean, np.random.default_rng([seed, i]), style)[y : y + TILE, x : x + TILE])
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=1.0) for t in tiles], axis=1))
    sheet = np.concatenate(rows, axis=0)
    header = np.full((22, sheet.shape[1], 3), 255, np.uint8)
    for col, label in enumerate([ref_label, *(f"ours, seed {s}" for s in SEEDS)]):
        cv2.putText(header, label, (col * (TILE + 4) + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    dest = Path(__file__).resolve().parent / name
    rgb8 = np.concatenate([header, np.round(sheet * 255.0).astype(np.uint8)], axis=0)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb8[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    atomic_write_bytes(dest, png.tobytes())
    print(f"{dest}: {dest.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
