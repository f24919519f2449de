"""``jdnet benchmark quality`` and ``jdnet benchmark speed`` on tiny generated data and tiny models."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from jdnet_cli.benchmarking.metrics import score_pair
from jdnet_cli.inference.derainer import Derainer
from jdnet_cli.io.images import read_rgb

from ..conftest import shared_path, write_png

KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a loaded 2-core machine run far faster on one thread; restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cli(*args: str):
    from typer.testing import CliRunner

    from jdnet_cli.cli.app import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture
def paired(tmp_path):
    """rain/ + norain/ with three 24x20 pairs; rainy = clean + noise so the input score is finite."""
    root = tmp_path / "tinyset"
    rng = np.random.default_rng(5)
    (root / "rain").mkdir(parents=True)
    for i in range(1, 4):
        clean = write_png(root / "norain" / f"norain-{i}.png", 20, 24, seed=i)
        rainy = np.clip(clean.astype(int) + rng.integers(-30, 31, size=clean.shape), 0, 255).astype(np.uint8)
        assert cv2.imwrite(str(root / "rain" / f"rain-{i}.png"), rainy)
    return root


def _expected(weights, paired, i):
    rainy = read_rgb(paired / "rain" / f"rain-{i}.png")
    clean = read_rgb(paired / "norain" / f"norain-{i}.png")
    out = Derainer(weights=weights, device="cpu")(rainy)
    out8 = np.round(out * 255).astype(np.uint8)
    return score_pair(rainy, clean), score_pair(out8.astype(np.float32) / 255, clean), out8


def test_quality_json_csv_and_saved_outputs(tmp_path, paired, tiny_weights):
    csv_path, saved = tmp_path / "scores.csv", tmp_path / "saved"
    res = _cli(
        "benchmark", "quality", str(paired), "--weights", str(tiny_weights), "--device", "cpu",
        "--json", "--csv", str(csv_path), "--save-outputs", str(saved),
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["device"].startswith("CPU")
    assert [m["name"] for m in doc["models"]] == ["tiny"] and doc["models"][0]["units"] == 2
    (ds,) = doc["datasets"]
    assert (ds["name"], ds["path"], ds["pairs"]) == ("tinyset", str(paired), 3)
    assert set(ds["scores"]) == {"input", "tiny"}
    expected = [_expected(tiny_weights, paired, i) for i in (1, 2, 3)]
    for entry, idx in (("input", 0), ("tiny", 1)):
        assert set(ds["scores"][entry]) == set(KEYS)
        for k in KEYS:
            assert ds["scores"][entry][k] == pytest.approx(np.mean([e[idx][k] for e in expected]), abs=1e-9)

    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["image"], r["model"]) for r in rows] == [(f"rain/rain-{i}.png", m) for i in (1, 2, 3) for m in ("input", "tiny")]
    assert all(r["dataset"] == "tinyset" for r in rows)
    assert float(rows[2]["psnr_y"]) == pytest.approx(expected[1][0]["psnr_y"], abs=1e-6)
    assert float(rows[3]["ssim_rgb"]) == pytest.approx(expected[1][1]["ssim_rgb"], abs=1e-6)

    written = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file())
    assert written == [f"tiny/tinyset/rain/rain-{i}.png" for i in (1, 2, 3)]
    for i in (1, 2, 3):
        on_disk = cv2.imread(str(saved / f"tiny/tinyset/rain/rain-{i}.png"))[..., ::-1]
        assert np.array_equal(on_disk, expected[i - 1][2])


def test_quality_table_two_models_and_no_quantize(paired, tiny_weights, tmp_path):
    from jdnet_cli.inference.checkpoint import save_weights

    from ..conftest import make_tiny_model

    other = tmp_path / "other.pt"
    save_weights(make_tiny_model(seed=3), other)
    res = _cli("benchmark", "quality", str(paired), "-w", str(tiny_weights), "-w", str(other), "--device", "cpu", "--crop-border", "2")
    assert res.exit_code == 0, res.output
    for text in ("tinyset", "input (rainy)", "tiny", "other", "PSNR-Y", "SSIM-RGB"):
        assert text in res.stdout
    float_res = _cli("benchmark", "quality", str(paired), "-w", str(tiny_weights), "--device", "cpu", "--no-quantize", "--json")
    q_res = _cli("benchmark", "quality", str(paired), "-w", str(tiny_weights), "--device", "cpu", "--json")
    floats, quant = (json.loads(r.stdout)["datasets"][0]["scores"] for r in (float_res, q_res))
    assert floats["input"] == quant["input"]
    assert floats["tiny"]["psnr_y"] != quant["tiny"]["psnr_y"]
    assert floats["tiny"]["psnr_y"] == pytest.approx(quant["tiny"]["psnr_y"], abs=0.05)


def test_rain12_input_scores_match_basicsr():
    """Acceptance: the rainy Rain12 inputs score 30.1354 dB / 0.85540 SSIM-Y (BasicSR's formulas)."""
    root = shared_path("data", "rain12")
    res = _cli("benchmark", "quality", str(root), "--input-only", "--json")
    assert res.exit_code == 0, res.output
    (ds,) = json.loads(res.stdout)["datasets"]
    assert ds["pairs"] == 12
    assert ds["scores"]["input"]["psnr_y"] == pytest.approx(30.1354, abs=0.001)
    assert ds["scores"]["input"]["ssim_y"] == pytest.approx(0.85540, abs=0.0001)


def test_quality_usage_and_data_errors(tmp_path, paired, tiny_weights):
    res = _cli("benchmark", "quality", str(paired), "--input-only", "--weights", str(tiny_weights))
    assert res.exit_code == 2 and "--input-only" in res.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _cli("benchmark", "quality", str(empty), "--input-only")
    assert res.exit_code == 2 and f"{empty}: unknown dataset layout" in res.stderr
    write_png(paired / "norain" / "norain-2.png", 21, 24, seed=9)  # one clean image now differs in size
    res = _cli("benchmark", "quality", str(paired), "--input-only")
    assert res.exit_code == 1
    assert res.stderr.strip() == (
        f"error: {paired / 'rain' / 'rain-2.png'}: 24x20 does not match its clean twin {paired / 'norain' / 'norain-2.png'} (24x21)"
    )
    res = _cli("benchmark", "quality", str(paired), "--input-only", "--crop-border", "5")
    assert res.exit_code == 1 and "less than 11x11 for SSIM after --crop-border 5" in res.stderr
    res = _cli("benchmark", "quality", str(paired), "--input-only", "--csv", str(tmp_path))  # before any scoring
    assert (res.exit_code, res.stderr) == (2, f"error: {tmp_path}: is a folder; --csv names the file to write\n")


def test_speed_json_schema_in_a_fresh_process():
    """Schema only (timings are for the benchmark, not tests); the CPU default measures in a child process."""
    res = _cli("benchmark", "speed", "--size", "24x16", "--units", "1", "--channels", "8", "--runs", "2", "--warmup", "1",
               "--threads", "1", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["results"]
    assert r["size"] == [24, 16] and r["device"] == "cpu" and r["precision"] == "fp32" and r["batch"] == 1
    assert (r["runs"], r["warmup"], r["threads"]) == (2, 1, 1)
    assert r["model"] == {"channels": 8, "units": 1, "weights": None}
    assert r["isolated"] is True and r["memory_measure"] == "peak RSS of a fresh process"
    assert r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["cpu_time_ms"] > 0
    assert r["frames_per_s"] == pytest.approx(1000 / r["median_ms"])
    assert r["megapixels_per_s"] == pytest.approx(24 * 16 / 1e6 * r["frames_per_s"])
    assert r["peak_memory_mb"] >= r["baseline_memory_mb"] > 0
    assert r["torch"] == torch.__version__


def test_speed_in_process_batches_precisions_and_weights(tiny_weights):
    res = _cli("benchmark", "speed", "--size", "20x12", "--size", "12x20", "--precision", "fp32", "--precision", "bf16",
               "--batch", "2", "--weights", str(tiny_weights), "--runs", "1", "--warmup", "0", "--device", "cpu",
               "--in-process", "--json")
    assert res.exit_code == 0, res.output
    results = json.loads(res.stdout)["results"]
    assert [(r["size"], r["precision"], r["batch"]) for r in results] == [
        ([20, 12], "fp32", 2), ([12, 20], "fp32", 2), ([20, 12], "bf16", 2), ([12, 20], "bf16", 2)
    ]
    assert all(r["model"]["weights"] == str(tiny_weights) and not r["isolated"] for r in results)
    assert all("high-water mark" in r["memory_measure"] for r in results)
    table = _cli("benchmark", "speed", "--size", "20x12", "--units", "1", "--channels", "8", "--runs", "1", "--device", "cpu", "--in-process")
    assert table.exit_code == 0, table.output
    assert "20x12" in table.stdout and "random JDNet (8 ch, 1 units)" in table.stdout


def test_speed_usage_errors():
    for args, message in (
        (["--size", "12by5"], "expected WxH"),
        (["--precision", "fp16", "--device", "cpu"], "fp16 is not supported on the CPU"),
        (["--tile", "64", "--batch", "2"], "--tile needs --batch 1"),
        (["--channels", "5"], "--channels must be even"),  # was a RuntimeError from the first convolution, exit 1
        (["--weights", "missing.pt"], "missing.pt: weights file not found"),  # was exit 1, after the start line
    ):
        res = _cli("benchmark", "speed", "--units", "1", "--channels", "8", "--runs", "1", "--in-process", "--size", "16x16", *args)
        assert res.exit_code == 2, res.output
        assert message in res.stderr, res.stderr


def test_quality_without_weights_names_the_alternatives(monkeypatch, paired):
    from jdnet_cli.cli import benchmark
    from jdnet_cli.errors import JDNetError

    def no_weights():
        raise JDNetError("no shipped weights found in this install; pass --weights PATH")

    monkeypatch.setattr(benchmark, "default_weights_path", no_weights)
    res = _cli("benchmark", "quality", str(paired))
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: no shipped weights in this install; pass --weights PATH, or --input-only to score the rainy inputs alone"


def _gpu_targets():
    import importlib.util

    from ..conftest import REPO

    spec = importlib.util.spec_from_file_location("gpu_targets", REPO / "benchmarks" / "gpu_targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_targets_script_dry_run_on_the_cpu(tmp_path):
    """benchmarks/gpu_targets.py end to end on a tiny model: its straightforward path is the same network."""
    module = _gpu_targets()
    out = tmp_path / "targets.json"
    result = module.main(["--device", "cpu", "--size", "40x32", "--units", "2", "--channels", "8",
                          "--warmup", "0", "--runs", "1", "--baseline-runs", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(result["rows"]) == {"fast fp32", "fast bf16", "straightforward fp32"}
    assert all(row["median_ms"] > 0 for row in result["rows"].values())
    # The baseline must be the same model computed the plain way, not a different network.
    assert result["fast_vs_straightforward_fp32_max_abs"] <= 1e-4
    assert 30.0 < result["psnr_vs_fp32_db"]["bf16"] < float("inf")
    assert len(result["targets"]) == 3


def test_gpu_targets_baseline_runs_the_reference_back_end_on_its_own_copy(monkeypatch):
    """The straightforward path runs no kernel and the unfold attention; the fast model keeps its settings."""
    from jdnet_cli import ops
    from jdnet_cli.models.jdnet import PairwiseSelfAttention

    from ..ops.test_layer import count_kernel_calls

    module = _gpu_targets()
    built, baseline = [], []
    jdnet = module.JDNet
    monkeypatch.setattr(module, "JDNet", lambda *a: built.append(jdnet(*a)) or built[-1])
    calls = count_kernel_calls(monkeypatch)
    forward = module.straightforward_forward

    def watched(model, x):
        before = dict(calls)
        out = forward(model, x)
        baseline.append((model, {k: n - before.get(k, 0) for k, n in calls.items() if n != before.get(k, 0)}))
        return out

    monkeypatch.setattr(module, "straightforward_forward", watched)
    # 32 channels: every fused kernel applies on the fast path, so a leak into the baseline would show.
    result = module.main(["--device", "cpu", "--size", "40x32", "--units", "2", "--channels", "32",
                          "--warmup", "0", "--runs", "1", "--baseline-runs", "1"])
    (fast,) = built
    assert len(baseline) == 2  # one warm-up, one timed run
    for model, during in baseline:
        assert model is not fast and model.enterBlock[0].weight.is_contiguous()
        assert during == {"pairwise_attention_reference": 2}  # one per unit, nothing else
    if ops.prepare_cpu_kernels():
        assert sum(n for name, n in calls.items() if name.endswith("_cpu")) > 0
    assert all(m.op is ops.ATTENTION_OPS["fast"] for m in fast.modules() if isinstance(m, PairwiseSelfAttention))
    weight = fast.enterBlock[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert ops.current_backend() == "auto"
    assert result["fast_vs_straightforward_fp32_max_abs"] <= 1e-4
