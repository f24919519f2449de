"""Running planned jobs: one at a time or on one worker thread per device, a Result per job."""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import JDNetError
from .planning import STDIO, Job


@dataclass
class Result:
    """Outcome of one job: status is 'ok', 'failed' or 'skipped'."""

    input: str
    output: str | None
    status: str
    ms: float = 0.0
    error: str | None = None
    note: str | None = None  # what an ok output could not keep, e.g. "drops the alpha channel: ..."

    def as_event(self) -> dict:
        """The ``--json`` event: input, output, status, ms, error (and note, when there is one)."""
        event = asdict(self)
        event["ms"] = round(self.ms, 1)
        if event["note"] is None:
            del event["note"]
        return event


def run_one(job: Job, process: Callable[[Path, Path], str | None], skip_existing: bool = False) -> Result:
    """Run one job; ``process`` may return a note; JDNetError/OSError become a failed Result, anything else propagates."""
    t0 = time.perf_counter()
    if job.output is None:
        return Result(str(job.input), None, "failed", 0.0, job.error)
    # A folder where the output should be is not a finished output: the job fails on it, as without the flag.
    if skip_existing and job.output != STDIO and job.output.is_file():
        return Result(str(job.input), str(job.output), "skipped")
    try:
        note = process(job.input, job.output)
        return Result(str(job.input), str(job.output), "ok", (time.perf_counter() - t0) * 1000, note=note)
    except JDNetError as err:
        return Result(str(job.input), str(job.output), "failed", (time.perf_counter() - t0) * 1000, _strip_name(str(err), job.input))
    except OSError as err:
        return Result(str(job.input), str(job.output), "failed", (time.perf_counter() - t0) * 1000, _os_error_text(err, job))


def run_jobs(
    jobs: list[Job],
    process: Callable[[Path, Path], str | None],
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
    processes: Sequence[Callable[[Path, Path], str | None]],
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

    def worker(process: Callable[[Path, Path], str | None]) -> None:
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


def _os_error_text(err: OSError, job: Job) -> str:
    """The reason for a failed job, naming the path it concerns when that is not the input itself."""
    reason = err.strerror or str(err)
    if err.filename is None or Path(err.filename) == job.input:
        return reason
    # The output is written through a temp file beside it, after making its folders: name the output
    # the user asked for, not the temp file or a folder, and say that writing (not reading) failed.
    # mkstemp names the temp file absolutely while the output may be relative: compare absolute paths.
    name = Path(os.path.abspath(err.filename))
    output = Path(os.path.abspath(job.output)) if job.output is not None and job.output != STDIO else None
    if output is not None and (name.parent == output.parent or name in output.parents):
        return f"cannot write {job.output}: {reason}"
    return f"{err.filename}: {reason}"


def _strip_name(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message
