"""The ``jdnet`` command: one small module per subcommand over the library API."""
from __future__ import annotations

import sys

import typer

from .benchmark import benchmark_app
from .derain import derain
from .rain import rain
from .train import train
from .video import video

app = typer.Typer(
    name="jdnet",
    help="Remove rain streaks from photos and videos with JDNet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Remove rain streaks from photos and videos with JDNet."""


app.command("derain")(derain)
app.command("video")(video)
app.add_typer(benchmark_app, name="benchmark")
app.command("train")(train)
app.command("rain")(rain)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
