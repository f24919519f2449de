"""``jdnet derain``: derain image files, directories and globs."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from ..batch import Result, plan_jobs, run_jobs
from ..derainer import DEFAULT_OVERLAP, Derainer
from ..errors import JDNetError
from ..image_io import DEFAULT_MAX_PIXELS
from ..image_pipeline import derain_file
from .console import err_console, fail, interactive, make_progress


def derain(
    paths: List[str] = typer.Argument(..., metavar="INPUT... OUTPUT", help="Image files, directories or globs, then the output file or directory."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Weights file (default: the shipped weights)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 (CUDA) or bf16."),
    ext: Optional[str] = typer.Option(None, "--ext", help="Output format (png, jpg, webp, ...); default: as the input."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip inputs whose output already exists."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse images larger than this (decompression-bomb guard)."),
    tile: str = typer.Option("auto", "--tile", help="Tile side in px: auto (largest that fits in memory), 0 (whole image) or N."),
    tile_overlap: int = typer.Option(DEFAULT_OVERLAP, "--tile-overlap", help="Overlap between tiles in px (feathered, no seams)."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory budget for --tile auto, e.g. 4GB (default: free GPU memory, or a share of RAM on the CPU)."),
) -> None:
    """Remove rain from images. Exit code 0: all ok; 1: some inputs failed; 2: usage error."""
    if len(paths) < 2:
        fail("need at least one INPUT and an OUTPUT")
    *inputs, output = paths
    try:
        jobs = plan_jobs(inputs, output, ext)
        derainer = Derainer(
            weights=weights, device=device, precision=precision, tile=tile, tile_overlap=tile_overlap, max_memory=max_memory
        )
    except JDNetError as err:
        fail(str(err))
    console = err_console()
    counts = {"ok": 0, "failed": 0, "skipped": 0}

    def report(res: Result) -> None:
        counts[res.status] += 1
        if res.status == "failed":
            console.print(f"failed: {res.input}: {res.error}", markup=False)

    def process(src: Path, dest: Path) -> None:
        derain_file(derainer, src, dest, max_pixels=max_pixels, quality=quality)

    t0 = time.perf_counter()
    if interactive():
        with make_progress(console) as progress:
            task = progress.add_task("derain", total=len(jobs), rate="")

            def on_result(res: Result) -> None:
                report(res)
                done = sum(counts.values())
                rate = done / max(time.perf_counter() - t0, 1e-9)
                progress.update(task, advance=1, rate=f"{rate:.2f} img/s")

            run_jobs(jobs, process, skip_existing, on_result)
    else:
        run_jobs(jobs, process, skip_existing, report)
    elapsed = time.perf_counter() - t0
    console.print(
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped in {elapsed:.1f}s on {derainer.device_description}",
        markup=False,
    )
    raise typer.Exit(1 if counts["failed"] else 0)
