"""CPU yardstick: full JDNet vs a plain stack of 3x3 convs with the same FLOPs, timed in one run.

JDNet costs ~2.72 MFLOP per pixel; 148 layers of 32->32 3x3 conv + LeakyReLU cost the same
(148 * 9 * 32 * 32 * 2). The ratio model/stack says how much time goes into overhead rather than
arithmetic. Each measurement runs in a fresh child process (so peak memory is its own), and the
configurations are interleaved repeat by repeat so that background load hits them alike. Each
child times two passes at the full size: the first in a fresh process (it also pays the page faults
of all the memory it maps for the first time) and the second (mapped memory reused, as for the
later images of a batch of one size).

    nice -n 5 python benchmarks/conv_stack_yardstick.py --size 481x321 --repeats 3
    ... --baseline /path/to/other/checkout   # also time that checkout's model (before/after)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STACK_LAYERS = 148


def _child(kind: str, h: int, w: int, threads: int, channels_last: bool) -> dict:
    import torch
    import torch.nn as nn

    if threads:
        torch.set_num_threads(threads)
    try:  # what Derainer sets up on the CPU (a --baseline checkout may keep it at the top level)
        try:
            from jdnet_cli.inference.cpu_allocator import keep_freed_memory
        except ImportError:
            from jdnet_cli.cpu_allocator import keep_freed_memory

        keep_freed_memory()
    except ImportError:  # a checkout from before the allocator change runs as it always did
        pass
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    if kind == "stack":
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 1, 1)]
        for _ in range(STACK_LAYERS):
            layers += [nn.Conv2d(32, 32, 3, 1, 1), nn.LeakyReLU(0.2)]
        net = nn.Sequential(*layers).eval()
    else:
        from jdnet_cli.models import JDNet

        net = JDNet().eval()
    net = net.to(memory_format=fmt)
    with torch.inference_mode():
        net(torch.rand(1, 3, 64, 64).contiguous(memory_format=fmt))  # primitive caches, allocator
        x = torch.rand(1, 3, h, w).contiguous(memory_format=fmt)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        net(x)
        seconds = time.perf_counter() - t0
        # A second pass at the same size: the memory is mapped by now, as for the second and later
        # images of a batch. The first pass also pays the kernel's page faults for every new page.
        t0 = time.perf_counter()
        net(x)
        warm_seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    try:  # which path the model ran on (a --baseline checkout has them in models/, or none at all)
        # models/ first: with an editable install of this checkout, ``jdnet_cli.ops`` would also
        # resolve in a baseline child, to this checkout's (unused) copy.
        try:
            from jdnet_cli.models.cpu_kernels import cpu_kernels_status
        except ImportError:
            from jdnet_cli.ops import cpu_kernels_status

        kernels = cpu_kernels_status() if kind == "model" else "-"
    except ImportError:
        kernels = "none in this checkout" if kind == "model" else "-"
    return {"seconds": seconds, "warm_seconds": warm_seconds, "peak_mib_per_mpix": peak_kib / 1024 / (h * w / 1e6), "threads": torch.get_num_threads(),
            "cpu_kernels": kernels}


def _run_child(kind: str, repo: Path, args: argparse.Namespace, channels_last: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo))
    cmd = [sys.executable, __file__, "--child", kind, "--size", args.size, "--threads", str(args.threads)]
    if not channels_last:
        cmd.append("--nchw")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="481x321", help="WxH")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--baseline", type=Path, help="another checkout whose JDNet is timed too")
    ap.add_argument("--stack-nchw", action="store_true", help="also time the stack in NCHW")
    ap.add_argument("--child", choices=["model", "stack"], help=argparse.SUPPRESS)
    ap.add_argument("--nchw", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    w, h = (int(s) for s in args.size.lower().split("x"))
    if args.child:
        print(json.dumps(_child(args.child, h, w, args.threads, not args.nchw)))
        return

    configs = {"jdnet": ("model", REPO, True), "conv stack (NHWC)": ("stack", REPO, True)}
    if args.stack_nchw:
        configs["conv stack (NCHW)"] = ("stack", REPO, False)
    if args.baseline:
        configs["jdnet baseline"] = ("model", args.baseline.resolve(), True)
        # The stack as that checkout would run it (allocator settings come from the checkout).
        configs["conv stack baseline"] = ("stack", args.baseline.resolve(), True)
    results: dict[str, list[dict]] = {k: [] for k in configs}
    for rep in range(args.repeats):
        for name, (kind, repo, cl) in configs.items():
            res = _run_child(kind, repo, args, cl)
            results[name].append(res)
            print(f"repeat {rep + 1}: {name:20s} first pass {res['seconds']:6.2f} s, second {res['warm_seconds']:6.2f} s", flush=True)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in results.items()}
    warm = {k: statistics.median(r["warm_seconds"] for r in v) for k, v in results.items()}
    stack = min(v for k, v in med.items() if k.startswith("conv stack"))
    warm_stack = min(v for k, v in warm.items() if k.startswith("conv stack"))
    print(f"\n{w}x{h}, CPU fp32, {results['jdnet'][0]['threads']} threads, median of {args.repeats}, "
          "first pass in a fresh process | second pass:")
    for name, v in results.items():
        peak = statistics.median(r["peak_mib_per_mpix"] for r in v)
        print(f"  {name:20s} {med[name]:6.2f} s {med[name] / stack:5.2f}x stack | {warm[name]:6.2f} s "
              f"{warm[name] / warm_stack:5.2f}x stack | peak {peak:6.0f} MiB/Mpix")
    if args.baseline:
        print(f"  jdnet speed-up over baseline: {med['jdnet baseline'] / med['jdnet']:.2f}x first pass, "
              f"{warm['jdnet baseline'] / warm['jdnet']:.2f}x second pass")
    for name, v in results.items():
        if v[0]["cpu_kernels"] != "-":
            print(f"  {name} C++ kernels: {v[0]['cpu_kernels']}")


if __name__ == "__main__":
    main()
