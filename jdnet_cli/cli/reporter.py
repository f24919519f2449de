"""One reporter for the batch commands: human lines on stderr, ``--json`` events on stdout."""
from __future__ import annotations

import json
import re
import sys

from ..io.native_stderr import stderr_lock
from ..pipelines.interrupts import exit_for_closed_stdout
from ..pipelines.runner import Result
from .console import err_console


# Characters that would split a message over lines or move the cursor: a file may be named with them.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(message: str) -> str:
    """``message`` with control characters (newlines in a file name, say) written as escapes, as ls -b shows them."""
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                                              else f"\\u{ord(m.group()):04x}"), message)


class Reporter:
    """Counts results, prints failures and (unless ``quiet``) notes and the summary; ``--json`` events on stdout."""

    def __init__(self, json_events: bool, quiet: bool):
        self.console = err_console()
        self.json_events = json_events
        self.quiet = quiet
        self.counts = {"ok": 0, "failed": 0, "skipped": 0}

    @property
    def done(self) -> int:
        """Results reported so far."""
        return sum(self.counts.values())

    def say(self, message: str) -> None:
        """A human message on stderr, on one line (kept even with --quiet: it explains an error or an interrupt)."""
        with stderr_lock:
            self.console.print(one_line(message), markup=False)

    def info(self, message: str) -> None:
        """A human message on stderr, dropped with --quiet."""
        if not self.quiet:
            self.say(message)

    def emit(self, obj: dict) -> None:
        """One JSON object on a line of stdout (with --json)."""
        if not self.json_events:
            return
        try:
            sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # the reader went away, as 'head' does
            exit_for_closed_stdout()
        except OSError as err:  # a full disk under '--json > log.jsonl': the record of the batch is lost
            self.say(f"error: cannot write the --json events to stdout ({err.strerror or err}); stopped")
            exit_for_closed_stdout(status=1)

    def report(self, res: Result, extra: dict | None = None) -> None:
        """Count one result, print its failure line (or its note) and its JSON event."""
        self.counts[res.status] += 1
        if res.status == "failed":
            self.say(f"failed: {res.input}: {res.error}")
        elif res.note:
            self.info(f"note: {res.input}: {'stdout' if res.output == '-' else res.output} {res.note}")
        self.emit({**res.as_event(), **(extra or {})})

    def summary(self, seconds: float, where: str, interrupted: bool) -> None:
        """Final counts: a JSON object on stdout with --json, a line on stderr unless --quiet."""
        self.emit({"summary": {**self.counts, "seconds": round(seconds, 3), "interrupted": interrupted}})
        note = " (interrupted)" if interrupted else ""
        self.info(
            f"{self.counts['ok']} ok, {self.counts['failed']} failed, {self.counts['skipped']} skipped in {seconds:.1f}s on {where}{note}"
        )
