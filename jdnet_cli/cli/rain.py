"""``jdnet rain``: write a paired synthetic-rain dataset (OUT/rain + OUT/norain) from clean photos."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from ..data.datasets import write_synthetic_pairs
from ..data.synthetic_rain import RAIN_STYLES
from ..errors import JDNetError
from .console import err_console, fail
from .reporter import one_line


def rain(
    clean_dir: Path = typer.Argument(..., help="Folder of clean photos."),
    out_dir: Path = typer.Argument(..., help="Output folder; gets rain/ and norain/ with equal PNG names."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Same seed, same rain."),
    style: str = typer.Option("light", "--style", help="light (thin streaks, sometimes a veil), fine (fainter, rarely a veil), heavy (several layers of long, wide streaks and a veil), additive (light streaks added, not screened: made as Rain12/Rain100L are) or heavy-additive (heavy streaks added, as heavy-18's are)."),
) -> None:
    """Render synthetic rain over clean photos into a paired dataset that train and benchmark read."""
    if style not in RAIN_STYLES:
        fail(f"--style must be one of {', '.join(RAIN_STYLES)}, not {style!r}")
    console = err_console()
    t0 = time.perf_counter()
    failed: list[Path] = []

    def report(path: Path, reason: str) -> None:
        # A damaged photo is left out, as in 'jdnet derain', instead of ending a half-written dataset with
        # exit 2 ("nothing was processed").
        failed.append(path)
        console.print(one_line(f"failed: {path}: {reason}"), markup=False)

    try:
        n = write_synthetic_pairs(clean_dir, out_dir, seed, RAIN_STYLES[style], on_failure=report)
    except JDNetError as err:
        fail(str(err))
    console.print(f"{n} pairs written to {out_dir}/rain and {out_dir}/norain in {time.perf_counter() - t0:.1f}s"
                  + (f"; {len(failed)} photo(s) failed" if failed else ""), markup=False)
    if failed:
        raise typer.Exit(1)
