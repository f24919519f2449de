"""Peak host memory of tiled deraining of one large image on the CPU (read, derain, write).

    python benchmarks/tiled_memory.py --size 6000x4000                 # full model, 24 MP (1-2 h on 2 cores)
    python benchmarks/tiled_memory.py --size 6000x4000 --units 2       # quick estimate
    python benchmarks/tiled_memory.py --size 688x688 --tile 0          # one full-model tile
    python benchmarks/tiled_memory.py --measure-cost                   # per-pixel cost vs memory_budget

The input is a Rain12 image scaled up (or a synthetic pattern without ../shared), written to a
temporary PNG. The derain runs in a child process so that ru_maxrss is the derain's own peak.
The full 32-unit model takes over an hour for 24 MP on a 2-core CPU (measured: peak RSS 3.66 GB).
With fewer units it is quick: tile memory depends on the unit count only through the dense
feature buffer (channels x (units + 1) x 4 B per pixel), which the report adds back.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_input(path: Path, width: int, height: int) -> None:
    import cv2
    import numpy as np

    src = REPO.parent / "shared" / "data" / "rain12" / "rain" / "rain-001.png"
    if src.is_file():
        img = cv2.resize(cv2.imread(str(src)), (width, height), interpolation=cv2.INTER_CUBIC)
    else:
        yy, xx = np.mgrid[0:height, 0:width]
        img = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)), ((xx + yy) % 256)], -1).astype(np.uint8)
    assert cv2.imwrite(str(path), img)


def child(args: argparse.Namespace) -> None:
    import torch

    from jdnet_cli.inference.derainer import Derainer
    from jdnet_cli.pipelines.images import derain_file
    from jdnet_cli.models import JDNet

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = JDNet(args.channels, args.units)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    derainer = Derainer(model=model, device="cpu", tile=args.tile, tile_overlap=args.overlap, max_memory=args.max_memory)
    t0 = time.perf_counter()
    derain_file(derainer, Path(args.input), Path(args.output))
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss": peak, "rss_before_derain": base, "seconds": elapsed}))


def measure_cost(args: argparse.Namespace) -> None:
    """Fit peak RSS against pixels for whole-image passes and compare with memory_budget's estimate."""
    from jdnet_cli.inference.memory_budget import bytes_per_pixel

    sides = [int(v) for v in args.cost_sides.split(",")]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in sides:
            src, dest = Path(tmp) / f"in{side}.png", Path(tmp) / f"out{side}.png"
            make_input(src, side, side)
            cmd = [sys.executable, __file__, "--child", "--input", str(src), "--output", str(dest), "--units", str(args.units),
                   "--channels", str(args.channels), "--tile", "0", "--overlap", "0", "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                sys.exit(res.stderr)
            out = json.loads(res.stdout.strip().splitlines()[-1])
            points.append((side * side, out["peak_rss"] - out["rss_before_derain"], out["seconds"]))
            print(f"{side}x{side}: peak RSS {out['peak_rss'] / 1e9:.3f} GB, {points[-1][1] / 1e9:.3f} GB above the loaded model, "
                  f"{points[-1][1] / points[-1][0]:.0f} B/px, {out['seconds']:.1f} s", flush=True)
    # Least-squares slope: the fixed part (decoded image copies, allocator slack) drops out.
    n = len(points)
    mx, my = sum(p for p, _, _ in points) / n, sum(b for _, b, _ in points) / n
    slope = sum((p - mx) * (b - my) for p, b, _ in points) / sum((p - mx) ** 2 for p, _, _ in points)
    estimate = bytes_per_pixel(args.channels, args.units)
    print(f"measured marginal cost {slope:.0f} B/px ({args.units} units, {args.channels} ch, fp32, CPU); "
          f"memory_budget.bytes_per_pixel = {estimate} B/px ({estimate / slope:.2f}x the measurement)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="6000x4000", help="WxH of the generated image (default 24 MP)")
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--tile", default=None, help="tile side; default: what --tile auto picks for the FULL 32-unit model")
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--max-memory", default=None, help="budget for auto tiles, e.g. 2GB (default: from available RAM)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--measure-cost", action="store_true", help="measure bytes per pixel of whole-image passes instead")
    parser.add_argument("--cost-sides", default="128,256,384", help="square sizes for --measure-cost")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.measure_cost:
        measure_cost(args)
        return

    from jdnet_cli.inference.memory_budget import bytes_per_pixel, choose_tile, device_budget, parse_byte_size

    import torch

    width, height = (int(v) for v in args.size.lower().split("x"))
    budget = device_budget(torch.device("cpu"), parse_byte_size(args.max_memory) if args.max_memory else None)
    full_bpp = bytes_per_pixel(args.channels, 32)
    tile = args.tile if args.tile is not None else str(choose_tile(height, width, full_bpp, budget))
    with tempfile.TemporaryDirectory() as tmp:
        src, dest = Path(tmp) / "big.png", Path(tmp) / "out.png"
        make_input(src, width, height)
        cmd = [sys.executable, __file__, "--child", "--input", str(src), "--output", str(dest), "--units", str(args.units),
               "--channels", str(args.channels), "--tile", tile, "--overlap", str(args.overlap), "--threads", str(args.threads)]
        t = int(tile) or max(width, height)
        if args.units < 32:
            # One tile in flight, as the full model would have: the smaller model must not batch.
            cmd += ["--max-memory", str(t * t * bytes_per_pixel(args.channels, args.units))]
        elif args.max_memory:
            cmd += ["--max-memory", args.max_memory]
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            sys.exit(res.stderr)
        out = json.loads(res.stdout.strip().splitlines()[-1])
        import cv2

        written = cv2.imread(str(dest))
        assert written is not None and written.shape[:2] == (height, width), "output missing or wrong size"
    side_h, side_w = min(t, height), min(t, width)
    extra = args.channels * (32 - args.units) * 4 * side_h * side_w  # dense buffer of the missing units, one tile
    gb = 1e9
    print(f"image {width}x{height} ({width * height / 1e6:.1f} MP), {args.units} units, tile {tile}, overlap {args.overlap}, budget {budget / gb:.2f} GB")
    print(f"peak RSS {out['peak_rss'] / gb:.2f} GB (before derain {out['rss_before_derain'] / gb:.2f} GB), {out['seconds']:.0f} s")
    if args.units < 32:
        print(f"full 32-unit model, same tile: ~{(out['peak_rss'] + extra) / gb:.2f} GB (+{extra / gb:.2f} GB dense buffer of 1 tile)")


if __name__ == "__main__":
    main()
