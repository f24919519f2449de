"""Graceful stop for batch commands: the first Ctrl-C (or SIGTERM from a scheduler) lets the file in
progress finish and starts no more; a second Ctrl-C abandons the current file."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class GracefulStop:
    """``stop`` is set on the first signal; ``exit_code`` is 130 (SIGINT) or 143 (SIGTERM), else None."""

    def __init__(self, announce: Callable[[str], None]):
        self.stop = threading.Event()
        self.exit_code: int | None = None
        self._announce = announce

    def _handle(self, signum: int, _frame) -> None:
        if self.stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop.set()
        self.exit_code = self.exit_code or EXIT_CODES.get(signum, 130)
        self._announce("interrupted: finishing the current file, then stopping (Ctrl-C again to abandon it)")

    @contextlib.contextmanager
    def installed(self) -> Iterator["GracefulStop"]:
        """Install the handlers for the duration of the block (main thread only; a no-op elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in EXIT_CODES}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
