"""``jdnet benchmark quality`` (PSNR/SSIM on paired datasets) and ``jdnet benchmark speed`` (ms, MP/s, memory)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..benchmarking.quality import INPUT_NAME, SCORE_KEYS, load_datasets, model_names, quality_report, score_datasets, write_csv
from ..benchmarking.speed import DEFAULT_SIZES, SpeedConfig, parse_image_size, run_speed
from ..errors import JDNetError
from ..inference.checkpoint import extract_state_dict, read_checkpoint
from ..inference.derainer import Derainer
from ..inference.devices import device_name, resolve_device, resolve_precision
from ..inference.shipped_weights import default_weights_path
from ..inference.tiling import parse_tile
from .console import err_console, fail, interactive, make_progress
from .options import Device, Ensemble, Precision, Tile

benchmark_app = typer.Typer(
    name="benchmark",
    help="Measure deraining quality (PSNR/SSIM) and inference speed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_HEADERS = {"psnr_y": "PSNR-Y", "ssim_y": "SSIM-Y", "psnr_rgb": "PSNR-RGB", "ssim_rgb": "SSIM-RGB"}


def _table_console() -> Console:
    """stdout console; in a pipe, wide enough that the table is not squeezed to 80 columns."""
    import sys

    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _shipped_weights() -> Path:
    try:
        return default_weights_path()
    except JDNetError:
        raise JDNetError("no shipped weights in this install; pass --weights PATH, or --input-only to score the rainy inputs alone") from None


def _fmt(key: str, value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3f}" if key.startswith("psnr") else f"{value:.4f}"


@benchmark_app.command("quality")
def quality(
    datasets: List[Path] = typer.Argument(..., metavar="DATASET...", help="Paired dataset folders (the layouts `train` reads)."),
    weights: Optional[List[Path]] = typer.Option(None, "--weights", "-w", help="Weights to score (a file, or shipped weights by name: default, heavy); repeat for several models (default: the shipped default)."),
    input_only: bool = typer.Option(False, "--input-only", help="Score only the rainy inputs against the clean images; no model."),
    device: Device = "auto",
    precision: Precision = "fp32",
    tile: Tile = "0",
    crop_border: int = typer.Option(0, "--crop-border", min=0, help="Ignore N pixels on every side when scoring."),
    no_quantize: bool = typer.Option(False, "--no-quantize", help="Score float outputs instead of 8-bit-rounded ones."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write per-image scores to this CSV file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout instead of the table."),
    save_outputs: Optional[Path] = typer.Option(None, "--save-outputs", help="Keep derained images under DIR/MODEL/DATASET/."),
    ensemble: Ensemble = 1,
) -> None:
    """PSNR/SSIM (Y channel, BasicSR convention, and RGB) of the rainy input and of each model's output."""
    if input_only and weights:
        fail("--input-only scores no model; drop --weights")
    if input_only and save_outputs:
        fail("--input-only produces no outputs to save; drop --save-outputs")
    if csv_path is not None and csv_path.is_dir():
        fail(f"{csv_path}: is a folder; --csv names the file to write")
    try:
        data = load_datasets(datasets)
        weight_paths = list(weights) if weights else ([] if input_only else [_shipped_weights()])
        models = {
            name: Derainer(weights=w, device=device, precision=precision, tile=tile, ensemble=ensemble)
            for name, w in zip(model_names(weight_paths), weight_paths)
        }
        dev_text = next(iter(models.values())).device_description if models else "none (input only)"
    except JDNetError as err:
        fail(str(err))
    console = err_console()
    total = sum(len(pairs) for _, _, pairs in data) * (1 + len(models))
    try:
        if interactive() and not as_json:
            with make_progress(console, unit="scores") as progress:
                task = progress.add_task("quality", total=total, rate="")
                summaries, rows = score_datasets(
                    data, models, crop_border, not no_quantize, save_outputs, on_image=lambda _r: progress.update(task, advance=1)
                )
        else:
            summaries, rows = score_datasets(data, models, crop_border, not no_quantize, save_outputs)
        if csv_path:
            write_csv(rows, csv_path)
    except JDNetError as err:
        fail(str(err), code=1)
    except OSError as err:
        fail(f"{err.filename or ''}: {err.strerror or err}", code=1)
    if as_json:
        settings = {"crop_border": crop_border, "quantize_8bit": not no_quantize, "precision": precision, "tile": tile,
                    "ensemble": ensemble}
        typer.echo(json.dumps(quality_report(summaries, dev_text, models, settings), indent=2, allow_nan=False))
        return
    table = Table(title="Deraining quality (PSNR in dB; Y: BT.601 luma, BasicSR convention)")
    for col in ("dataset", "pairs", "model", *(_HEADERS[k] for k in SCORE_KEYS)):
        table.add_column(col, justify="right" if col not in ("dataset", "model") else "left")
    for s in summaries:
        for entry, sc in s.scores.items():
            name = f"{entry} (rainy)" if entry == INPUT_NAME else entry
            table.add_row(s.name, str(s.pairs), name, *(_fmt(k, sc[k]) for k in SCORE_KEYS))
    _table_console().print(table)
    console.print(
        f"device: {dev_text}; crop border {crop_border}; outputs {'as floats' if no_quantize else 'rounded to 8 bits'}"
        + (f"; per-image scores in {csv_path}" if csv_path else ""),
        markup=False,
    )


@benchmark_app.command("speed")
def speed(
    sizes: Optional[List[str]] = typer.Option(None, "--size", help="WxH; repeat for several (default: 481x321, 1280x720, 1920x1080)."),
    device: Device = "auto",
    precisions: Optional[List[str]] = typer.Option(None, "--precision", help="fp32, fp16 (CUDA) or bf16; repeat to compare."),
    batch: int = typer.Option(1, "--batch", min=1, help="Images per forward pass."),
    tile: Tile = "0",
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Weights file (default: a randomly initialised model; speed does not depend on weights)."),
    units: int = typer.Option(32, "--units", min=1, help="Joint units of the random model (the paper's model has 32)."),
    channels: int = typer.Option(32, "--channels", min=4, help="Channels of the random model (the paper's model has 32)."),
    runs: Optional[int] = typer.Option(None, "--runs", min=1, help="Timed runs per size (default 10 on CUDA, 3 on the CPU)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", min=0, help="Untimed runs first (default 3 on CUDA, 1 on the CPU)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)."),
    in_process: bool = typer.Option(False, "--in-process", help="CPU: measure in this process (peak RSS is then the process high-water mark)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout instead of the table."),
) -> None:
    """Milliseconds per image, megapixels/s, frames/s and peak memory on synthetic inputs."""
    try:
        dims = [parse_image_size(s) for s in sizes] if sizes else list(DEFAULT_SIZES)
        dev = resolve_device(device)
        for p in precisions or ["fp32"]:
            resolve_precision(p, dev)
        if parse_tile(tile) != 0 and batch != 1:
            raise JDNetError("--tile needs --batch 1 (tiles are taken from one image at a time)")
        if channels % 2:
            raise JDNetError("--channels must be even (the self-calibrated convolution splits the channels in two)")
        if weights is not None:
            extract_state_dict(read_checkpoint(weights), str(weights))  # a missing or foreign file is a usage error
        configs = [
            SpeedConfig(
                size=d, device=str(dev), precision=p, batch=batch, tile=tile, runs=runs, warmup=warmup,
                weights=str(weights) if weights else None, channels=channels, units=units, threads=threads,
            )
            for p in (precisions or ["fp32"])
            for d in dims
        ]
    except JDNetError as err:
        fail(str(err))
    console = err_console()
    if not as_json:
        console.print(f"measuring {len(configs)} configuration(s) on {device_name(dev)} ...", markup=False)
    try:
        results = run_speed(configs, isolate=False if in_process else None)
    except JDNetError as err:
        fail(str(err), code=1)
    if as_json:
        typer.echo(json.dumps({"results": [asdict(r) for r in results]}, indent=2))
        return
    first = results[0]
    model = first.model
    what = f"weights {model['weights']}" if model["weights"] else f"random JDNet ({model['channels']} ch, {model['units']} units)"
    table = Table(title=f"Inference speed: {what}; {first.device_name}, torch {first.torch}, {first.threads} threads")
    for col in ("size", "precision", "batch", "tile", "median ms/img", "min-max ms", "CPU ms/img", "MP/s", "img/s", "peak MB"):
        table.add_column(col, justify="left" if col in ("size", "precision") else "right")
    for r in results:
        table.add_row(
            f"{r.size[0]}x{r.size[1]}", r.precision, str(r.batch), r.tile, f"{r.median_ms:.1f}",
            f"{r.min_ms:.1f}-{r.max_ms:.1f}", f"{r.cpu_time_ms:.0f}", f"{r.megapixels_per_s:.3f}", f"{r.frames_per_s:.3f}", f"{r.peak_memory_mb:.0f}",
        )
    _table_console().print(table)
    console.print(f"{first.runs} timed runs after {first.warmup} warm-up; peak memory: {first.memory_measure}", markup=False)
