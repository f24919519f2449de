"""``jdnet derain``: derain image files, directories, globs, file lists and stdin/stdout."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import typer

from ..errors import JDNetError
from ..inference.derainer import DEFAULT_OVERLAP, Derainer
from ..inference.devices import parse_device_list
from ..io.atomic import atomic_write_bytes, remove_in_flight
from ..io.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, read_bytes
from ..pipelines.batch import STDIO, Job, Result, normalize_ext, parse_shard, plan_jobs, run_jobs_on_workers, shard
from ..pipelines.images import derain_bytes, derain_file
from .console import err_console, fail, interactive, make_progress
from .interrupts import GracefulStop
from .reporter import Reporter

def derain(
    paths: List[str] = typer.Argument(..., metavar="INPUT... OUTPUT", help="Image files, directories, globs or - (stdin), then the output file, directory or - (stdout)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Weights file (default: the shipped weights)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    devices: Optional[str] = typer.Option(None, "--devices", help="One worker per device over the file list: 0,1,... (CUDA indices) or names such as cpu,cuda:1."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 (CUDA) or bf16."),
    ext: Optional[str] = typer.Option(None, "--ext", help="Output format (png, jpg, webp, ...); default: as the input."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose output already exists (resume an interrupted run)."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse images whose header claims more pixels (decompression-bomb guard)."),
    files_from: Optional[str] = typer.Option(None, "--files-from", help="Read input paths from FILE or - (stdin), one per line (or NUL-separated)."),
    shard_spec: Optional[str] = typer.Option(None, "--shard", metavar="K/N", help="Process only the K-th (0-based) of N slices of the sorted input list."),
    json_events: bool = typer.Option(False, "--json", help="One JSON event per file on stdout, then a summary object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print errors (no progress, no summary)."),
    tile: str = typer.Option("auto", "--tile", help="Tile side in px: auto (largest that fits in memory), 0 (whole image) or N."),
    tile_overlap: int = typer.Option(DEFAULT_OVERLAP, "--tile-overlap", help="Overlap between tiles in px (feathered, no seams)."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory budget for --tile auto, e.g. 4GB (default: free GPU memory, or a share of RAM on the CPU)."),
) -> None:
    """Remove rain from images. Exit codes: 0 all ok; 1 some inputs failed; 2 usage error; 130 interrupted."""
    inputs, output = _inputs_and_output(paths, files_from)
    try:
        out_ext = normalize_ext(ext)
        jobs = _plan(inputs, output, ext, json_events)
        if shard_spec:
            jobs = shard(jobs, *parse_shard(shard_spec))
        device_names = parse_device_list(devices) if devices else [device]
        # Options shared by every worker's Derainer.
        options = dict(weights=weights, precision=precision, tile=tile, tile_overlap=tile_overlap, max_memory=max_memory)
        derainers = [Derainer(device=name, **options) for name in device_names]
    except JDNetError as err:
        fail(str(err))

    def make_process(derainer: Derainer) -> Callable[[Path, Path], None]:
        def process(src: Path, dest: Path) -> None:
            if src != STDIO and dest != STDIO:
                derain_file(derainer, src, dest, max_pixels=max_pixels, quality=quality)
                return
            data = sys.stdin.buffer.read() if src == STDIO else read_bytes(src)
            target_ext = out_ext or (None if dest == STDIO else dest.suffix)
            encoded = derain_bytes(derainer, data, target_ext, name=str(src), max_pixels=max_pixels, quality=quality)
            if dest == STDIO:
                sys.stdout.buffer.write(encoded)
                sys.stdout.buffer.flush()
            else:
                atomic_write_bytes(dest, encoded)

        return process

    reporter = Reporter(json_events, quiet)
    graceful = GracefulStop(reporter.say)
    processes = [make_process(d) for d in derainers]
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
    except KeyboardInterrupt:
        # Second Ctrl-C: abandon the files in progress; their temp files go, finished outputs stay.
        remove_in_flight()
        reporter.summary(time.perf_counter() - t0, _where(derainers), interrupted=True)
        if len(processes) > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)  # worker threads cannot be interrupted mid-inference
        raise typer.Exit(130)
    reporter.summary(time.perf_counter() - t0, _where(derainers), interrupted=graceful.stop.is_set())
    if graceful.exit_code is not None:
        raise typer.Exit(graceful.exit_code)
    raise typer.Exit(1 if reporter.counts["failed"] else 0)


def _inputs_and_output(paths: List[str], files_from: Optional[str]) -> tuple[list[str], str]:
    """Split positional arguments into inputs and OUTPUT, adding any --files-from list."""
    *inputs, output = paths
    if files_from is not None:
        if files_from == "-" and "-" in inputs:
            fail("--files-from - and the input - both want stdin")
        try:
            raw = sys.stdin.buffer.read() if files_from == "-" else Path(files_from).read_bytes()
        except OSError as err:
            fail(f"--files-from {files_from}: {err.strerror or err}")
        sep = b"\0" if b"\0" in raw else b"\n"
        names = [os.fsdecode(line.rstrip(b"\r") if sep == b"\n" else line) for line in raw.split(sep)]
        inputs += [name for name in names if name.strip()]
        if not inputs:
            fail(f"--files-from {files_from}: the list is empty")
    elif not inputs:
        fail("need at least one INPUT and an OUTPUT (or --files-from)")
    return inputs, output


def _plan(inputs: list[str], output: str, ext: Optional[str], json_events: bool) -> list[Job]:
    """Jobs for files/directories/globs, or the single stdin/stdout job."""
    stdin_in, stdout_out = "-" in inputs, output == "-"
    if not (stdin_in or stdout_out):
        return plan_jobs(inputs, output, ext)
    if len(inputs) != 1:
        raise JDNetError("- (stdin/stdout) works with exactly one INPUT")
    if stdout_out and json_events:
        raise JDNetError("--json writes events to stdout, so OUTPUT cannot be - (stdout)")
    normalize_ext(ext)
    src = STDIO if stdin_in else Path(inputs[0])
    if stdout_out and src != STDIO and src.is_dir():
        raise JDNetError(f"{src}: writing to - (stdout) takes one image file, not a directory")
    if stdout_out:
        return [Job(src, STDIO)]
    dest = Path(output)
    if dest.is_dir() or dest.suffix.lower() not in IMAGE_EXTENSIONS:
        raise JDNetError(f"{output}: reading stdin needs an OUTPUT image file name (or - for stdout)")
    return [Job(src, dest.with_suffix(normalize_ext(ext)) if ext else dest)]


def _where(derainers: list[Derainer]) -> str:
    return ", ".join(sorted({d.device_description for d in derainers}))
