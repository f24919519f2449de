"""The Speed issue's GPU targets, measured in one run so that a session with a GPU spends its
device time on measuring, not on setting up:

* a 1920x1080 frame on the fast path in fp16 and bf16 (target <= 60 ms on an H100);
* the straightforward fp32 path on the same frame: unfold-based reference attention, NCHW, the
  dense connections as a growing ``torch.cat`` (target: the fast half-precision path >= 4x faster);
* PSNR of each half-precision output against the fast fp32 output (target >= 45 dB), and the
  largest difference between the fast and the straightforward fp32 outputs (should be ~1e-5).

    python benchmarks/gpu_targets.py --json gpu_targets.json          # CUDA, shipped weights
    python benchmarks/gpu_targets.py --device cpu --size 48x40 --units 2 --channels 8   # dry run

The input is a natural photo (examples/rainy-kodim23.png, resized to --size), so the PSNR is
taken on image content, not noise. Times are medians of --runs passes after --warmup passes,
each ended by a device synchronisation; peak memory is torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jdnet_cli import ops  # noqa: E402
from jdnet_cli.inference.checkpoint import load_model  # noqa: E402
from jdnet_cli.inference.derainer import Derainer  # noqa: E402
from jdnet_cli.inference.devices import device_name  # noqa: E402
from jdnet_cli.inference.shipped_weights import default_weights_path  # noqa: E402
from jdnet_cli.models import JDNet  # noqa: E402

PHOTO = REPO / "examples" / "rainy-kodim23.png"
TARGET_MS, TARGET_SPEEDUP, TARGET_PSNR = 60.0, 4.0, 45.0


def straightforward_model(model: JDNet, device: torch.device) -> JDNet:
    """An NCHW copy of ``model`` on ``device`` for the straightforward path; ``model`` stays as it is."""
    return copy.deepcopy(model).to(device=device, memory_format=torch.contiguous_format).eval()


def straightforward_forward(model: JDNet, x: torch.Tensor) -> torch.Tensor:
    """JDNet as first written (unfold attention, plain torch ops, dense inputs by torch.cat) on NCHW ``x``."""
    with ops.backend("reference"):
        return model(x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, runs: int) -> tuple[torch.Tensor, list[float], float]:
    """(last output, ms per run, peak MB) for fn() on device."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = None
    for _ in range(warmup):
        out = fn()
    _sync(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated(device) / 1e6 if device.type == "cuda" else float("nan")
    return out, times, peak


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [0, 1] images (clamped first), as float64."""
    mse = (a.double().clamp(0, 1) - b.double().clamp(0, 1)).square().mean().item()
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _photo(width: int, height: int, device: torch.device) -> torch.Tensor:
    bgr = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous().to(device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", default="1920x1080", help="WxH")
    ap.add_argument("--precisions", default=None, help="comma list; default fp16,bf16 on CUDA, bf16 on the CPU")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--baseline-runs", type=int, default=3, help="runs of the straightforward fp32 path")
    ap.add_argument("--units", type=int, help="a random model of this many units instead of the shipped weights")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_targets: no CUDA device here (use --device cpu for a dry run)")
    width, height = (int(v) for v in args.size.lower().split("x"))
    precisions = (args.precisions or ("fp16,bf16" if device.type == "cuda" else "bf16")).split(",")
    if args.units:
        torch.manual_seed(0)
        model, weights = JDNet(args.channels, args.units), f"random {args.channels} ch x {args.units} units"
    else:
        model, weights = load_model(default_weights_path())[0], "shipped"
    x = _photo(width, height, device)

    rows: dict[str, dict] = {}
    outputs: dict[str, torch.Tensor] = {}
    for precision in ["fp32", *precisions]:
        derainer = Derainer(model=model, device=str(device), precision=precision, tile=0)
        out, times, peak = _timed(lambda: derainer.run_tensor(x), device, args.warmup, args.runs)
        outputs[precision] = out.float()
        rows[f"fast {precision}"] = {"median_ms": statistics.median(times), "min_ms": min(times), "peak_mb": peak}

    # On its own copy: the fast model (held by the derainers above) keeps its layout and ops.
    plain = straightforward_model(model, device)
    with torch.inference_mode():
        out, times, peak = _timed(lambda: straightforward_forward(plain, x), device, 1, args.baseline_runs)
    rows["straightforward fp32"] = {"median_ms": statistics.median(times), "min_ms": min(times), "peak_mb": peak}
    baseline_ms = rows["straightforward fp32"]["median_ms"]

    result = {
        "device": device_name(device), "torch": torch.__version__, "size": [width, height], "weights": weights,
        "rows": rows,
        "fast_vs_straightforward_fp32_max_abs": (outputs["fp32"] - out.float()).abs().max().item(),
        "psnr_vs_fp32_db": {p: psnr(outputs[p], outputs["fp32"]) for p in precisions},
        "speedup_vs_straightforward": {p: baseline_ms / rows[f"fast {p}"]["median_ms"] for p in precisions},
    }
    best = min(precisions, key=lambda p: rows[f"fast {p}"]["median_ms"])
    result["targets"] = {
        f"{best} frame <= {TARGET_MS:.0f} ms": rows[f"fast {best}"]["median_ms"] <= TARGET_MS,
        f"speed-up >= {TARGET_SPEEDUP:.0f}x": result["speedup_vs_straightforward"][best] >= TARGET_SPEEDUP,
        f"PSNR >= {TARGET_PSNR:.0f} dB (every half precision)": all(v >= TARGET_PSNR for v in result["psnr_vs_fp32_db"].values()),
    }

    print(f"{width}x{height} on {result['device']}, torch {result['torch']}, {weights} weights")
    for name, row in rows.items():
        extra = ""
        precision = name.split()[-1]
        if precision in precisions:
            extra = f"  {result['speedup_vs_straightforward'][precision]:.2f}x vs straightforward, " \
                    f"PSNR vs fp32 {result['psnr_vs_fp32_db'][precision]:.2f} dB"
        print(f"  {name:22s} {row['median_ms']:10.1f} ms (min {row['min_ms']:.1f})  peak {row['peak_mb']:8.0f} MB{extra}")
    print(f"  fast vs straightforward fp32: max |diff| {result['fast_vs_straightforward_fp32_max_abs']:.2e}")
    if device.type != "cuda":
        print("  (not a GPU: the targets below are for an H100 and mean nothing here)")
    for name, ok in result["targets"].items():
        print(f"  target {name}: {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
