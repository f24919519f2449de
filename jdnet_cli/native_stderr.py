"""Capture what C libraries (libjpeg, libpng, libtiff inside OpenCV) print straight to file
descriptor 2, so a damaged file yields one clean line from us instead of stray library text."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from typing import Iterator

# Held while fd 2 is redirected; our own stderr writers take it too so their lines are never
# swallowed by a capture running on a worker thread.
stderr_lock = threading.RLock()


@contextlib.contextmanager
def capture_native_stderr() -> Iterator[list[str]]:
    """Redirect fd 2 for the block; afterwards the yielded list holds the captured text."""
    captured: list[str] = []
    with stderr_lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            yield captured  # no usable fd 2 (e.g. closed): nothing to capture
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                captured.append(sink.read(4096).decode("utf-8", "replace"))
