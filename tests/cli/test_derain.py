"""``jdnet derain`` end to end on small generated images with a tiny model."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from jdnet_cli.inference.derainer import Derainer
from jdnet_cli.io.images import read_image

from ..conftest import REPO, make_tiny_model, run_cli, write_png


def _expected(weights, path):
    """What the library gives for one file, quantised to 8 bits like the saved PNG."""
    d = Derainer(weights=weights, device="cpu")
    out = d(read_image(path).rgb)
    return np.round(out * 255).astype(np.uint8)[..., ::-1]


def test_directory_tree_is_mirrored_and_outputs_match_library(tmp_path, tiny_weights):
    src = tmp_path / "in"
    write_png(src / "a.png", 17, 23, seed=1)
    write_png(src / "sub" / "deeper" / "b.png", 32, 9, seed=2)
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    res = run_cli("derain", str(src), str(out), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 0, res.stderr.decode()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["a.png", "sub/deeper/b.png"]
    for rel in ("a.png", "sub/deeper/b.png"):
        written = cv2.imread(str(out / rel))
        assert written.shape == cv2.imread(str(src / rel)).shape
        assert np.array_equal(written, _expected(tiny_weights, src / rel))
    err = res.stderr.decode()
    assert "2 ok, 0 failed, 0 skipped" in err
    assert "\x1b[" not in err  # no colour or bar when not on a terminal
    assert res.stdout == b""


@pytest.mark.parametrize("ext", [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"])
def test_formats_round_trip_and_follow_input(tmp_path, tiny_weights, ext):
    src = tmp_path / f"img{ext}"
    arr = np.random.default_rng(0).integers(0, 256, size=(15, 21, 3), dtype=np.uint8)
    assert cv2.imwrite(str(src), arr)
    res = run_cli("derain", str(src), str(tmp_path / "out"), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 0, res.stderr.decode()
    written = cv2.imread(str(tmp_path / "out" / f"img{ext}"))
    assert written is not None and written.shape == (15, 21, 3)


def test_colour_order_is_rgb(tmp_path):
    """A model that removes only the red channel must change the R plane of the file (BGR on disk)."""
    from jdnet_cli.inference.checkpoint import save_weights

    model = make_tiny_model()
    with torch.no_grad():
        model.exitBlock[0].weight.zero_()
        model.exitBlock[0].bias.copy_(torch.tensor([0.5, 0.0, 0.0]))  # rain layer = 0.5 on R only
    save_weights(model, tmp_path / "red.pt")
    src = tmp_path / "grey.png"
    cv2.imwrite(str(src), np.full((12, 12, 3), 200, np.uint8))
    res = run_cli("derain", str(src), str(tmp_path / "o.png"), "--weights", str(tmp_path / "red.pt"), "--device", "cpu")
    assert res.returncode == 0, res.stderr.decode()
    b, g, r = cv2.split(cv2.imread(str(tmp_path / "o.png")))
    assert (b == 200).all() and (g == 200).all() and (r == 72).all()


def test_single_file_to_file_and_ext_option(tmp_path, tiny_weights):
    src = tmp_path / "x.png"
    write_png(src, 11, 13)
    res = run_cli("derain", str(src), str(tmp_path / "y.jpg"), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 0 and cv2.imread(str(tmp_path / "y.jpg")).shape == (11, 13, 3)
    res = run_cli("derain", str(src), str(tmp_path / "d"), "--ext", "webp", "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 0 and (tmp_path / "d" / "x.webp").is_file()


def test_globs(tmp_path, tiny_weights):
    for i in range(3):
        write_png(tmp_path / f"g{i}.png", 10, 10, seed=i)
    write_png(tmp_path / "other.bmp", 10, 10)
    res = run_cli("derain", str(tmp_path / "g*.png"), str(tmp_path / "out"), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["g0.png", "g1.png", "g2.png"]


def test_a_directory_without_images_fails_like_an_empty_glob(tmp_path, tiny_weights):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    res = run_cli("derain", str(tmp_path / "empty"), str(tmp_path / "out"), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 1
    err = res.stderr.decode()
    assert f"failed: {tmp_path / 'empty'}: no image files in this directory (looked for png, jpg," in err
    assert "0 ok, 1 failed, 0 skipped" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_odd_and_tiny_sizes(tmp_path, tiny_weights):
    for h, w in [(1, 1), (3, 5), (7, 4), (33, 65), (64, 1)]:
        write_png(tmp_path / "in" / f"{h}x{w}.png", h, w, seed=h * w)
    res = run_cli("derain", str(tmp_path / "in"), str(tmp_path / "out"), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 0, res.stderr.decode()
    for h, w in [(1, 1), (3, 5), (7, 4), (33, 65), (64, 1)]:
        assert cv2.imread(str(tmp_path / "out" / f"{h}x{w}.png")).shape == (h, w, 3)


def test_bad_inputs_fail_one_line_each_and_batch_continues(tmp_path, tiny_weights):
    src = tmp_path / "in"
    write_png(src / "good.png", 9, 9)
    (src / "empty.png").write_bytes(b"")
    (src / "fake.jpg").write_text("this is not a jpeg")
    res = run_cli("derain", str(src), str(tmp_path / "missing.png"), str(tmp_path / "out"), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 1
    err = res.stderr.decode()
    assert "Traceback" not in err
    for name in ("empty.png", "fake.jpg", "missing.png"):
        lines = [ln for ln in err.splitlines() if name in ln]
        assert len(lines) == 1 and lines[0].startswith("failed: ")
    assert (tmp_path / "out" / "good.png").is_file()
    assert not (tmp_path / "out" / "empty.png").exists()
    assert "1 ok, 3 failed, 0 skipped" in err


def test_usage_errors_exit_2(tmp_path, tiny_weights):
    write_png(tmp_path / "a.png", 9, 9)
    assert run_cli("derain", str(tmp_path / "a.png")).returncode == 2
    res = run_cli("derain", str(tmp_path / "a.png"), str(tmp_path / "o"), "--weights", str(tmp_path / "none.pt"))
    assert res.returncode == 2 and b"none.pt: weights file not found" in res.stderr and b"Traceback" not in res.stderr
    res = run_cli("derain", str(tmp_path / "a.png"), str(tmp_path / "o"), "--weights", str(tiny_weights), "--device", "cpu", "--precision", "fp16")
    assert res.returncode == 2 and b"fp16 is not supported on the CPU" in res.stderr
    res = run_cli("derain", str(tmp_path / "a.png"), str(tmp_path / "o"), "--weights", str(tiny_weights), "--device", "cuda:7")
    if not torch.cuda.is_available():
        assert res.returncode == 2 and b"CUDA is not available" in res.stderr
    res = run_cli("derain", str(tmp_path), str(tmp_path), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 2 and b"output directory is the input directory" in res.stderr
    # A limit no image can pass would fail every file one by one: it is a usage error instead.
    res = run_cli("derain", str(tmp_path / "a.png"), str(tmp_path / "o"), "--weights", str(tiny_weights), "--max-pixels", "0")
    assert res.returncode == 2 and b"--max-pixels" in res.stderr and not (tmp_path / "o").exists()
    (tmp_path / "taken").write_bytes(b"keep")
    res = run_cli("derain", str(tmp_path / "a.png"), str(tmp_path / "a.png"), str(tmp_path / "taken"), "--weights", str(tiny_weights))
    assert res.returncode == 2 and res.stderr.decode().splitlines() == [
        f"error: {tmp_path / 'taken'}: exists and is not a folder; OUTPUT here must be a folder to put the outputs in"]
    assert (tmp_path / "taken").read_bytes() == b"keep"


def test_never_overwrites_an_input(tmp_path, tiny_weights):
    src = tmp_path / "a.png"
    original = write_png(src, 9, 9)
    res = run_cli("derain", str(src), str(src), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 1 and b"refusing to overwrite the input" in res.stderr
    assert np.array_equal(cv2.imread(str(src)), original)


def test_skip_existing(tmp_path, tiny_weights):
    write_png(tmp_path / "in" / "a.png", 9, 9)
    write_png(tmp_path / "in" / "b.png", 9, 9, seed=3)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"keep me")
    res = run_cli("derain", str(tmp_path / "in"), str(tmp_path / "out"), "--skip-existing", "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 0 and b"1 ok, 0 failed, 1 skipped" in res.stderr
    assert (tmp_path / "out" / "a.png").read_bytes() == b"keep me"


def test_bf16_on_cpu_runs(tmp_path, tiny_weights):
    write_png(tmp_path / "a.png", 16, 16)
    res = run_cli("derain", str(tmp_path / "a.png"), str(tmp_path / "o.png"), "--precision", "bf16", "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 0, res.stderr.decode()
    assert cv2.imread(str(tmp_path / "o.png")).shape == (16, 16, 3)


def test_missing_shared_data_fails_when_ci_requires_it(tmp_path):
    """With JDNET_REQUIRE_SHARED=1 (set by .ci/run) a test needing ../shared fails instead of skipping."""
    import subprocess
    import sys

    test = tmp_path / "test_needs_shared.py"
    test.write_text("from tests.conftest import shared_path\n\ndef test_it():\n    shared_path('no-such-folder')\n")
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(test)]
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    skipped = subprocess.run(base, capture_output=True, env={**env, "JDNET_REQUIRE_SHARED": "0"}, cwd=REPO)
    failed = subprocess.run(base, capture_output=True, env={**env, "JDNET_REQUIRE_SHARED": "1"}, cwd=REPO)
    assert skipped.returncode == 0 and b"1 skipped" in skipped.stdout
    assert failed.returncode == 1 and b"JDNET_REQUIRE_SHARED=1" in failed.stdout


def test_ctrl_c_while_torch_is_still_being_imported_is_a_quiet_exit_130(tmp_path):
    # The console script's own entry point (pyproject.toml), interrupted where a Ctrl-C in the first
    # second lands: inside 'import torch', before any subcommand runs.
    import re
    import subprocess
    import sys

    module, function = re.search(r'^jdnet = "([\w.]+):(\w+)"$', (REPO / "pyproject.toml").read_text(), re.M).groups()
    script = f"""
import builtins, sys
real_import = builtins.__import__
def interrupted_import(name, *args, **kwargs):
    if name == "torch":
        raise KeyboardInterrupt
    return real_import(name, *args, **kwargs)
builtins.__import__ = interrupted_import
sys.argv = ["jdnet", "derain", "in.png", "out/"]
from {module} import {function}
{function}()
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert (proc.returncode, proc.stderr, proc.stdout) == (130, "interrupted\n", "")


def test_a_file_name_with_a_newline_is_still_one_failure_line(tmp_path, tiny_weights):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad\nname.png").write_bytes(b"not an image")
    res = run_cli("derain", str(tmp_path / "in"), str(tmp_path / "out"), "--weights", str(tiny_weights), "--device",
                  "cpu", "--quiet")
    assert res.returncode == 1
    assert res.stderr.decode() == f"failed: {tmp_path / 'in'}/bad\\nname.png: not an image (unknown format)\n"


def test_closed_stdin_or_stdout_and_a_full_disk_under_json_are_one_line_errors(tmp_path, tiny_weights):
    import os
    import subprocess
    import sys

    photo = tmp_path / "a.png"
    write_png(photo, 8, 8)
    base = [sys.executable, "-m", "jdnet_cli", "derain", "--weights", str(tiny_weights), "--device", "cpu"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}

    def run(args, **streams):
        return subprocess.run(base + args, capture_output=False, env=env, timeout=300, stderr=subprocess.PIPE, **streams)

    closed_stdin = run(["-", str(tmp_path / "c.png")], stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0))
    assert closed_stdin.returncode == 2 and closed_stdin.stderr.decode().strip() == "error: - reads stdin, which is closed"
    closed_stdout = run([str(photo), "-"], preexec_fn=lambda: os.close(1))
    assert closed_stdout.returncode == 2
    assert closed_stdout.stderr.decode().strip() == "error: OUTPUT - writes to stdout, which is closed"
    with open("/dev/full", "wb") as full:
        res = run([str(photo), str(tmp_path / "out"), "--json"], stdout=full)
    assert res.returncode == 1 and "Traceback" not in res.stderr.decode()
    assert ("error: cannot write the --json events to stdout (No space left on device); stopped"
            in res.stderr.decode().splitlines())
