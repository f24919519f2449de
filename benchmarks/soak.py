"""Soak benchmark (not a test): derain many small images in one process and watch memory.

Reports resident memory (VmRSS) and its high-water mark (VmHWM) after a warm-up and at the end;
a leak shows up as growth between the two. Run it niced; it uses a tiny random model by default
so that it measures the pipeline (decode, metadata, inference, encode, atomic write), not the net.

    nice -n 5 python benchmarks/soak.py --count 500
    nice -n 5 python benchmarks/soak.py --count 500 --weights weights/jdnet.pt   # the real model
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jdnet_cli.inference.derainer import Derainer  # noqa: E402
from jdnet_cli.pipelines.planning import plan_jobs  # noqa: E402
from jdnet_cli.pipelines.runner import run_jobs  # noqa: E402
from jdnet_cli.pipelines.images import derain_file  # noqa: E402


def memory_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def make_inputs(root: Path, count: int, seed: int = 0) -> None:
    """Small images of varied size, format and depth (the mix a batch really sees)."""
    rng = np.random.default_rng(seed)
    kinds = [(".png", np.uint8, 3), (".jpg", np.uint8, 3), (".png", np.uint16, 3), (".png", np.uint8, 4), (".webp", np.uint8, 3)]
    for i in range(count):
        ext, dtype, channels = kinds[i % len(kinds)]
        h, w = rng.integers(24, 65, 2)
        arr = rng.integers(0, np.iinfo(dtype).max + 1, (h, w, channels)).astype(dtype)
        cv2.imwrite(str(root / f"{i:04d}{ext}"), arr)


def main() -> None:
    """Run the soak and print the memory figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50, help="images before the 'start' reading")
    parser.add_argument("--weights", type=Path, default=None, help="default: a tiny random 8-channel, 2-unit model")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if args.weights is None:
        import torch

        from jdnet_cli.models import JDNet

        torch.manual_seed(0)
        derainer = Derainer(model=JDNet(8, 2), device=args.device)
        model_name = "tiny JDNet(8 channels, 2 units), random weights"
    else:
        derainer = Derainer(weights=args.weights, device=args.device)
        model_name = str(args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        src.mkdir()
        make_inputs(src, args.count)
        jobs = plan_jobs([str(src)], str(out))
        readings: dict[int, tuple[float, float]] = {0: memory_mib()}
        done = [0]

        def on_result(res) -> None:
            if res.status != "ok":
                raise SystemExit(f"soak: {res.input} failed: {res.error}")
            done[0] += 1
            if done[0] == args.warmup or done[0] % 100 == 0 or done[0] == args.count:
                readings[done[0]] = memory_mib()

        t0 = time.perf_counter()
        run_jobs(jobs, lambda s, d: derain_file(derainer, s, d), on_result=on_result)
        elapsed = time.perf_counter() - t0
    print(f"soak: {args.count} images (24-64 px; png/jpg/16-bit png/rgba png/webp), {model_name}, {derainer.device_description}")
    print(f"soak: {elapsed:.1f} s, {args.count / elapsed:.1f} img/s")
    print(f"{'images':>7} {'RSS MiB':>9} {'peak MiB':>9}")
    for n, (rss, peak) in sorted(readings.items()):
        print(f"{n:>7} {rss:>9.1f} {peak:>9.1f}")
    start, end = readings[args.warmup], readings[args.count]
    print(f"soak: peak RSS after {args.warmup} images {start[1]:.1f} MiB, at the end {end[1]:.1f} MiB "
          f"(growth {end[1] - start[1]:+.1f} MiB; current RSS {start[0]:.1f} -> {end[0]:.1f} MiB)")


if __name__ == "__main__":
    main()
