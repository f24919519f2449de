"""fd 2 capture: worker threads decode at the same time, and each error is still its own."""
from __future__ import annotations

import os
import threading

from jdnet_cli.io.native_stderr import call_capturing, capture_native_stderr, stderr_lock


def test_captures_on_two_threads_run_at_the_same_time():
    inside = threading.Barrier(2, timeout=10)

    def both_inside() -> str:
        inside.wait()  # with one global lock the second thread never gets in: BrokenBarrierError
        return "ok"

    results = []
    threads = [threading.Thread(target=lambda: results.append(call_capturing(both_inside))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [("ok", ""), ("ok", "")]


def test_text_written_during_an_overlap_goes_to_its_own_call():
    noisy_started, quiet_done = threading.Event(), threading.Event()
    calls = {"quiet": 0}

    def noisy() -> str:
        os.write(2, b"Corrupt JPEG data: 12 extraneous bytes\n")
        noisy_started.set()
        quiet_done.wait(10)
        return "noisy"

    def quiet() -> str:
        calls["quiet"] += 1
        noisy_started.wait(10)
        return "quiet"

    out = {}
    a = threading.Thread(target=lambda: out.setdefault("noisy", call_capturing(noisy)))
    a.start()
    noisy_started.wait(10)
    b = threading.Thread(target=lambda: out.setdefault("quiet", call_capturing(quiet)))
    b.start()
    b.join(5)  # the quiet call saw no text of its own, so it finishes while the noisy one runs
    quiet_done.set()
    a.join(10)
    assert out["quiet"] == ("quiet", "") and calls["quiet"] == 1
    # The noisy call overlapped another, so it ran again alone to own its text.
    assert out["noisy"][0] == "noisy" and "Corrupt JPEG data" in out["noisy"][1]


def test_our_own_lines_wait_for_open_captures_and_fd2_is_restored(capfd):
    with capture_native_stderr() as captured:
        os.write(2, b"library noise\n")
    assert captured == ["library noise\n"]
    with stderr_lock:
        os.write(2, b"our line\n")
    assert capfd.readouterr().err == "our line\n"
