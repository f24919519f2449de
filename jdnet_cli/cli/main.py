"""The console script's entry point, kept apart from ``app`` so that a Ctrl-C while torch and the
subcommands are still being imported ends like any other: 'interrupted' and exit status 130, no traceback."""
from __future__ import annotations

import signal
import sys


def main() -> None:
    """Console-script entry point."""
    try:
        from .app import app

        app()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the exit handlers
        print("interrupted", file=sys.stderr)
        sys.exit(130)
