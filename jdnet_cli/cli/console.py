"""Terminal vs pipe output: rich progress on a TTY, plain uncoloured lines on stderr otherwise."""
from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def interactive() -> bool:
    """True when stderr is a terminal (progress bars and colour make sense)."""
    return sys.stderr.isatty()


def err_console() -> Console:
    """Console on stderr; no colour when not a TTY or when NO_COLOR is set."""
    no_color = bool(os.environ.get("NO_COLOR")) or not interactive()
    return Console(stderr=True, no_color=no_color, highlight=False, soft_wrap=True)


def make_progress(console: Console, unit: str = "files") -> Progress:
    """A progress bar with count, rate and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit with ``code``."""
    err_console().print(f"error: {message}", markup=False)
    raise SystemExit(code)
