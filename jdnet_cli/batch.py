"""Batch jobs for ``jdnet derain``: expand inputs, map them to outputs, run them, report per file."""
from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import JDNetError
from .image_io import IMAGE_EXTENSIONS, is_image_path

GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Job:
    """One input file and where its result goes (``output`` None when the job is already an error)."""

    input: Path
    output: Path | None
    error: str | None = None


@dataclass
class Result:
    """Outcome of one job: status is 'ok', 'failed' or 'skipped'."""

    input: str
    output: str | None
    status: str
    ms: float = 0.0
    error: str | None = None


def _normalize_ext(ext: str | None) -> str | None:
    if not ext:
        return None
    ext = ext.lower()
    ext = ext if ext.startswith(".") else "." + ext
    if ext not in IMAGE_EXTENSIONS:
        raise JDNetError(f"unsupported --ext {ext!r} (use one of {', '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
    return ext


def _walk(root: Path, exclude: Path | None) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if exclude is not None:
            dirnames[:] = [d for d in dirnames if (here / d).resolve() != exclude]
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            if is_image_path(path) and not name.startswith("."):
                yield path


def plan_jobs(inputs: Iterable[str], output: str, ext: str | None = None) -> list[Job]:
    """Expand files, directories (recursive, mirrored) and globs into jobs; raise on usage errors."""
    inputs = list(inputs)
    if not inputs:
        raise JDNetError("no inputs given")
    ext = _normalize_ext(ext)
    out = Path(output)
    out_resolved = out.resolve()
    single_file = (
        len(inputs) == 1
        and Path(inputs[0]).is_file()
        and not out.is_dir()
        and out.suffix.lower() in IMAGE_EXTENSIONS
    )
    if single_file:
        src = Path(inputs[0])
        dest = out if not ext else out.with_suffix(ext)
        return [_guard(Job(src, dest), {src.resolve()})]

    entries: list[tuple[Path, Path | None, str | None]] = []  # (input, relative output, error)
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            if path.resolve() == out_resolved:
                raise JDNetError(f"{raw}: output directory is the input directory; choose another OUTPUT")
            found = list(_walk(path, out_resolved))
            entries.extend((p, p.relative_to(path), None) for p in found)
        elif path.is_file() or path.is_symlink():
            entries.append((path, Path(path.name), None if is_image_path(path) else "unsupported file type"))
        elif GLOB_CHARS & set(raw):
            matches = sorted(Path(m) for m in glob.glob(raw, recursive=True))
            files = [m for m in matches if m.is_file() and is_image_path(m)]
            if not files:
                entries.append((path, None, "no image files match this pattern"))
            entries.extend((m, Path(m.name), None) for m in files)
        else:
            entries.append((path, None, "no such file or directory"))

    input_set = {e[0].resolve() for e in entries if e[2] is None}
    jobs: list[Job] = []
    seen: dict[Path, Path] = {}
    for src, rel, err in entries:
        if err is not None or rel is None:
            jobs.append(Job(src, None, err or "invalid input"))
            continue
        dest = out / rel
        if ext:
            dest = dest.with_suffix(ext)
        key = dest.resolve()
        if key in seen:
            jobs.append(Job(src, None, f"output {dest} would collide with the output of {seen[key]}"))
            continue
        seen[key] = src
        jobs.append(_guard(Job(src, dest), input_set))
    return jobs


def _guard(job: Job, inputs: set[Path]) -> Job:
    """Turn a job whose output is an input file into a failed job: we never overwrite inputs."""
    if job.output is not None and job.output.resolve() in inputs:
        return Job(job.input, None, f"refusing to overwrite the input file {job.output}")
    return job


def shard(jobs: list[Job], k: int, n: int) -> list[Job]:
    """The k-th (0-based) of n deterministic slices of the jobs sorted by input path."""
    if n < 1 or not 0 <= k < n:
        raise JDNetError(f"--shard {k}/{n}: need 0 <= K < N")
    ordered = sorted(jobs, key=lambda j: str(j.input))
    return ordered[k::n]


def run_jobs(
    jobs: list[Job],
    process: Callable[[Path, Path], None],
    skip_existing: bool = False,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run ``process(input, output)`` for each job; JDNetError/OSError fail that file only."""
    results = []
    for job in jobs:
        t0 = time.perf_counter()
        if job.output is None:
            res = Result(str(job.input), None, "failed", 0.0, job.error)
        elif skip_existing and job.output.exists():
            res = Result(str(job.input), str(job.output), "skipped")
        else:
            try:
                process(job.input, job.output)
                res = Result(str(job.input), str(job.output), "ok", (time.perf_counter() - t0) * 1000)
            except JDNetError as err:
                res = Result(str(job.input), str(job.output), "failed", (time.perf_counter() - t0) * 1000, _strip_name(str(err), job.input))
            except OSError as err:
                res = Result(str(job.input), str(job.output), "failed", (time.perf_counter() - t0) * 1000, err.strerror or str(err))
        results.append(res)
        if on_result:
            on_result(res)
    return results


def _strip_name(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message
