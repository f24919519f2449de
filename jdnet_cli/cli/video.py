"""``jdnet video``: derain video files, directories of videos and image sequences."""
from __future__ import annotations

import time
from fractions import Fraction
from typing import List, Optional

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..errors import JDNetError
from ..inference.derainer import Derainer
from ..io.video import CODECS, EncodeSettings, check_encoder, container_refusal, settings_for_output
from ..pipelines.planning import check_standard_streams
from ..pipelines.runner import Result
from ..pipelines.video import VideoInterrupted, derain_video, plan_video_jobs
from .console import fail, interactive, make_progress
from ..pipelines.interrupts import GracefulStop
from .options import Device, Ensemble, JsonEvents, MaxMemory, Precision, Quiet, Tile, TileOverlap, Weights
from .reporter import Reporter


def video(
    paths: List[str] = typer.Argument(..., metavar="INPUT... OUTPUT", help="Video files, directories of videos, frame folders or printf patterns (frame%04d.png), then the output file or directory."),
    weights: Weights = None,
    device: Device = "auto",
    precision: Precision = "fp32",
    codec: str = typer.Option("auto", "--codec", help=f"Video codec: {', '.join(CODECS)}; auto: libx264, libvpx-vp9 for .webm."),
    crf: Optional[int] = typer.Option(None, "--crf", min=0, max=63, help="Quality for x264/x265/vp9 (default 12/14/18: >= 40 dB from the model output)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Encoder preset (x264/x265: ultrafast..veryslow; vp9: good, best, realtime)."),
    pix_fmt: Optional[str] = typer.Option(None, "--pix-fmt", help="Output pixel format (default: yuv420p, 10-bit for 10-bit sources; yuv444p for odd frame sizes)."),
    start: Optional[float] = typer.Option(None, "--start", min=0.0, help="Start at this time (seconds)."),
    duration: Optional[float] = typer.Option(None, "--duration", min=0.0, help="Process this many seconds."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Frames per forward pass (default: 4 on CUDA, 1 on CPU)."),
    fps: Optional[str] = typer.Option(None, "--fps", help="Frame rate of image-sequence inputs (e.g. 25, 30000/1001); default 25."),
    tile: Tile = "auto",
    tile_overlap: TileOverlap = None,
    max_memory: MaxMemory = None,
    ensemble: Ensemble = 1,
    json_events: JsonEvents = False,
    quiet: Quiet = False,
) -> None:
    """Remove rain from videos, keeping audio, subtitles, timing and metadata. Exit 0: all ok; 1: some failed; 2: usage error; 130: interrupted."""
    if len(paths) < 2:
        fail("need at least one INPUT and an OUTPUT")
    *inputs, output = paths
    try:
        check_standard_streams(False, "--json" if json_events else None)
    except JDNetError as err:
        fail(str(err))
    try:
        seq_fps = Fraction(fps or "25")
        if seq_fps <= 0:
            raise ValueError
    except (ValueError, ZeroDivisionError):
        fail(f"invalid --fps {fps!r}")
    if codec != "auto" and codec not in CODECS:
        fail(f"unsupported --codec {codec!r} (use {', '.join(CODECS)})")
    if duration is not None and duration <= 0:
        fail("--duration must be more than 0 seconds")
    settings = EncodeSettings(codec, crf, preset, pix_fmt)
    try:
        jobs = plan_video_jobs(inputs, output)
        if fps is not None and not any(job.sequence for job in jobs):
            # A video file has its own frame timing, which jdnet keeps: a rate given for it would be ignored.
            raise JDNetError("--fps sets the rate of image-sequence inputs; these inputs are video files, whose own "
                             "timing is kept")
        check_encoder_options(settings, [job.output for job in jobs if job.output is not None])
        derainer = Derainer(weights=weights, device=device, precision=precision, tile=tile, tile_overlap=tile_overlap,
                            max_memory=max_memory, ensemble=ensemble)
    except JDNetError as err:
        fail(str(err))
    batch = batch_size or (4 if derainer.device.type == "cuda" else 1)
    reporter = Reporter(json_events, quiet)
    # A killed job gets the same clean shutdown as Ctrl-C: no temp files or corrupt outputs left.
    graceful = GracefulStop(reporter.say, finish_current=False)
    t0 = time.perf_counter()
    with graceful.installed():
        for job in jobs:
            if job.output is None:
                reporter.report(Result(str(job.input), None, "failed", error=job.error))
                continue
            t_job = time.perf_counter()
            try:
                res = _run_one(derainer, job, settings, start, duration, batch, seq_fps, reporter)
            except VideoInterrupted as stop:
                if stop.partial is not None:
                    reporter.say(f"interrupted: kept a valid partial file {stop.partial} ({stop.frames} frames); {job.output} was not written")
                else:
                    reporter.say(f"interrupted: nothing written for {job.input}")
                reporter.emit({"input": str(job.input), "output": str(stop.partial) if stop.partial else None, "status": "interrupted",
                               "frames": stop.frames, "ms": round((time.perf_counter() - t_job) * 1000, 1), "error": None})
                reporter.summary(time.perf_counter() - t0, derainer.device_description, interrupted=True)
                raise typer.Exit(graceful.exit_code or 130)
            except (JDNetError, RuntimeError) as err:  # RuntimeError: torch (e.g. out of memory)
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                msg = msg.removeprefix(f"{job.input}: ")  # the reporter names the input itself
                written = getattr(err, "partial", None) or job.output  # a damaged input's derained part
                reporter.report(Result(str(job.input), str(written), "failed", (time.perf_counter() - t_job) * 1000, msg))
                continue
            reporter.report(Result(str(job.input), str(res.output), "ok", res.seconds * 1000, note=res.note), {"frames": res.frames})
            rate = res.frames / max(res.seconds, 1e-9)
            reporter.info(f"{job.input} -> {res.output}: {res.frames} frames in {res.seconds:.1f}s ({rate:.2f} frames/s)")
    reporter.summary(time.perf_counter() - t0, derainer.device_description, interrupted=False)
    raise typer.Exit(1 if reporter.counts["failed"] else 0)


def _run_one(derainer, job, settings, start, duration, batch, seq_fps, reporter: Reporter):
    """One video with a progress bar on a terminal (no total when the container has no frame count)."""
    console = reporter.console
    if not interactive() or reporter.quiet:
        return derain_video(derainer, job.input, job.output, settings, start, duration, batch, job.sequence, seq_fps)
    t0 = time.perf_counter()
    state: dict = {}

    def rate(done: int) -> str:
        return f"{done / max(time.perf_counter() - t0, 1e-9):.2f} frames/s"

    def on_start(total: int | None) -> None:
        if total:
            progress = make_progress(console, unit="frames")
        else:
            progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TextColumn("{task.completed} frames"),
                                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console)
        progress.start()
        state["progress"], state["task"] = progress, progress.add_task(job.input.name, total=total, rate="")

    def on_frames(done: int) -> None:
        state["progress"].update(state["task"], completed=done, rate=rate(done))

    try:
        return derain_video(derainer, job.input, job.output, settings, start, duration, batch, job.sequence, seq_fps,
                            on_start=on_start, on_frames=on_frames)
    finally:
        if "progress" in state:
            state["progress"].stop()


def check_encoder_options(settings: EncodeSettings, outputs: list) -> None:
    """Raise JDNetError (a usage error) when the codec options cannot encode for these outputs' containers."""
    tried = set()
    for dest in outputs:
        suffix = dest.suffix.lower()
        if container_refusal(suffix):
            continue  # that one output fails by name; the others still run
        chosen = settings_for_output(settings, suffix, 16, 16, False)
        if (chosen, suffix) not in tried:
            tried.add((chosen, suffix))
            check_encoder(chosen, suffix, settings)
