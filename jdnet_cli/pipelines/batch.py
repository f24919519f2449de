"""Batch jobs for ``jdnet derain``: expand inputs, map them to outputs, run them, report per file."""
from __future__ import annotations

import glob
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from ..errors import JDNetError
from ..io.images import IMAGE_EXTENSIONS, is_image_path

GLOB_CHARS = set("*?[")
STDIO = Path("-")  # stdin as an input, stdout as an output


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

    def as_event(self) -> dict:
        """The ``--json`` event: input, output, status, ms, error."""
        event = asdict(self)
        event["ms"] = round(self.ms, 1)
        return event


def normalize_ext(ext: str | None) -> str | None:
    """'webp' / '.WEBP' -> '.webp'; None stays None; raise JDNetError for formats we cannot write."""
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
    ext = normalize_ext(ext)
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
    if job.output is None:
        return job
    refuse = job.output.resolve() in inputs
    # A hard link or bind mount reaches the same file under another name.
    if not refuse and job.output.exists():
        try:
            refuse = os.path.samefile(job.output, job.input)
        except OSError:
            pass
    if refuse:
        return Job(job.input, None, f"refusing to overwrite the input file {job.output}")
    return job


def parse_shard(spec: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N; raise JDNetError on anything else."""
    try:
        k_text, n_text = spec.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise JDNetError(f"--shard {spec!r}: expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise JDNetError(f"--shard {spec}: need 0 <= K < N")
    return k, n


def shard(jobs: list[Job], k: int, n: int) -> list[Job]:
    """The k-th (0-based) of n deterministic slices of the jobs sorted by input path."""
    if n < 1 or not 0 <= k < n:
        raise JDNetError(f"--shard {k}/{n}: need 0 <= K < N")
    ordered = sorted(jobs, key=lambda j: str(j.input))
    return ordered[k::n]


def run_one(job: Job, process: Callable[[Path, Path], None], skip_existing: bool = False) -> Result:
    """Run one job; JDNetError/OSError become a failed Result, anything else propagates."""
    t0 = time.perf_counter()
    if job.output is None:
        return Result(str(job.input), None, "failed", 0.0, job.error)
    if skip_existing and job.output != STDIO and job.output.exists():
        return Result(str(job.input), str(job.output), "skipped")
    try:
        process(job.input, job.output)
        return Result(str(job.input), str(job.output), "ok", (time.perf_counter() - t0) * 1000)
    except JDNetError as err:
        return Result(str(job.input), str(job.output), "failed", (time.perf_counter() - t0) * 1000, _strip_name(str(err), job.input))
    except OSError as err:
        return Result(str(job.input), str(job.output), "failed", (time.perf_counter() - t0) * 1000, err.strerror or str(err))


def run_jobs(
    jobs: list[Job],
    process: Callable[[Path, Path], None],
    skip_existing: bool = False,
    on_result: Callable[[Result], None] | None = None,
    stop: threading.Event | None = None,
) -> list[Result]:
    """Run ``process(input, output)`` for each job in order; stop starting new jobs once ``stop`` is set."""
    results = []
    for job in jobs:
        if stop is not None and stop.is_set():
            break
        res = run_one(job, process, skip_existing)
        results.append(res)
        if on_result:
            on_result(res)
    return results


def run_jobs_on_workers(
    jobs: list[Job],
    processes: Sequence[Callable[[Path, Path], None]],
    skip_existing: bool = False,
    on_result: Callable[[Result], None] | None = None,
    stop: threading.Event | None = None,
) -> list[Result]:
    """Run jobs on one thread per ``processes`` entry (e.g. one per GPU), pulling from a shared queue.

    Workers take the next job as they free up, so fast and slow devices stay busy. ``on_result`` is
    called on the calling thread (in completion order), so reporting needs no locking. Once
    ``stop`` is set, workers finish their current file and take no more.
    """
    if len(processes) <= 1:
        return run_jobs(jobs, processes[0], skip_existing, on_result, stop)
    stop = stop or threading.Event()
    todo: queue.Queue[Job] = queue.Queue()
    for job in jobs:
        todo.put(job)
    done: queue.Queue[Result | BaseException] = queue.Queue()

    def worker(process: Callable[[Path, Path], None]) -> None:
        while not stop.is_set():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put(run_one(job, process, skip_existing))
            except BaseException as err:  # an unexpected bug: hand it to the caller, stop the rest
                stop.set()
                done.put(err)
                return

    threads = [threading.Thread(target=worker, args=(p,), daemon=True, name=f"derain-{i}") for i, p in enumerate(processes)]
    for t in threads:
        t.start()
    results: list[Result] = []
    while any(t.is_alive() for t in threads) or not done.empty():
        try:
            item = done.get(timeout=0.05)
        except queue.Empty:
            continue
        if isinstance(item, BaseException):
            raise item
        results.append(item)
        if on_result:
            on_result(item)
    return results


def _strip_name(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message
