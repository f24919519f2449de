"""Time Trainer.train_step (CPU, full model, batch 4 of 64x64) here and, optionally, in another
checkout, interleaved child by child so background load hits both alike.

    nice -n 5 python benchmarks/train_step_speed.py --clean ../shared/data/clean --baseline /path/to/old
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _child(clean: str, steps: int, batch: int, threads: int) -> dict:
    import torch

    from jdnet_cli.training import TrainConfig, Trainer

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(TrainConfig(out_dir=tmp, clean=clean, batch_size=batch, device="cpu"))
        tr.model.train()
        tr.train_step()  # first step: allocator and primitive caches
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            tr.train_step()
            times.append(time.perf_counter() - t0)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"times": times, "peak_growth_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clean", default=str(REPO.parent / "shared" / "data" / "clean"))
    ap.add_argument("--steps", type=int, default=2, help="timed steps per child")
    ap.add_argument("--repeats", type=int, default=3, help="children per configuration")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--baseline", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.clean, args.steps, args.batch, args.threads)))
        return
    repos = {"this": REPO}
    if args.baseline:
        repos["baseline"] = args.baseline.resolve()
    times: dict[str, list[float]] = {k: [] for k in repos}
    for rep in range(args.repeats):
        for name, repo in repos.items():
            cmd = [sys.executable, __file__, "--child", "--clean", args.clean, "--steps", str(args.steps),
                   "--batch", str(args.batch), "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            times[name] += res["times"]
            print(f"repeat {rep + 1}: {name:9s} steps {' '.join(f'{t:.2f}' for t in res['times'])} s, "
                  f"peak RSS growth {res['peak_growth_mib']:.0f} MiB", flush=True)
    print(f"\ntrain_step, batch {args.batch} x 64x64, full model, CPU: median s/step")
    for name, ts in times.items():
        print(f"  {name:9s} {statistics.median(ts):6.2f}")
    if args.baseline:
        print(f"  speed-up: {statistics.median(times['baseline']) / statistics.median(times['this']):.2f}x")


if __name__ == "__main__":
    main()
