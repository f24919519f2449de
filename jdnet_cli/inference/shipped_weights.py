"""Where the shipped default weights live (inside the installed package, or weights/ in a checkout)."""
from __future__ import annotations

from pathlib import Path

from ..errors import JDNetError

DEFAULT_WEIGHTS_NAME = "jdnet.pt"


def default_weights_path() -> Path:
    """Path of the shipped weights; raises JDNetError if this install has none."""
    candidates = []
    try:
        from importlib.resources import files

        candidates.append(Path(str(files("jdnet_cli.weights") / DEFAULT_WEIGHTS_NAME)))
    except (ModuleNotFoundError, TypeError):
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "weights" / DEFAULT_WEIGHTS_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise JDNetError("no shipped weights found in this install; pass --weights PATH")
