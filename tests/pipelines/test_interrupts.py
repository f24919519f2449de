"""The one interrupt handler that derain, video and train share."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jdnet_cli.pipelines.interrupts import GracefulStop


def test_finish_current_stops_after_the_first_signal_and_abandons_on_the_second_ctrl_c():
    said = []
    stop = GracefulStop(said.append)
    with stop.installed():
        assert signal.getsignal(signal.SIGINT) == stop._handle and signal.getsignal(signal.SIGTERM) == stop._handle
        stop._handle(signal.SIGTERM, None)
        assert stop.stop.is_set() and stop.exit_code == 143
        stop._handle(signal.SIGTERM, None)  # a repeated SIGTERM keeps waiting for the file
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)
        assert stop.exit_code == 143  # the first signal decides the exit code
    # Printed by a helper thread, once, and before the block is left (so before any summary line).
    assert said == ["interrupted: finishing the current file, then stopping (Ctrl-C again to abandon it)"]
    # Stopping: further signals are ignored, so that one cannot land in the interpreter's exit handlers as a
    # KeyboardInterrupt traceback (QA: a double Ctrl-C of 'jdnet video' printed one in 3 of 7 runs).
    try:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_no_notice_without_a_signal():
    said = []
    with GracefulStop(said.append).installed():
        pass
    assert said == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not stopping: the handlers come back


SIGNAL_WHILE_HOLDING_THE_STDERR_LOCK = """
import os, signal, sys
from jdnet_cli.pipelines.interrupts import GracefulStop
from jdnet_cli.io.native_stderr import _fd2, stderr_lock

def say(message):
    with stderr_lock:
        print(message, file=sys.stderr)

stop = GracefulStop(say)
with stop.installed():
    with _fd2.cond:  # the main thread inside the fd-2 bookkeeping, as while a decode opens its capture
        os.kill(os.getpid(), signal.SIGINT)
        step = 1
    with stderr_lock:  # the main thread printing a line of its own
        os.kill(os.getpid(), signal.SIGTERM)
        step = 2
print("done", stop.exit_code, file=sys.stderr)
"""


def test_a_signal_that_lands_while_the_main_thread_holds_the_stderr_lock_does_not_deadlock():
    """Regression: the handler used to print, waiting on a lock its own thread held (a CI hang)."""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SIGNAL_WHILE_HOLDING_THE_STDERR_LOCK)],
        cwd=repo, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "interrupted: finishing the current file, then stopping (Ctrl-C again to abandon it)",
        "done 130",
    ]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_without_finish_current_the_first_signal_interrupts(signum, code):
    stop = GracefulStop(lambda _m: pytest.fail("nothing to announce"), finish_current=False)
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signum, None)
    assert stop.stop.is_set() and stop.exit_code == code


def test_inactive_installation_leaves_the_handlers_alone():
    before = signal.getsignal(signal.SIGINT)
    stop = GracefulStop(print, what="step")
    with stop.installed(active=False):
        assert signal.getsignal(signal.SIGINT) is before
