"""Where the shipped weights live (inside the installed package, or weights/ in a checkout), by name."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import JDNetError

SHIPPED_WEIGHTS = {"default": "jdnet.pt", "heavy": "jdnet-heavy.pt"}
"""Names that ``--weights`` accepts instead of a path, and their files in ``weights/``."""


def weights_folders() -> list[Path]:
    """Where shipped weights may be: the installed ``jdnet_cli.weights`` package, then a checkout's weights/."""
    folders = []
    try:
        from importlib.resources import files

        folders.append(Path(str(files("jdnet_cli.weights"))))
    except (ModuleNotFoundError, TypeError):
        pass
    folders.append(Path(__file__).resolve().parents[2] / "weights")
    return folders


def shipped_weights_path(name: str = "default") -> Path:
    """Path of the shipped weights called ``name``; raises JDNetError if this install has none."""
    for folder in weights_folders():
        path = folder / SHIPPED_WEIGHTS[name]
        if path.is_file():
            return path
    what = "shipped weights" if name == "default" else f"shipped '{name}' weights"
    raise JDNetError(f"no {what} found in this install; pass --weights PATH")


def default_weights_path() -> Path:
    """Path of the shipped default weights; raises JDNetError if this install has none."""
    return shipped_weights_path("default")


def resolve_weights(weights: str | Path | None) -> Path:
    """A weights file as given, or the shipped weights of that name ("default", "heavy"); None: the default.

    An existing file always wins, so a file that happens to be called "heavy" is still read as a file.
    """
    if weights is None:
        return default_weights_path()
    path = Path(weights)
    if not path.exists() and str(weights) in SHIPPED_WEIGHTS:
        return shipped_weights_path(str(weights))
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes: the identity of a weights file (lineage, ``jdnet --version``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
