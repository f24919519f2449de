"""Is the synthetic rain renderer a training bottleneck? ms per patch vs ms per training step.

    python benchmarks/rain_renderer_speed.py [--clean DIR] [--patches 200] [--steps 3] [--batch 16]
        [--channels 32] [--units 32] [--threads 0]

Times SyntheticRainPatches.sample (crop + augment + render + crop, the whole per-patch data cost)
and Trainer.train_step (batch drawing included) on the same data, in one process.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jdnet_cli.data.datasets import SyntheticRainPatches  # noqa: E402
from jdnet_cli.training import TrainConfig, Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clean", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "clean"))
    ap.add_argument("--max-images", type=int, default=0, help="Load only the first N photos (memory).")
    ap.add_argument("--patches", type=int, default=200)
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="Training steps timed; 0: renderer only.")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--units", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = SyntheticRainPatches(args.clean, limit=args.max_images)
    rng = np.random.default_rng(0)
    for _ in range(10):
        data.sample(rng, args.patch_size, True, False)
    t0 = time.perf_counter()
    for _ in range(args.patches):
        data.sample(rng, args.patch_size, True, False)
    patch_ms = (time.perf_counter() - t0) / args.patches * 1e3

    data_ms = patch_ms * args.batch
    print(f"render: {patch_ms:.2f} ms per {args.patch_size}px patch ({args.patches} patches, {len(data.images)} photos) "
          f"-> {data_ms:.1f} ms per batch of {args.batch}")
    if args.steps <= 0:
        return
    with tempfile.TemporaryDirectory() as out:
        photos = Path(out) / "photos"  # the same photos as above, without decoding the whole folder
        photos.mkdir()
        for f in data.files:
            (photos / f.name).symlink_to(f.resolve())
        cfg = TrainConfig(out_dir=str(Path(out) / "run"), clean=str(photos), batch_size=args.batch, patch_size=args.patch_size,
                          channels=args.channels, num_units=args.units, steps=args.steps + 1, device=args.device,
                          threads=args.threads)
        trainer = Trainer(cfg)
        trainer.model.train()
        trainer.train_step()  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        step_ms = (time.perf_counter() - t0) / args.steps * 1e3
        device = trainer.device
    print(f"train step (data included) on {device}, {torch.get_num_threads()} threads, "
          f"model {args.channels} ch x {args.units} units: {step_ms:.1f} ms over {args.steps} steps")
    print(f"data share of a step: {data_ms / step_ms:.1%}")


if __name__ == "__main__":
    main()
