"""The one interrupt handler that derain, video and train share."""
from __future__ import annotations

import signal

import pytest

from jdnet_cli.cli.interrupts import GracefulStop


def test_finish_current_stops_after_the_first_signal_and_abandons_on_the_second_ctrl_c():
    said = []
    stop = GracefulStop(said.append)
    with stop.installed():
        assert signal.getsignal(signal.SIGINT) == stop._handle and signal.getsignal(signal.SIGTERM) == stop._handle
        stop._handle(signal.SIGTERM, None)
        assert stop.stop.is_set() and stop.exit_code == 143
        assert said == ["interrupted: finishing the current file, then stopping (Ctrl-C again to abandon it)"]
        stop._handle(signal.SIGTERM, None)  # a repeated SIGTERM keeps waiting for the file
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)
        assert stop.exit_code == 143  # the first signal decides the exit code
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


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
