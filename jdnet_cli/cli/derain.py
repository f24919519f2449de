"""``jdnet derain``: derain image files, directories, globs, file lists and stdin/stdout."""
from __future__ import annotations

import os
import sys
import time
from typing import List, Optional

import typer

from ..errors import JDNetError
from ..inference.derainer import Derainer
from ..inference.devices import parse_device_list
from ..io.atomic import remove_in_flight
from ..io.images import DEFAULT_MAX_PIXELS
from ..pipelines.images import image_processor
from ..pipelines.planning import check_standard_streams, normalize_ext, parse_shard, plan_image_jobs, read_input_list, shard_jobs
from ..pipelines.runner import Result, run_jobs_on_workers
from .console import fail, interactive, make_progress
from ..pipelines.interrupts import GracefulStop, exit_for_closed_stdout
from .options import Device, Ensemble, JsonEvents, MaxMemory, Precision, Quiet, Tile, TileOverlap, Weights
from .reporter import Reporter


def derain(
    paths: List[str] = typer.Argument(..., metavar="INPUT... OUTPUT", help="Image files, directories, globs or - (stdin), then the output file, directory or - (stdout)."),
    weights: Weights = None,
    device: Device = "auto",
    devices: Optional[str] = typer.Option(None, "--devices", help="One worker per device over the file list: 0,1,... (CUDA indices) or names such as cpu,cuda:1."),
    precision: Precision = "fp32",
    ext: Optional[str] = typer.Option(None, "--ext", help="Output format (png, jpg, webp, ...); default: as the input."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose output already exists (resume an interrupted run)."),
    quality: Optional[int] = typer.Option(None, "--quality", min=1, max=100, help="JPEG/WebP/HEIC/AVIF quality; 100: lossless WebP. Default 95, and lossless for a lossless WebP input."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Refuse images whose header claims more pixels (decompression-bomb guard)."),
    files_from: Optional[str] = typer.Option(None, "--files-from", help="Read input paths from FILE or - (stdin), one per line (or NUL-separated)."),
    shard_spec: Optional[str] = typer.Option(None, "--shard", metavar="K/N", help="Process only the K-th (0-based) of N slices of the sorted input list."),
    json_events: JsonEvents = False,
    quiet: Quiet = False,
    tile: Tile = "auto",
    tile_overlap: TileOverlap = None,
    max_memory: MaxMemory = None,
    ensemble: Ensemble = 1,
) -> None:
    """Remove rain from images. Exit codes: 0 all ok; 1 some inputs failed; 2 usage error; 130 interrupted."""
    *inputs, output = paths
    try:
        check_standard_streams("-" in inputs or files_from == "-", "OUTPUT -" if output == "-" else "--json" if json_events else None)
    except JDNetError as err:
        fail(str(err))
    if files_from == "-" and "-" in inputs:
        fail("--files-from - and the input - both want stdin")
    if output == "-" and json_events:
        fail("--json writes events to stdout, so OUTPUT cannot be - (stdout)")
    try:
        if files_from is not None:
            listed = read_input_list(files_from)
            if files_from == "-" and "-" in listed:
                fail("--files-from - reads the list from stdin, so the list cannot name - (stdin) as an input")
            inputs += listed
        elif not inputs:
            fail("need at least one INPUT and an OUTPUT (or --files-from)")
        out_ext = normalize_ext(ext)
        jobs = plan_image_jobs(inputs, output, ext)
        if shard_spec:
            jobs = shard_jobs(jobs, *parse_shard(shard_spec))
        options = dict(weights=weights, precision=precision, tile=tile, tile_overlap=tile_overlap, max_memory=max_memory,
                       ensemble=ensemble)
        derainers = [Derainer(device=name, **options) for name in (parse_device_list(devices) if devices else [device])]
    except JDNetError as err:
        fail(str(err))
    processes = [image_processor(d, out_ext, max_pixels, quality) for d in derainers]
    where = ", ".join(sorted({d.device_description for d in derainers}))
    reporter = Reporter(json_events, quiet)
    graceful = GracefulStop(reporter.say)
    t0 = time.perf_counter()
    try:
        with graceful.installed():
            if interactive() and not quiet:
                with make_progress(reporter.console) as progress:
                    task = progress.add_task("derain", total=len(jobs), rate="")

                    def on_result(res: Result) -> None:
                        reporter.report(res)
                        rate = reporter.done / max(time.perf_counter() - t0, 1e-9)
                        progress.update(task, advance=1, rate=f"{rate:.2f} img/s")

                    run_jobs_on_workers(jobs, processes, skip_existing, on_result, graceful.stop)
            else:
                run_jobs_on_workers(jobs, processes, skip_existing, reporter.report, graceful.stop)
    except BrokenPipeError:  # the reader of the --json events went away, as 'head' does
        graceful.stop.set()
        exit_for_closed_stdout()
    except KeyboardInterrupt:
        # Second Ctrl-C: abandon the files in progress; their temp files go, finished outputs stay.
        remove_in_flight()
        reporter.summary(time.perf_counter() - t0, where, interrupted=True)
        if len(processes) > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)  # worker threads cannot be interrupted mid-inference
        raise typer.Exit(130)
    reporter.summary(time.perf_counter() - t0, where, interrupted=graceful.stop.is_set())
    if graceful.exit_code is not None:
        raise typer.Exit(graceful.exit_code)
    raise typer.Exit(1 if reporter.counts["failed"] else 0)
