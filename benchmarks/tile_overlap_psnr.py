"""Tiled vs whole-image output PSNR for several overlaps (how much overlap the receptive field needs).

    python benchmarks/tile_overlap_psnr.py IMAGE --tile 128 --overlaps 16 32 64 [--crop HxW] [--weights W]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from jdnet_cli.benchmarking.metrics import psnr
from jdnet_cli.inference.derainer import Derainer
from jdnet_cli.io.images import read_image


def main() -> None:
    """Print one line per overlap: PSNR (dB, 8-bit RGB) of the tiled output against the whole-image output."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image")
    ap.add_argument("--weights", default=None, help="default: the shipped weights")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--overlaps", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--crop", default=None, help="HxW crop from the top-left, to keep the run short")
    args = ap.parse_args()
    rgb = read_image(args.image).rgb
    if args.crop:
        h, w = (int(v) for v in args.crop.lower().split("x"))
        rgb = np.ascontiguousarray(rgb[:h, :w])
    t0 = time.perf_counter()
    whole = Derainer(weights=args.weights, device="cpu", tile=0)(rgb)
    print(f"image {rgb.shape[1]}x{rgb.shape[0]}, whole image {time.perf_counter() - t0:.1f}s")
    ref = np.round(whole * 255)
    for overlap in args.overlaps:
        t0 = time.perf_counter()
        tiled = Derainer(weights=args.weights, device="cpu", tile=args.tile, tile_overlap=overlap)(rgb)
        value = psnr(np.round(tiled * 255), ref)
        print(f"tile {args.tile} overlap {overlap:3d}: PSNR tiled vs whole {value:.2f} dB ({time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    main()
