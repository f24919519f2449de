"""Capture what C libraries (libjpeg, libpng, libtiff inside OpenCV) print straight to file
descriptor 2, so a damaged file yields one clean line from us instead of stray library text.

fd 2 belongs to the whole process, so worker threads that decode at the same time share one
redirect: the first capture opens it, the last one closes it, and each reads back the bytes written
while it was open. Text seen during an overlap may be another thread's, so ``call_capturing``
re-runs such a call alone to attribute it; clean calls (nearly all) never wait for each other.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


@dataclass
class Capture:
    """What one capture saw: the text written to fd 2 while it was open, and whether another overlapped."""

    text: str = ""
    overlapped: bool = False


class _Fd2:
    """Shared fd 2 redirect (many captures at once) and exclusive access for our own stderr lines."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.active: dict[int, int] = {}  # thread id -> open captures
        self.writers = 0
        self.sink = None
        self.saved: int | None = None
        self.starts = 0

    def _count(self) -> int:
        return sum(self.active.values())

    @contextlib.contextmanager
    def capture(self, exclusive: bool = False) -> Iterator[Capture]:
        """Redirect fd 2 for the block (shared with other threads' captures unless ``exclusive``)."""
        me = threading.get_ident()
        result = Capture()
        with self.cond:
            while self.writers or (exclusive and self._count()):
                self.cond.wait()
            if exclusive:
                self.writers += 1  # keeps new captures out while this one runs alone
            if self._count() == 0:
                try:
                    sys.stderr.flush()
                    saved = os.dup(2)
                except (OSError, ValueError, AttributeError):
                    saved = None  # no usable fd 2 (e.g. closed): nothing to capture
                if saved is not None:
                    self.sink = tempfile.TemporaryFile()
                    self.saved = saved
                    os.dup2(self.sink.fileno(), 2)
            result.overlapped = self._count() > 0
            self.starts += 1
            starts_at_begin = self.starts
            start = os.lseek(self.sink.fileno(), 0, os.SEEK_END) if self.sink else 0
            self.active[me] = self.active.get(me, 0) + 1
        try:
            yield result
        finally:
            with self.cond:
                result.overlapped = result.overlapped or self.starts != starts_at_begin or self._count() > 1
                if self.sink is not None:
                    end = os.lseek(self.sink.fileno(), 0, os.SEEK_END)
                    result.text = os.pread(self.sink.fileno(), min(end - start, 4096), start).decode("utf-8", "replace")
                self.active[me] -= 1
                if not self.active[me]:
                    del self.active[me]
                if self._count() == 0 and self.sink is not None:
                    os.dup2(self.saved, 2)
                    os.close(self.saved)
                    self.sink.close()
                    self.sink, self.saved = None, None
                if exclusive:
                    self.writers -= 1
                self.cond.notify_all()

    def __enter__(self) -> None:
        # A thread printing from inside its own capture (a signal handler on the main thread) must
        # not wait for itself: its line goes to the sink, as it always has.
        with self.cond:
            while self.writers or (self._count() and threading.get_ident() not in self.active):
                self.cond.wait()
            self.writers += 1

    def __exit__(self, *exc) -> None:
        with self.cond:
            self.writers -= 1
            self.cond.notify_all()


_fd2 = _Fd2()

# Taken by our own stderr writers so that their lines are never swallowed by a capture running on
# a worker thread: it waits until no capture is open, and holds new ones off while it prints.
stderr_lock = _fd2


@contextlib.contextmanager
def capture_native_stderr() -> Iterator[list[str]]:
    """Redirect fd 2 for the block, alone; afterwards the yielded list holds the captured text."""
    captured: list[str] = []
    with _fd2.capture(exclusive=True) as cap:
        yield captured
    captured.append(cap.text)


def call_capturing(fn: Callable[[], T]) -> tuple[T, str]:
    """Run ``fn`` with fd 2 captured, concurrently with other threads; return (result, its text)."""
    with _fd2.capture() as cap:
        result = fn()
    if cap.text and cap.overlapped:
        # The text may belong to a call on another thread: repeat this one alone to know.
        with _fd2.capture(exclusive=True) as cap:
            result = fn()
    return result, cap.text
