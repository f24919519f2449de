"""Inference speed and peak memory of a JDNet on synthetic inputs, one image size at a time.

On the CPU each size runs in a fresh Python process by default, so its peak RSS is that size's own
high-water mark and not the largest size measured so far in this process.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import JDNetError
from ..inference.derainer import Derainer
from ..inference.devices import resolve_device
from ..inference.tiling import parse_tile

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((481, 321), (1280, 720), (1920, 1080))


@dataclass(frozen=True)
class SpeedConfig:
    """What to measure: one input size on one device/precision/batch/tile setting."""

    size: tuple[int, int]  # (W, H)
    device: str = "auto"
    precision: str = "fp32"
    batch: int = 1
    tile: str = "0"
    runs: int | None = None  # None: 10 on CUDA, 3 on the CPU
    warmup: int | None = None  # None: 3 on CUDA, 1 on the CPU
    weights: str | None = None  # None: a randomly initialised model (speed does not depend on weights)
    channels: int = 32
    units: int = 32
    threads: int | None = None
    seed: int = 0


@dataclass
class SpeedResult:
    """Timings of one configuration; times are per image (batch time / batch)."""

    size: list[int]
    device: str
    device_name: str
    precision: str
    batch: int
    tile: str
    runs: int
    warmup: int
    median_ms: float
    min_ms: float
    max_ms: float
    iqr_ms: float
    cpu_time_ms: float
    megapixels_per_s: float
    frames_per_s: float
    peak_memory_mb: float
    memory_measure: str
    baseline_memory_mb: float | None
    model: dict = field(default_factory=dict)
    torch: str = ""
    threads: int = 0
    cpu: str = ""
    isolated: bool = False


def parse_image_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720); raise JDNetError on anything else."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise JDNetError(f"--size {text!r}: expected WxH, e.g. 1280x720") from None
    if w < 1 or h < 1:
        raise JDNetError(f"--size {text!r}: width and height must be positive")
    return w, h


def build_derainer(cfg: SpeedConfig) -> Derainer:
    """The Derainer to time: the given weights, or a random full-size (or --units/--channels) JDNet."""
    from ..models import JDNet

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    common = dict(device=cfg.device, precision=cfg.precision, tile=cfg.tile)
    if cfg.weights:
        return Derainer(weights=cfg.weights, **common)
    torch.manual_seed(cfg.seed)
    return Derainer(model=JDNet(channels=cfg.channels, num_units=cfg.units), **common)


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (10^6 bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes on macOS, KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: SpeedConfig, isolated: bool = False) -> SpeedResult:
    """Warm up, then time ``runs`` synchronised forward passes of one size in this process."""
    w, h = cfg.size
    if cfg.batch < 1:
        raise JDNetError(f"--batch must be >= 1, got {cfg.batch}")
    derainer = build_derainer(cfg)
    dev = derainer.device
    runs = cfg.runs if cfg.runs is not None else (10 if dev.type == "cuda" else 3)
    warmup = cfg.warmup if cfg.warmup is not None else (3 if dev.type == "cuda" else 1)
    if runs < 1 or warmup < 0:
        raise JDNetError("--runs must be >= 1 and --warmup >= 0")
    tiled = parse_tile(cfg.tile) != 0
    gen = torch.Generator().manual_seed(cfg.seed)
    if tiled:
        # Tiling lives in the image path of the Derainer (one H x W x 3 array at a time).
        if cfg.batch != 1:
            raise JDNetError("--tile needs --batch 1 (tiles are taken from one image at a time)")
        rgb = torch.rand(h, w, 3, generator=gen).numpy()

        def step() -> None:
            derainer(rgb)
    else:
        # Inputs already on the device: this times the network, not decoding or host transfers.
        x = torch.rand(cfg.batch, 3, h, w, generator=gen).to(dev)

        def step() -> None:
            derainer.run_tensor(x)

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    baseline = None if dev.type == "cuda" else _rss_mb()
    try:
        for _ in range(warmup):
            step()
        _sync(dev)
        times = []
        cpu0 = time.process_time()
        for _ in range(runs):
            t0 = time.perf_counter()
            step()
            _sync(dev)
            times.append(time.perf_counter() - t0)
        cpu_total = time.process_time() - cpu0
    except torch.OutOfMemoryError:
        raise JDNetError(f"{w}x{h} batch {cfg.batch}: out of memory on {derainer.device_description}; try --tile or a smaller --batch") from None
    if dev.type == "cuda":
        peak, how = torch.cuda.max_memory_allocated(dev) / 1e6, "torch.cuda.max_memory_allocated"
    else:
        peak, how = _rss_mb(), "peak RSS of a fresh process" if isolated else "peak RSS of this process (high-water mark so far)"
    per_image = [t / cfg.batch * 1000 for t in times]
    q = np.percentile(per_image, [25, 75])
    median = statistics.median(per_image)
    return SpeedResult(
        size=[w, h],
        device=str(dev),
        device_name=derainer.device_description,
        precision=cfg.precision,
        batch=cfg.batch,
        tile=str(cfg.tile),
        runs=runs,
        warmup=warmup,
        median_ms=median,
        min_ms=min(per_image),
        max_ms=max(per_image),
        iqr_ms=float(q[1] - q[0]),
        # CPU seconds of all threads per image: on a shared machine this moves less than wall time.
        cpu_time_ms=cpu_total / (runs * cfg.batch) * 1000,
        megapixels_per_s=w * h / 1e6 / (median / 1000),
        frames_per_s=1000 / median,
        peak_memory_mb=peak,
        memory_measure=how,
        baseline_memory_mb=baseline,
        model={
            "channels": derainer.model.channels,
            "units": derainer.model.num_units,
            "weights": str(derainer.weights_path) if derainer.weights_path else None,
        },
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        isolated=isolated,
    )


def measure_in_fresh_process(cfg: SpeedConfig) -> SpeedResult:
    """Run :func:`measure` in a new interpreter so the peak RSS belongs to this size alone."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "jdnet_cli.benchmarking.speed", json.dumps(asdict(cfg))],
        capture_output=True,
        env=env,
        text=True,
    )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise JDNetError(lines[-1] if lines else f"speed measurement process failed (exit {proc.returncode})")
    return SpeedResult(**json.loads(proc.stdout.strip().splitlines()[-1]))


def run_speed(
    configs: list[SpeedConfig], isolate: bool | None = None, on_result: Callable[[SpeedResult], None] | None = None
) -> list[SpeedResult]:
    """Measure each configuration; on the CPU each in a fresh process unless ``isolate`` is False."""
    results = []
    for cfg in configs:
        on_cpu = resolve_device(cfg.device).type == "cpu"
        if isolate if isolate is not None else on_cpu:
            res = measure_in_fresh_process(cfg)
        else:
            res = measure(cfg)
        results.append(res)
        if on_result:
            on_result(res)
    return results


def _child_main(argv: list[str]) -> int:
    """Entry point of the fresh process: a SpeedConfig as JSON in, a SpeedResult as JSON out."""
    raw = json.loads(argv[0])
    raw["size"] = tuple(raw["size"])
    try:
        res = measure(SpeedConfig(**raw), isolated=True)
    except JDNetError as err:
        print(str(err), file=sys.stderr)
        return 2
    print(json.dumps(asdict(res)))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
