"""One interrupt handler for every command: Ctrl-C (SIGINT) and a scheduler's SIGTERM.

With ``finish_current`` (derain, train) the first signal lets the file or step in progress finish
and starts no more; a second Ctrl-C abandons it. Without it (video, where the work in progress is
a whole video) the first signal stops at once, and the pipeline keeps a valid partial file.
Either way the exit code is 130 for SIGINT and 143 for SIGTERM.

The handler itself never prints: it runs on the main thread between any two bytecodes, possibly
while that thread holds the (non-reentrant) lock our stderr lines and fd-2 captures share, and
waiting for it there would wait forever. A helper thread prints the notice instead.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator, NoReturn

from ..io.atomic import remove_in_flight

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class GracefulStop:
    """``stop`` is set on the first signal; ``exit_code`` is 130 (SIGINT) or 143 (SIGTERM), else None."""

    def __init__(self, announce: Callable[[str], None], finish_current: bool = True, what: str = "file"):
        self.stop = threading.Event()
        self.exit_code: int | None = None
        self.finish_current = finish_current
        self._announce = announce
        self._what = what
        self._notice_due = False
        self._wake_notice = threading.Event()

    def _handle(self, signum: int, _frame) -> None:
        first = not self.stop.is_set()
        self.stop.set()
        self.exit_code = self.exit_code or EXIT_CODES.get(signum, 130)
        if not self.finish_current or (not first and signum == signal.SIGINT):
            raise KeyboardInterrupt
        if first:
            self._notice_due = True
            self._wake_notice.set()

    @contextlib.contextmanager
    def installed(self, active: bool = True) -> Iterator["GracefulStop"]:
        """Install the handlers for the duration of the block (main thread only, and only if ``active``)."""
        if not active or threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._wake_notice.clear()
        notice = threading.Thread(target=self._print_notice, daemon=True, name="jdnet-interrupt-notice")
        notice.start()
        previous = {sig: signal.signal(sig, self._handle) for sig in EXIT_CODES}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                # Once stopping, the command only reports and exits: another Ctrl-C then would land in the
                # interpreter's exit handlers (torch's, multiprocessing's) as a KeyboardInterrupt traceback.
                signal.signal(sig, signal.SIG_IGN if self.stop.is_set() else handler)
            self._wake_notice.set()
            # The notice must come before the caller's summary line.
            notice.join(timeout=10)

    def _print_notice(self) -> None:
        self._wake_notice.wait()
        if self._notice_due:
            self._announce(f"interrupted: finishing the current {self._what}, then stopping (Ctrl-C again to abandon it)")


def exit_for_closed_stdout(status: int = 141) -> NoReturn:
    """Stop at once, as SIGPIPE stops a C tool, when the reader of stdout went away (``jdnet ... --json | head``).

    Exit 141 (or ``status``: 1 for stdout on a full disk) without a word on the stdout that is gone, and
    without a half-written file; ``os._exit`` because worker threads may be mid-inference and cannot be joined.
    """
    remove_in_flight()
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.stderr.flush()
    os._exit(status)
