"""PSNR of `jdnet video` output (default libx264, crf 18, yuv420p) against `jdnet derain` of each
decoded frame, and frames/s, on the first N frames of the shared 640x360 clip.

    python benchmarks/video_fidelity.py [--frames 3] [--weights W.pt | --tiny] [--codec libx264]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jdnet_cli.inference.derainer import Derainer  # noqa: E402
from jdnet_cli.io.video import EncodeSettings  # noqa: E402
from jdnet_cli.pipelines.video import derain_video  # noqa: E402
from tests.test_video import decode_rgb, psnr  # noqa: E402

CLIP = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "video" / "real-rain-640x360.mp4"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--weights")
    ap.add_argument("--tiny", action="store_true", help="random 8-channel 2-unit model")
    ap.add_argument("--full-random", action="store_true", help="random 32-channel 32-unit model (full size)")
    ap.add_argument("--codec", default="libx264")
    ap.add_argument("--no-psnr", action="store_true", help="time only (the reference costs as much again)")
    args = ap.parse_args()
    if args.tiny or args.full_random:
        from tests.conftest import make_tiny_model

        model = make_tiny_model() if args.tiny else make_tiny_model(channels=32, units=32)
        d = Derainer(model=model, device="cpu")
    else:
        d = Derainer(weights=args.weights, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mp4"
        duration = args.frames / 25.0
        t0 = time.perf_counter()
        res = derain_video(d, CLIP, out, EncodeSettings(codec=args.codec), duration=duration)
        elapsed = time.perf_counter() - t0
        if args.no_psnr:
            print(f"{res.frames} frames 640x360 in {elapsed:.1f}s = {res.frames / elapsed:.3f} frames/s on {d.device_description}")
            return
        src = decode_rgb(CLIP)[: res.frames]
        got = decode_rgb(out)
        ref = [np.round(d(f.astype(np.float32) / np.float32(255.0)) * 255.0).astype(np.uint8) for f in src]
        scores = [psnr(a, b) for a, b in zip(ref, got)]
    print(f"{res.frames} frames 640x360 in {elapsed:.1f}s = {res.frames / elapsed:.3f} frames/s on {d.device_description}")
    print("PSNR vs jdnet derain per frame (dB): " + ", ".join(f"{s:.2f}" for s in scores))


if __name__ == "__main__":
    main()
