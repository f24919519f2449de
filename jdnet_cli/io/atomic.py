"""Atomic file writes: a temp file in the destination directory, then an atomic rename."""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask() can only be read by setting it, which races with worker threads.
_UMASK = _current_umask()



def new_file_mode() -> int:
    """The permission bits a plain open() would give a new file (0o666 less the umask)."""
    return 0o666 & ~_UMASK


# Temp files being written right now, so an abandoned run (second Ctrl-C while worker threads are
# mid-file) can delete them before exiting; the context manager cleans up its own otherwise.
_in_flight: set[Path] = set()
_in_flight_lock = threading.Lock()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; on success rename it over ``dest``, else delete it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Same directory so the rename never crosses a filesystem; the real suffix so encoders that
    # pick a format from the name still work.
    suffix = ".part" + (suffix or dest.suffix)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(dest, suffix), suffix=suffix, dir=dest.parent)
    # mkstemp makes 0600 files; give the output the permissions a plain open() would (umask).
    os.fchmod(fd, new_file_mode())
    tmp_path = Path(tmp)
    with _in_flight_lock:
        _in_flight.add(tmp_path)
    try:
        os.close(fd)
        try:
            yield tmp_path
            os.replace(tmp_path, dest)
        except OSError as err:
            if err.filename is None or Path(err.filename) == tmp_path:
                # Writing the temp file or renaming it failed (a disk full, quota or I/O error names no
                # file at all): the user knows the file by the name it was to have.
                raise OSError(err.errno, err.strerror or str(err), str(dest)) from err
            raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    finally:
        with _in_flight_lock:
            _in_flight.discard(tmp_path)


# Random part mkstemp adds between prefix and suffix.
_RANDOM_CHARS = 8


def _temp_prefix(dest: Path, suffix: str) -> str:
    """'.NAME.' for the temp file, NAME shortened so the whole name fits the folder's limit (255 bytes)."""
    try:
        limit = os.pathconf(dest.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    room = limit - len(os.fsencode(suffix)) - _RANDOM_CHARS - 2  # the leading and trailing dots
    full = os.fsencode(dest.name)
    name = full[: max(room, 1)]
    if _decodes(full):
        while name and not _decodes(name):  # do not leave half a UTF-8 character behind
            name = name[:-1]
    return "." + os.fsdecode(name) + "."


def _decodes(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def remove_in_flight() -> int:
    """Delete every temp file still being written (for abandoning a run); returns how many."""
    with _in_flight_lock:
        paths = list(_in_flight)
        _in_flight.clear()
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
    return len(paths)


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
