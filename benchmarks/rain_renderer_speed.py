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
from jdnet_cli.datasets import SyntheticRainPatches  # noqa: E402
from jdnet_cli.training import TrainConfig, Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clean", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "clean"))
    ap.add_argument("--patches", type=int, default=200)
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--units", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = SyntheticRainPatches(args.clean)
    rng = np.random.default_rng(0)
    for _ in range(10):
        data.sample(rng, args.patch_size, True, False)
    t0 = time.perf_counter()
    for _ in range(args.patches):
        data.sample(rng, args.patch_size, True, False)
    patch_ms = (time.perf_counter() - t0) / args.patches * 1e3

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(out_dir=out, clean=args.clean, batch_size=args.batch, patch_size=args.patch_size,
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

    data_ms = patch_ms * args.batch
    print(f"device {device}, {torch.get_num_threads()} threads; model {args.channels} ch x {args.units} units, "
          f"batch {args.batch} x {args.patch_size}px")
    print(f"render: {patch_ms:.2f} ms per patch ({args.patches} patches) -> {data_ms:.1f} ms per batch")
    print(f"train step (data included): {step_ms:.1f} ms over {args.steps} steps")
    print(f"data share of a step: {data_ms / step_ms:.1%}")


if __name__ == "__main__":
    main()
