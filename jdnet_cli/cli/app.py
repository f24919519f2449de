"""The ``jdnet`` command: one small module per subcommand over the library API."""
from __future__ import annotations

import typer

from .. import __version__
from ..errors import JDNetError
from ..inference.shipped_weights import SHIPPED_WEIGHTS, file_sha256, shipped_weights_path
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


def version_line() -> str:
    """One line naming this jdnet, its torch and the shipped weights it would load, for job logs."""
    import torch

    weights = []
    for name in SHIPPED_WEIGHTS:
        try:
            weights.append(f"{name} {file_sha256(shipped_weights_path(name))[:12]}")
        except JDNetError:
            weights.append(f"{name} missing")
    return f"jdnet {__version__} (torch {torch.__version__}; weights sha256: {', '.join(weights)})"


def _print_version(value: bool) -> None:
    if value:
        print(version_line())
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version,
        help="Print the version, torch's and the shipped weights' sha256, then exit.",
    ),
) -> None:
    """Remove rain streaks from photos and videos with JDNet."""


app.command("derain")(derain)
app.command("video")(video)
app.add_typer(benchmark_app, name="benchmark")
app.command("train")(train)
app.command("rain")(rain)

