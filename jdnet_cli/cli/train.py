"""``jdnet train``: train JDNet on a paired dataset or on clean photos with synthetic rain."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import JDNetError
from ..inference.checkpoint import extract_state_dict, infer_arch, read_checkpoint
from ..data.synthetic_rain import RAIN_STYLES
from ..training import LOSSES, SCHEDULES, TRAIN_PRECISIONS, Trainer, TrainConfig
from .console import err_console, fail, interactive
from ..pipelines.interrupts import GracefulStop
from .options import Device


def _val_text(v: dict) -> str:
    line = f"PSNR-Y {v['psnr_y']:.3f} dB, SSIM-Y {v['ssim_y']:.4f}"
    if "sets" in v:
        line += " (" + ", ".join(f"{Path(k).name} {s['psnr_y']:.3f}" for k, s in v["sets"].items()) + ")"
    if "watch" in v:
        line += " [watch: " + ", ".join(f"{Path(k).name} {s['psnr_y']:.3f}" for k, s in v["watch"].items()) + "]"
    return line


def _log_line(record: dict) -> str:
    if "val" in record:
        line = f"step {record['step']}: val {_val_text(record['val'])}"
        if "ema_val" in record:
            line += f"; average {_val_text(record['ema_val'])}"
        return line + (" best, saved" if record.get("best") else "")
    return f"step {record['step']}: loss {record['loss']:.5f}, lr {record['lr']:.3g}, {record['it_s']:.2f} it/s"


def train(
    data: Optional[str] = typer.Argument(None, metavar="[DATA]", help="Paired dataset folder (layout auto-detected); DIR:W gives it sampling weight W."),
    clean: Optional[str] = typer.Option(None, "--clean", help="Clean photos; rainy inputs are rendered on the fly (DIR:W for a weight)."),
    pairs: Optional[List[str]] = typer.Option(None, "--pairs", help="Another paired folder, DIR or DIR:WEIGHT; repeatable."),
    rain_style: str = typer.Option("light", "--rain-style", help=f"Synthetic rain style: {', '.join(RAIN_STYLES)} (see jdnet rain --style)."),
    heavy_fraction: float = typer.Option(0.0, "--heavy-fraction", min=0.0, max=1.0, help="Share of synthetic patches rendered as heavy rain."),
    heavy_style: str = typer.Option("heavy", "--heavy-style", help="Style of those patches, any --rain-style name; meant for heavy (screened) or heavy-additive (added, as heavy-18's streaks are)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Warm start: build the model from this inference weights file (fresh optimiser)."),
    warmup: int = typer.Option(0, "--warmup", min=0, help="Linear learning-rate warm-up over the first N steps."),
    ema: float = typer.Option(0.0, "--ema", help="Also keep a moving average of the weights with this decay (e.g. 0.998; 0: off); validated too, and exported when it is better."),
    schedule: str = typer.Option("step", "--schedule", help=f"Learning-rate decay: {' or '.join(SCHEDULES)} (step: x0.1 at 60% and 80%)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoint.pt, train_log.jsonl, jdnet.pt."),
    steps: int = typer.Option(1000, "--steps", min=1, help="Optimisation steps in total."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Patches per step (per process under torchrun)."),
    patch_size: int = typer.Option(64, "--patch-size", min=16, help="Random crop size."),
    lr: float = typer.Option(5e-4, "--lr", help="Adam learning rate (peak, after any warm-up)."),
    loss: str = typer.Option("ssim", "--loss", help=f"One of {', '.join(LOSSES)} (ssim means -SSIM)."),
    flips: bool = typer.Option(False, "--flips/--no-flips", help="Random horizontal flips."),
    rotations: bool = typer.Option(False, "--rotations/--no-rotations", help="Random 90-degree rotations."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Seed for weights init and patch sampling."),
    channels: Optional[int] = typer.Option(None, "--channels", min=2, help="Feature channels (the paper: 32; default: 32, or the --init file's)."),
    units: Optional[int] = typer.Option(None, "--units", min=1, help="Joint units (the paper: 32; default: 32, or the --init file's)."),
    save_every: int = typer.Option(500, "--save-every", min=1, help="Checkpoint every N steps."),
    log_every: int = typer.Option(10, "--log-every", min=1, help="Log (JSONL and progress) every N steps."),
    val: Optional[List[Path]] = typer.Option(None, "--val", help="Paired set scored (PSNR-Y, SSIM-Y) every --val-every steps; repeatable. The best is kept as OUT/best.pt."),
    val_every: int = typer.Option(1000, "--val-every", min=1, help="Validation interval in steps."),
    val_limit: int = typer.Option(0, "--val-limit", min=0, help="Score only the first N validation pairs (0: all)."),
    watch: Optional[List[Path]] = typer.Option(None, "--watch", help="Paired set also scored at each validation and logged, but not used to choose best.pt (e.g. heavy rain); repeatable."),
    keep_validated: bool = typer.Option(False, "--keep-validated", help="Also keep every validated model (and its average) as OUT/validated/step-N[-ema].pt."),
    device: Device = "auto",
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0: PyTorch's default)."),
    precision: str = typer.Option("auto", "--precision", help="auto: mixed precision (CUDA: fp16 autocast; CPU with AVX512-BF16: the dense fusions in bf16 with fp32 sums); fp32: float32 throughout."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt exactly where it stopped."),
    export: Optional[Path] = typer.Option(None, "--export", help="Where to write the inference weights (default OUT/jdnet.pt)."),
) -> None:
    """Train JDNet (-SSIM, Adam, 64x64 crops by default); run under torchrun for DDP."""
    if not (math.isfinite(lr) and lr > 0):
        fail(f"--lr must be a positive number, not {lr:g}")
    if schedule not in SCHEDULES:
        fail(f"--schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    if precision not in TRAIN_PRECISIONS:
        fail(f"--precision must be one of {', '.join(TRAIN_PRECISIONS)}, not {precision!r}")
    if rain_style not in RAIN_STYLES:
        fail(f"--rain-style must be one of {', '.join(RAIN_STYLES)}, not {rain_style!r}")
    if heavy_style not in RAIN_STYLES:
        fail(f"--heavy-style must be one of {', '.join(RAIN_STYLES)}, not {heavy_style!r}")
    if watch and not val:
        fail("--watch sets are scored at each validation: give --val too")
    if keep_validated and not val:
        fail("--keep-validated keeps the models each validation scores: give --val too")
    if init is not None and (channels is None or units is None):
        try:
            arch = infer_arch(extract_state_dict(read_checkpoint(init), str(init))[0], str(init))
        except JDNetError as err:
            fail(str(err))
        channels = arch["channels"] if channels is None else channels
        units = arch["num_units"] if units is None else units
    channels = 32 if channels is None else channels
    units = 32 if units is None else units
    if channels % 2:
        fail("--channels must be even (the self-calibrated convolution splits the channels in two)")
    cfg = TrainConfig(
        out_dir=str(out), data=data, clean=clean, pairs=list(pairs or []), heavy_fraction=heavy_fraction,
        rain_style=rain_style, heavy_style=heavy_style, init=str(init) if init else None, warmup=warmup, schedule=schedule, ema=ema,
        steps=steps, batch_size=batch_size, patch_size=patch_size, lr=lr, loss=loss, flips=flips,
        rotations=rotations, seed=seed, channels=channels, num_units=units, save_every=save_every,
        log_every=log_every, val=[str(v) for v in val] if val else None, val_every=val_every if val else 0,
        val_limit=val_limit, device=device, threads=threads, watch=[str(w) for w in watch or []], keep_validated=keep_validated,
        precision=precision,
    )
    if out.exists() and not out.is_dir():
        fail(f"{out}: exists and is not a folder; --out names the run's folder")
    if export is not None and export.is_dir():  # found now, not after the training it would waste
        fail(f"{export}: is a folder; --export names the weights file to write")
    if not resume and (out / "checkpoint.pt").exists():
        fail(f"{out / 'checkpoint.pt'} exists: pass --resume to continue it, or choose another --out")
    console = err_console()
    try:
        trainer = Trainer(cfg)
        lead = trainer.rank == 0
        if resume:
            changed = trainer.resume()
            if lead:
                console.print(f"resumed {trainer.checkpoint_path} at step {trainer.step}", markup=False)
                if changed:
                    console.print(f"note: options differ from the checkpoint's run: {', '.join(changed)}", markup=False)
                if trainer.lr_asked is not None:
                    console.print(f"note: --lr {trainer.lr_asked:g} is not used: a resumed run keeps its learning rate "
                                  f"{trainer.cfg.lr:g} (start a new run with --init to change it)", markup=False)
        if lead:
            data_mix = trainer.data
            parts = [
                f"{len(src.images)} {'clean images + synthetic rain' if name.startswith('synthetic:') else 'pairs'}"
                for src, name in zip(data_mix.sources, data_mix.names)
            ]
            if len(parts) > 1:
                parts = [f"{part} (p={p:.2f})" for part, p in zip(parts, data_mix.probs)]
            source = ", ".join(parts)
            if trainer.cfg.init and trainer.init_sha256:
                console.print(f"warm start from {trainer.cfg.init} (sha256 {trainer.init_sha256[:12]}...)", markup=False)
            console.print(
                f"training JDNet({channels} ch, {units} units) on {source} per process, {trainer.world} process(es), "
                f"{trainer.device}, batch {batch_size}, patch {patch_size}, loss {loss}",
                markup=False,
            )
        # A DDP job is left to torchrun's own handling: ranks stopping at different steps would hang
        # in the next all-reduce.
        graceful = GracefulStop(lambda msg: console.print(msg, markup=False), what="step")
        with graceful.installed(active=trainer.world == 1):
            _run(trainer, console, lead, graceful.stop.is_set)
        if graceful.stop.is_set():
            console.print(f"interrupted at step {trainer.step}; checkpoint saved, continue with --resume", markup=False)
            trainer.close()
            raise typer.Exit(graceful.exit_code or 130)
        dest = trainer.export(export)
        if lead:
            console.print(f"done: {trainer.step} steps in {trainer.elapsed:.1f}s; weights: {dest}", markup=False)
        trainer.close()
    except JDNetError as err:
        fail(str(err))
    except OSError as err:  # the run folder's disk filled up or became unwritable: checkpoints are atomic
        fail(f"{err.filename}: {err.strerror}" if err.filename else str(err))


def _run(trainer: Trainer, console, lead: bool, should_stop) -> None:
    """The loop with a rich progress bar on a terminal, plain log lines otherwise (rank 0 only)."""
    if not lead:
        trainer.run(should_stop)
        return
    if not interactive():
        trainer.on_log = lambda rec: console.print(_log_line(rec), markup=False)
        trainer.run(should_stop)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
        TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]}  {task.fields[val]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("train", total=trainer.cfg.steps, completed=trainer.step, loss="-", lr="-", speed="", val="")

        def on_log(rec: dict) -> None:
            if "val" in rec:
                v = rec["val"]
                text = f"val {v['psnr_y']:.2f} dB / {v['ssim_y']:.4f}"
                if "ema_val" in rec:
                    text += f", average {rec['ema_val']['psnr_y']:.2f} dB"
                progress.update(task, val=text)
            else:
                progress.update(task, loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2g}", speed=f"{rec['it_s']:.2f} it/s")

        trainer.on_log = on_log
        trainer.run(should_stop, on_step=lambda step: progress.update(task, completed=step))
