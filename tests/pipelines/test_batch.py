"""``jdnet derain`` as a Unix tool: bad inputs, stdin/stdout, file lists, JSON events, interrupts,
shards and per-device workers. Subprocesses only where real exit codes, stderr or signals matter."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from jdnet_cli.cli import console
from jdnet_cli.cli.app import app
from jdnet_cli.errors import JDNetError
from jdnet_cli.inference.derainer import Derainer
from jdnet_cli.io.atomic import atomic_path, remove_in_flight
from jdnet_cli.io.images import read_image
from jdnet_cli.pipelines.planning import Job, parse_shard, shard_jobs
from jdnet_cli.pipelines.runner import run_jobs_on_workers, run_one

from ..conftest import REPO, onednn_cache_misses, run_cli, write_png


def invoke(*args: str, input: bytes | None = None):
    """Run ``jdnet derain`` in-process (no torch import per call)."""
    return CliRunner().invoke(app, ["derain", *args], input=input)


def _events(stdout: str) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert "summary" in lines[-1]
    return lines[:-1], lines[-1]["summary"]


def _no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(".") or ".part" in p.name]


def _png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b"")


def test_mixed_good_and_bad_folder(tmp_path, tiny_weights):
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(0)
    good = {
        "a.png": ((8, 9, 3), np.uint8),
        "b.jpg": ((8, 8, 3), np.uint8),
        "deep16.png": ((9, 8, 3), np.uint16),
        "rgba.png": ((8, 8, 4), np.uint8),
        "gray.png": ((8, 8), np.uint8),
        "c.webp": ((8, 8, 3), np.uint8),
        "sub/d.tif": ((7, 8, 3), np.uint16),
        "sub/e.bmp": ((5, 6, 3), np.uint8),
    }
    for name, (shape, dtype) in good.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(src / name), rng.integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype))
    png = (src / "a.png").read_bytes()
    jpg = (src / "b.jpg").read_bytes()
    bad = {
        "empty.png": (b"", "empty file"),
        "trunc.png": (png[: len(png) // 2], "truncated PNG file"),
        "trunc.jpg": (jpg[: len(jpg) // 2], "truncated JPEG file"),
        "fake.jpg": (b"<html>not a photo</html>", "not an image (unknown format)"),
        "anim.png": (b"GIF89a" + bytes(40), "unsupported format (GIF)"),
        "bomb.png": (_png_bomb(60000, 60000), "60000x60000 exceeds --max-pixels"),
    }
    for name, (data, _) in bad.items():
        (src / name).write_bytes(data)
    os.mkfifo(src / "pipe.png")  # would block a naive reader forever
    bad["pipe.png"] = (None, "not a regular file")
    if os.geteuid() != 0:  # root reads anything
        (src / "locked.png").write_bytes(png)
        (src / "locked.png").chmod(0)
        bad["locked.png"] = (None, "permission denied")
    missing = tmp_path / "missing.png"
    bad["missing.png"] = (None, "no such file or directory")

    res = run_cli("derain", str(src), str(missing), str(out), "--weights", str(tiny_weights), "--device", "cpu")
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert "Traceback" not in err
    lines = err.splitlines()
    for name, (_, reason) in bad.items():
        named = [ln for ln in lines if ln.startswith("failed: ") and Path(ln.split(": ")[1]).name == name]
        assert len(named) == 1, (name, err)
        assert named[0].startswith("failed: ") and reason in named[0], named[0]
    # Nothing else on stderr: one line per bad file and the summary (no library noise).
    assert len(lines) == len(bad) + 1 and lines[-1].startswith(f"{len(good)} ok, {len(bad)} failed, 0 skipped")
    for name, (shape, dtype) in good.items():
        written = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert written is not None and written.shape == shape and written.dtype == dtype, name
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(good)
    assert res.stdout == b""


def test_json_events_on_stdout_and_quiet_stderr(tmp_path, tiny_weights):
    write_png(tmp_path / "in" / "a.png", 8, 8)
    write_png(tmp_path / "in" / "b.png", 8, 8, seed=1)
    (tmp_path / "in" / "c.jpg").write_bytes(b"nope")
    res = invoke(str(tmp_path / "in"), str(tmp_path / "out"), "--json", "--quiet", "--weights", str(tiny_weights), "--device", "cpu")
    assert res.exit_code == 1
    events, summary = _events(res.stdout)
    assert [set(e) for e in events] == [{"input", "output", "status", "ms", "error"}] * 3
    by_name = {Path(e["input"]).name: e for e in events}
    assert by_name["a.png"]["status"] == "ok" and by_name["a.png"]["error"] is None and by_name["a.png"]["ms"] > 0
    assert by_name["a.png"]["output"] == str(tmp_path / "out" / "a.png")
    assert by_name["c.jpg"]["status"] == "failed" and by_name["c.jpg"]["error"] == "not an image (unknown format)"
    assert {k: summary[k] for k in ("ok", "failed", "skipped", "interrupted")} == {"ok": 2, "failed": 1, "skipped": 0, "interrupted": False}
    # --quiet: only the error line on stderr, no summary.
    assert res.stderr.splitlines() == [f"failed: {tmp_path / 'in' / 'c.jpg'}: not an image (unknown format)"]


def test_stdin_to_stdout_round_trip(tmp_path, tiny_weights):
    arr = write_png(tmp_path / "a.png", 8, 10, seed=4)
    data = (tmp_path / "a.png").read_bytes()
    res = run_cli("derain", "-", "-", "--ext", "jpg", "--weights", str(tiny_weights), "--device", "cpu", input=data)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout[:3] == b"\xff\xd8\xff"
    got = cv2.imdecode(np.frombuffer(res.stdout, np.uint8), cv2.IMREAD_COLOR)
    assert got.shape == arr.shape
    assert res.stderr.decode().startswith("1 ok, 0 failed, 0 skipped")
    # Without --ext the format is sniffed from the bytes (PNG) and the pixels are the library's.
    res = invoke("-", "-", "--weights", str(tiny_weights), "--device", "cpu", input=data)
    assert res.exit_code == 0 and res.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n"
    expected = np.round(Derainer(weights=tiny_weights, device="cpu")(read_image(tmp_path / "a.png").rgb) * 255).astype(np.uint8)
    assert np.array_equal(cv2.imdecode(np.frombuffer(res.stdout_bytes, np.uint8), cv2.IMREAD_COLOR), expected[..., ::-1])
    # File to stdout and stdin to file.
    res = invoke(str(tmp_path / "a.png"), "-", "--ext", "webp", "--weights", str(tiny_weights), "--device", "cpu")
    assert res.exit_code == 0 and res.stdout_bytes[8:12] == b"WEBP"
    res = invoke("-", str(tmp_path / "o.tif"), "--weights", str(tiny_weights), "--device", "cpu", input=data)
    assert res.exit_code == 0 and cv2.imread(str(tmp_path / "o.tif")).shape == arr.shape
    res = invoke("-", "-", "--weights", str(tiny_weights), "--device", "cpu", input=b"garbage")
    assert res.exit_code == 1 and res.stdout_bytes == b"" and "failed: -: not an image" in res.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["A", "B", "-"], "- (stdin/stdout) works with exactly one INPUT"),
        (["-", "-", "--json"], "--json writes events to stdout"),
        (["-", "OUTDIR"], "reading stdin needs an OUTPUT image file name"),
        (["A", "OUT", "--shard", "3/3"], "--shard 3/3: need 0 <= K < N"),
        (["A", "OUT", "--shard", "half"], "expected K/N"),
        (["A", "OUT", "--devices", ","], "give a comma-separated list"),
        (["OUT", "--files-from", "NOLIST"], "--files-from"),
        (["A", "OUT", "--ext", "gif"], "unsupported --ext"),
    ],
)
def test_usage_errors_exit_2(tmp_path, tiny_weights, args, message):
    write_png(tmp_path / "A.png", 5, 5)
    (tmp_path / "OUTDIR").mkdir()
    names = {"A": str(tmp_path / "A.png"), "B": str(tmp_path / "A.png"), "OUT": str(tmp_path / "o"), "OUTDIR": str(tmp_path / "OUTDIR"), "NOLIST": str(tmp_path / "nolist.txt")}
    res = invoke(*[names.get(a, a) for a in args], "--weights", str(tiny_weights), "--device", "cpu")
    assert res.exit_code == 2 and message in res.stderr, res.stderr


def test_files_from_file_and_stdin(tmp_path, tiny_weights):
    for name in ("a.png", "b b.png", "c.png"):
        write_png(tmp_path / "in" / name, 8, 8)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'in' / 'a.png'}\n\n{tmp_path / 'in' / 'b b.png'}\r\n")
    res = invoke(str(tmp_path / "o1"), "--files-from", str(listing), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "o1").iterdir()) == ["a.png", "b b.png"]
    nul_list = b"\0".join(bytes(tmp_path / "in" / n) for n in ("c.png", "a.png")) + b"\0"
    res = invoke(str(tmp_path / "o2"), "--files-from", "-", "--weights", str(tiny_weights), "--device", "cpu", input=nul_list)
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["a.png", "c.png"]


def test_shards_partition_the_sorted_list_and_union_is_the_full_set(tmp_path, tiny_weights):
    names = [f"{i:02d}.png" for i in range(7)]
    for i, name in enumerate(names):
        write_png(tmp_path / "in" / name, 8, 8, seed=i)
    outputs = []
    for k in range(3):
        res = invoke(str(tmp_path / "in"), str(tmp_path / "out"), "--shard", f"{k}/3", "--json", "--weights", str(tiny_weights), "--device", "cpu")
        assert res.exit_code == 0, res.stderr
        events, _ = _events(res.stdout)
        outputs.append([Path(e["output"]).name for e in events])
    assert outputs == [names[0::3], names[1::3], names[2::3]]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    # Deterministic whatever order the inputs were listed in.
    jobs = [Job(Path(n), Path("o") / n) for n in names]
    assert shard_jobs(jobs[::-1], 1, 3) == shard_jobs(jobs, 1, 3) and parse_shard("2/5") == (2, 5)
    with pytest.raises(JDNetError):
        parse_shard("-1/3")


def test_device_workers_split_the_list_and_merge_all_results(tmp_path, tiny_weights):
    names = [f"{i}.png" for i in range(4)]
    for i, name in enumerate(names):
        write_png(tmp_path / "in" / name, 8, 8, seed=i)
    one = invoke(str(tmp_path / "in"), str(tmp_path / "one"), "--weights", str(tiny_weights), "--device", "cpu")
    two = invoke(str(tmp_path / "in"), str(tmp_path / "two"), "--devices", "cpu,cpu", "--json", "--weights", str(tiny_weights))
    assert one.exit_code == 0 and two.exit_code == 0, two.stderr
    events, summary = _events(two.stdout)
    assert sorted(Path(e["input"]).name for e in events) == names and summary["ok"] == 4
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_workers_take_jobs_from_a_shared_queue():
    seen: dict[str, list[str]] = {"w0": [], "w1": []}
    lock = threading.Lock()

    def worker(tag: str):
        def process(src: Path, dest: Path) -> None:
            time.sleep(0.01)
            with lock:
                seen[tag].append(src.name)
            if src.name == "3":
                raise JDNetError("bad")

        return process

    jobs = [Job(Path(str(i)), Path(f"o/{i}")) for i in range(20)]
    calls = []
    results = run_jobs_on_workers(jobs, [worker("w0"), worker("w1")], on_result=lambda r: calls.append(threading.current_thread()))
    assert sorted(seen["w0"] + seen["w1"], key=int) == [str(i) for i in range(20)]  # each job exactly once
    assert seen["w0"] and seen["w1"]  # both workers were used
    assert len(results) == 20 and [r.status for r in results].count("failed") == 1
    assert set(calls) == {threading.current_thread()}  # results are reported on the calling thread
    stop = threading.Event()
    stop.set()
    assert run_jobs_on_workers(jobs, [worker("w0"), worker("w1")], stop=stop) == []


def test_interrupt_leaves_no_partial_files_and_resume_completes(tmp_path, tiny_weights):
    """SIGINT while 01.png (the large one) is in progress: it finishes, nothing else starts, exit 130."""
    count = 10
    for i in range(count):
        side = 192 if i == 1 else 8
        write_png(tmp_path / "in" / f"{i:02d}.png", side, side, seed=i)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jdnet_cli", "derain", str(tmp_path / "in"), str(out), "--weights", str(tiny_weights), "--device", "cpu"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not (out / "00.png").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1].decode()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err.decode()
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    done = sorted(p.name for p in out.iterdir())
    assert done[:2] == ["00.png", "01.png"] and len(done) < count  # the file in progress was finished
    assert _no_temp_files(out)
    for name in done:
        side = 192 if name == "01.png" else 8
        assert cv2.imread(str(out / name)).shape == (side, side, 3)
    res = invoke(str(tmp_path / "in"), str(out), "--skip-existing", "--json", "--weights", str(tiny_weights), "--device", "cpu")
    assert res.exit_code == 0
    _, summary = _events(res.stdout)
    assert (summary["skipped"], summary["ok"]) == (len(done), count - len(done))
    assert len(list(out.iterdir())) == count and _no_temp_files(out)


def test_abandoned_writes_leave_no_temp_files(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "x.png") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    # Temp files of writers that cannot be unwound (worker threads) are removed on abandon.
    ctx = atomic_path(tmp_path / "y.png")
    tmp = ctx.__enter__()
    tmp.write_bytes(b"half")
    assert remove_in_flight() == 1 and list(tmp_path.iterdir()) == []


def test_never_overwrites_an_input_through_a_hard_link(tmp_path, tiny_weights):
    original = write_png(tmp_path / "in" / "a.png", 8, 8)
    (tmp_path / "out").mkdir()
    os.link(tmp_path / "in" / "a.png", tmp_path / "out" / "a.png")
    res = invoke(str(tmp_path / "in" / "a.png"), str(tmp_path / "out"), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.exit_code == 1 and "refusing to overwrite the input file" in res.stderr
    assert np.array_equal(cv2.imread(str(tmp_path / "in" / "a.png")), original)


def test_no_color_is_honoured_on_a_terminal(monkeypatch):
    monkeypatch.setattr(console, "interactive", lambda: True)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert console.err_console().no_color is False
    monkeypatch.setenv("NO_COLOR", "1")
    assert console.err_console().no_color is True


@pytest.mark.parametrize("user_value,evicted", [(None, True), ("1024", False)])
def test_onednn_shape_caches_are_bounded_unless_the_user_sets_them(user_value, evicted):
    """Importing jdnet_cli caps oneDNN's per-shape kernel cache (soak RSS); an exported value wins."""
    # 24 shapes of ~5 primitives each overflow a 64-entry cache: the first shape was evicted.
    assert onednn_cache_misses(user_value) == (True, evicted)


def test_write_failures_name_the_output_not_the_input_or_a_temp_file(tmp_path, tiny_weights):
    write_png(tmp_path / "a.png", 8, 8)
    (tmp_path / "blocker").write_bytes(b"a file where the output wants a folder")
    out = tmp_path / "blocker" / "sub" / "o.png"
    res = invoke(str(tmp_path / "a.png"), str(out), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.exit_code == 1
    assert f"failed: {tmp_path / 'a.png'}: cannot write {out}: " in res.stderr, res.stderr
    assert (tmp_path / "blocker").read_bytes().startswith(b"a file")

    def full_disk(src: Path, dest: Path) -> None:
        raise OSError(28, "No space left on device", str(dest.parent / f".{dest.name}.x1.part.png"))

    def unreadable(src: Path, dest: Path) -> None:
        raise OSError(5, "Input/output error", str(src))

    job = Job(tmp_path / "a.png", tmp_path / "out" / "o.png")
    assert run_one(job, full_disk).error == f"cannot write {job.output}: No space left on device"
    assert run_one(job, unreadable).error == "Input/output error"

    if Path("/dev/full").exists():  # writes to it fail with ENOSPC, as stdout on a full disk would
        with open("/dev/full", "wb") as full:
            proc = subprocess.run([sys.executable, "-m", "jdnet_cli", "derain", str(tmp_path / "a.png"), "-", "--weights",
                                   str(tiny_weights), "--device", "cpu"], stdout=full, stderr=subprocess.PIPE,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 1
        assert f"failed: {tmp_path / 'a.png'}: cannot write - (stdout): No space left on device" in proc.stderr.decode()


def test_a_write_failure_names_the_output_when_it_is_relative_or_the_error_names_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_png(tmp_path / "a.png", 8, 8)
    job = Job(Path("a.png"), Path("out") / "o.png")

    def disk_fills(src: Path, dest: Path) -> None:
        with atomic_path(dest) as tmp:
            with open(tmp, "wb"):
                raise OSError(28, "No space left on device")  # what write() raises: no file named

    def folder_in_the_way(src: Path, dest: Path) -> None:
        with atomic_path(dest) as tmp:
            raise IsADirectoryError(21, "Is a directory", str(tmp))  # mkstemp's names are absolute

    assert run_one(job, disk_fills).error == "cannot write out/o.png: No space left on device"
    assert run_one(job, folder_in_the_way).error == "cannot write out/o.png: Is a directory"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # no temp file left


def test_a_format_that_cannot_hold_alpha_or_depth_gets_a_note_not_silence(tmp_path, tiny_weights):
    write_png(tmp_path / "in" / "rgba.png", 8, 8, channels=4)
    write_png(tmp_path / "in" / "deep.png", 8, 8, dtype=np.uint16)
    write_png(tmp_path / "in" / "plain.png", 8, 8)
    out = tmp_path / "out"
    res = invoke(str(tmp_path / "in"), str(out), "--ext", "jpg", "--json", "--weights", str(tiny_weights), "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    events, summary = _events(res.stdout)
    notes = {Path(e["input"]).name: e.get("note") for e in events}
    assert notes == {
        "deep.png": "drops 16-bit depth (written as 8-bit): jpg cannot hold it; --ext png keeps everything",
        "plain.png": None,
        "rgba.png": "drops the alpha channel: jpg cannot hold it; --ext png keeps everything",
    }
    assert f"note: {tmp_path / 'in' / 'rgba.png'}: {out / 'rgba.jpg'} drops the alpha channel" in res.stderr
    assert summary["ok"] == 3 and sorted(p.name for p in out.iterdir()) == ["deep.jpg", "plain.jpg", "rgba.jpg"]
    # --quiet prints errors only; PNG keeps both, so nothing is noted.
    quiet = invoke(str(tmp_path / "in"), str(tmp_path / "q"), "--ext", "jpg", "-q", "--weights", str(tiny_weights), "--device", "cpu")
    kept = invoke(str(tmp_path / "in"), str(tmp_path / "p"), "--weights", str(tiny_weights), "--device", "cpu")
    assert quiet.exit_code == kept.exit_code == 0 and quiet.stderr == "" and "note:" not in kept.stderr


def test_an_animated_or_multi_page_input_gets_a_note_that_only_its_first_frame_was_derained(tmp_path, tiny_weights):
    from PIL import Image as PILImage

    frames = [PILImage.fromarray(np.full((8, 10, 3), v, np.uint8)) for v in (30, 120)]
    (tmp_path / "in").mkdir()
    frames[0].save(tmp_path / "in" / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    frames[0].save(tmp_path / "in" / "pages.tif", save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    res = invoke(str(tmp_path / "in"), str(out), "--json", "--weights", str(tiny_weights), "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    events, summary = _events(res.stdout)
    assert {Path(e["input"]).name: e["note"] for e in events} == {
        "anim.webp": "holds only the first of the input's 2 frames (jdnet derains still images)",
        "pages.tif": "holds only the first of the input's 2 pages (jdnet derains still images)",
    }
    assert f"note: {tmp_path / 'in' / 'anim.webp'}: {out / 'anim.webp'} holds only the first of the input's 2 frames" in res.stderr
    assert summary["ok"] == 2 and PILImage.open(out / "anim.webp").n_frames == 1


def test_skip_existing_does_not_count_a_folder_at_the_output_path_as_done(tmp_path, tiny_weights):
    write_png(tmp_path / "in" / "a.png", 8, 8)
    (tmp_path / "out" / "a.png").mkdir(parents=True)  # e.g. left by a mistaken mkdir: never a finished output
    res = invoke(str(tmp_path / "in"), str(tmp_path / "out"), "--skip-existing", "--json", "--weights", str(tiny_weights),
                 "--device", "cpu")
    assert res.exit_code == 1
    assert [e["status"] for e in _events(res.stdout)[0]] == ["failed"]


@pytest.mark.parametrize("devices", ["cpu", "cpu,cpu"])
def test_a_closed_json_pipe_stops_the_run_with_141_and_no_half_written_file(tmp_path, tiny_weights, devices):
    for i in range(6):
        write_png(tmp_path / "in" / f"{i}.png", 48, 48, seed=i)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "jdnet_cli", "derain", str(tmp_path / "in"), str(tmp_path / "out"),
                             "--json", "--weights", str(tiny_weights), "--devices", devices],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.readline()  # the first event, then the reader goes away as 'head -1' does
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "terminate called" not in err
    assert _no_temp_files(tmp_path / "out")


def test_a_list_read_from_stdin_cannot_name_stdin(tmp_path, tiny_weights):
    res = invoke("--files-from", "-", str(tmp_path / "o.png"), "--weights", str(tiny_weights), input=b"-\n")
    assert res.exit_code == 2
    assert "--files-from - reads the list from stdin, so the list cannot name - (stdin) as an input" in res.stderr
