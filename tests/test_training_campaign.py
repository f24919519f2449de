"""The weights campaign: warm starts with lineage, weighted data sources, warm-up/cosine, best-of validation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from jdnet_cli.data.datasets import MixedPatches, split_weight
from jdnet_cli.errors import JDNetError
from jdnet_cli.inference.checkpoint import load_model, save_weights
from jdnet_cli.models import JDNet
from jdnet_cli.training import TrainConfig, Trainer, file_sha256, lr_factor

from .conftest import write_png
from .test_training import CLI_TINY, _cli

TINY = dict(batch_size=2, patch_size=16, channels=4, num_units=1, threads=1, device="cpu", log_every=1, save_every=100)


@pytest.fixture(scope="module")
def other_pairs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("other")
    for i in range(2):
        write_png(root / "norain" / f"p{i}.png", 20, 20, seed=30 + i)
        write_png(root / "rain" / f"p{i}.png", 20, 20, seed=40 + i)
    return root


@pytest.fixture()
def tiny_weights(tmp_path) -> Path:
    torch.manual_seed(5)
    path = tmp_path / "init.pt"
    save_weights(JDNet(4, 1), path, {"steps_done": 7, "train_seconds": 12.5, "training": {"clean": "photos", "batch_size": 2,
                 "patch_size": 16, "loss": "ssim", "lr": 1e-3, "steps": 7, "seed": 1}})
    return path


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


# -- warm start and lineage ----------------------------------------------------------------------
def test_init_loads_the_weights_with_a_fresh_optimiser(tmp_path, paired, tiny_weights):
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path / "run"), data=str(paired), init=str(tiny_weights), steps=2, **TINY))
    reference, _ = load_model(tiny_weights)
    for (name, a), (_, b) in zip(trainer.model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert trainer.step == 0 and trainer.opt.state_dict()["state"] == {}
    assert trainer.init_sha256 == file_sha256(tiny_weights)


def test_lineage_accumulates_over_stages(tmp_path, paired, tiny_weights):
    first = Trainer(TrainConfig(out_dir=str(tmp_path / "a"), data=str(paired), init=str(tiny_weights), steps=2, **TINY))
    first.run()
    a = first.export()
    _, meta = load_model(a)
    prior, stage = meta["lineage"]
    assert prior["steps"] == 7 and prior["seconds"] == 12.5 and prior["sha256"] == file_sha256(tiny_weights)
    assert "synthetic rain on photos" in prior["data"] and "batch 2, patch 16" in prior["recipe"]
    assert stage["init_sha256"] == file_sha256(tiny_weights) and stage["steps"] == 2
    assert stage["data"] == f"pairs {paired} (weight 1)"
    assert meta["total_steps"] == 9
    assert meta["total_seconds"] == pytest.approx(12.5 + stage["seconds"], abs=0.11)

    second = Trainer(TrainConfig(out_dir=str(tmp_path / "b"), data=str(paired), init=str(a), steps=3, schedule="cosine",
                                 warmup=1, **TINY))
    second.run()
    _, meta2 = load_model(second.export())
    assert [s["steps"] for s in meta2["lineage"]] == [7, 2, 3]
    assert meta2["lineage"][2]["init_sha256"] == file_sha256(a)
    assert "cosine, warm-up 1" in meta2["lineage"][2]["recipe"]
    assert meta2["total_steps"] == 12
    expected = "mixed bf16 (CPU: dense fusions, unit convs)" if second.cpu_mixed else "fp32"
    assert meta2["lineage"][2]["precision"] == expected


def test_lineage_records_fp32_when_asked(tmp_path, paired):
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path / "a"), data=str(paired), steps=1, precision="fp32", **TINY))
    assert trainer.stage_record()["precision"] == "fp32"


def test_resume_without_init_keeps_the_lineage(tmp_path, paired, tiny_weights):
    cfg = dict(out_dir=str(tmp_path / "run"), data=str(paired), steps=4, **TINY)
    first = Trainer(TrainConfig(init=str(tiny_weights), **cfg))
    first.run(should_stop=lambda: first.step >= 2)
    second = Trainer(TrainConfig(**cfg))
    second.resume()
    second.run()
    _, meta = load_model(second.export())
    assert [s["steps"] for s in meta["lineage"]] == [7, 4]
    assert meta["lineage"][1]["init_sha256"] == file_sha256(tiny_weights)


def test_bad_init_files_give_clear_errors(tmp_path, paired, tiny_weights):
    base = dict(out_dir=str(tmp_path / "run"), data=str(paired), **TINY)
    with pytest.raises(JDNetError, match=r"missing\.pt: weights file not found"):
        Trainer(TrainConfig(init=str(tmp_path / "missing.pt"), **base))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(JDNetError, match=r"junk\.pt: not a PyTorch weights file"):
        Trainer(TrainConfig(init=str(junk), **base))
    foreign = tmp_path / "foreign.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, foreign)
    with pytest.raises(JDNetError, match=r"foreign\.pt: not a JDNet checkpoint"):
        Trainer(TrainConfig(init=str(foreign), **base))
    with pytest.raises(JDNetError, match=r"init weights are a 4-channel, 1-unit model; this run asks for 6 channels, 1 units"):
        Trainer(TrainConfig(init=str(tiny_weights), **{**base, "channels": 6}))


def test_cli_init_takes_the_files_architecture_and_errors_are_one_line(tmp_path, paired, tiny_weights):
    from typer.testing import CliRunner

    from jdnet_cli.cli.app import app

    run = CliRunner()
    cli = ["--batch-size", "2", "--patch-size", "16", "--device", "cpu", "--threads", "1", "--log-every", "1"]
    res = run.invoke(app, ["train", str(paired), "--out", str(tmp_path / "r"), "--steps", "2", "--init", str(tiny_weights),
                           "--warmup", "2", "--schedule", "cosine", *cli])
    assert res.exit_code == 0, res.output
    assert "warm start from" in res.output and "JDNet(4 ch, 1 units)" in res.output
    _, meta = load_model(tmp_path / "r" / "jdnet.pt")
    assert meta["total_steps"] == 9
    res = run.invoke(app, ["train", str(paired), "--out", str(tmp_path / "x"), "--init", str(tmp_path / "nope.pt"), *cli])
    assert res.exit_code == 2 and res.output == f"error: {tmp_path / 'nope.pt'}: weights file not found\n"
    res = run.invoke(app, ["train", str(paired), "--out", str(tmp_path / "x"), "--schedule", "linear", *cli])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "--schedule must be one of step, cosine" in res.output


# -- the schedule ----------------------------------------------------------------------------------
def test_warmup_then_cosine_and_warmup_then_steps():
    cos = TrainConfig(out_dir="x", steps=10, warmup=4, schedule="cosine")
    assert [lr_factor(s, cos) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [lr_factor(s, cos) for s in (4, 7, 10)] == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 2)), 0.0])
    step = TrainConfig(out_dir="x", steps=10, warmup=2)
    assert [lr_factor(s, step) for s in range(10)] == pytest.approx([0.5] + [1.0] * 5 + [0.1] * 2 + [0.01] * 2)


def test_logged_lr_follows_the_cosine(tmp_path, paired):
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path), data=str(paired), steps=5, lr=1e-3, warmup=2, schedule="cosine", **TINY))
    trainer.run()
    # lr in force after each step: warm-up 2, then the cosine over the remaining 3 steps.
    expected = [1e-3 * lr_factor(s, trainer.cfg) for s in range(1, 6)]
    assert [r["lr"] for r in _log(tmp_path)] == pytest.approx(expected, rel=1e-12)
    assert expected[-1] == 0.0


# -- data sources --------------------------------------------------------------------------------
def test_split_weight():
    assert split_weight("a/b") == ("a/b", 1.0)
    assert split_weight("a/b:0.25") == ("a/b", 0.25)
    assert split_weight("C:/x") == ("C:/x", 1.0)  # not a number: part of the path
    with pytest.raises(JDNetError, match="weight after ':' must be a number >= 0"):
        split_weight("a:-1")


class _Const:
    def __init__(self, value: float):
        self.value, self.images = value, [None]

    def sample(self, rng, size, flips, rotations):
        return np.full((size, size, 3), self.value, np.float32), np.zeros((size, size, 3), np.float32)


def test_sources_are_drawn_in_proportion_to_their_weights():
    mix = MixedPatches([(_Const(0), 3.0), (_Const(1), 1.0), (_Const(2), 0.0)])
    rng = np.random.default_rng(0)
    seen = [int(mix.sample(rng, 2, False, False)[0][0, 0, 0]) for _ in range(4000)]
    counts = np.bincount(seen, minlength=3)
    assert counts[2] == 0 and mix.drawn == counts.tolist()
    # Binomial(4000, 0.75): sd 27; 5 sd either side.
    assert abs(counts[0] - 3000) < 140
    with pytest.raises(JDNetError, match="not all 0"):
        MixedPatches([(_Const(0), 0.0)])


def test_a_run_mixes_synthetic_and_paired_sources(tmp_path, paired, other_pairs):
    for i in range(2):
        write_png(tmp_path / "clean" / f"{i}.png", 40, 40, seed=i)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), clean=f"{tmp_path / 'clean'}:2", data=str(paired),
                      pairs=[f"{other_pairs}:1"], heavy_fraction=0.5, steps=10, **TINY)
    trainer = Trainer(cfg)
    assert trainer.data.probs.tolist() == pytest.approx([0.5, 0.25, 0.25])
    trainer.run()
    assert sum(trainer.data.drawn) == 20 and all(n > 0 for n in trainer.data.drawn)
    _, meta = load_model(trainer.export())
    assert meta["lineage"][-1]["data"] == (
        f"synthetic rain on {tmp_path / 'clean'} (weight 2, heavy 0.5); pairs {paired} (weight 1); pairs {other_pairs} (weight 1)"
    )


def test_rain_style_picks_the_synthetic_style_and_is_recorded(tmp_path):
    from jdnet_cli.data.synthetic_rain import FINE_RAIN

    write_png(tmp_path / "clean" / "0.png", 40, 40, seed=0)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), clean=str(tmp_path / "clean"), rain_style="fine", steps=2, **TINY)
    trainer = Trainer(cfg)
    assert trainer.data.sources[0].style is FINE_RAIN
    trainer.run()
    _, meta = load_model(trainer.export())
    assert meta["lineage"][-1]["data"] == f"synthetic rain on {tmp_path / 'clean'} (weight 1, fine style)"
    with pytest.raises(JDNetError, match="unknown rain style 'storm' \\(choose from light, fine, heavy, additive, heavy-additive\\)"):
        Trainer(TrainConfig(out_dir=str(tmp_path / "x"), clean=str(tmp_path / "clean"), rain_style="storm", **TINY))


def test_heavy_style_picks_the_style_of_the_heavy_patches_and_is_recorded(tmp_path):
    from jdnet_cli.data.synthetic_rain import HEAVY_ADDITIVE_RAIN, HEAVY_RAIN

    write_png(tmp_path / "clean" / "0.png", 40, 40, seed=0)
    common = dict(clean=str(tmp_path / "clean"), heavy_fraction=0.3, steps=2, **TINY)
    assert Trainer(TrainConfig(out_dir=str(tmp_path / "a"), **common)).data.sources[0].heavy_style is HEAVY_RAIN
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path / "run"), heavy_style="heavy-additive", **common))
    assert trainer.data.sources[0].heavy_style is HEAVY_ADDITIVE_RAIN
    trainer.run()
    _, meta = load_model(trainer.export())
    assert meta["lineage"][-1]["data"] == f"synthetic rain on {tmp_path / 'clean'} (weight 1, heavy-additive 0.3)"
    with pytest.raises(JDNetError, match="unknown rain style 'storm'"):
        Trainer(TrainConfig(out_dir=str(tmp_path / "x"), heavy_style="storm", **common))
    res = _cli("train", "--clean", str(tmp_path / "clean"), "--out", str(tmp_path / "c"), "--heavy-style", "storm", *CLI_TINY)
    assert res.exit_code == 2 and "--heavy-style must be one of light, fine, heavy, additive, heavy-additive, not 'storm'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "c").exists()


# -- validation on several sets, keeping the best -------------------------------------------------
def test_validation_scores_each_set_and_keeps_the_best(tmp_path, paired, other_pairs):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), data=str(paired), val=[str(paired), str(other_pairs)], val_every=2,
                      steps=4, lr=0.0, **TINY)
    trainer = Trainer(cfg)
    trainer.run()
    vals = [r for r in _log(tmp_path / "run") if "val" in r]
    assert [r["step"] for r in vals] == [2, 4]
    first = vals[0]["val"]
    assert set(first["sets"]) == {str(paired), str(other_pairs)}
    assert first["psnr_y"] == pytest.approx(np.mean([s["psnr_y"] for s in first["sets"].values()]))
    assert vals[0]["best"] is True
    assert vals[1]["best"] is (vals[1]["val"]["psnr_y"] > first["psnr_y"])
    kept = max(vals, key=lambda r: (r["val"]["psnr_y"], -r["step"]))
    model, meta = load_model(tmp_path / "run" / "best.pt")
    assert meta["steps_done"] == kept["step"] and meta["val"]["psnr_y"] == kept["val"]["psnr_y"]
    assert trainer.best_step == kept["step"]


def test_heavy_rain_is_heavier_and_stays_in_range():
    from jdnet_cli.data.synthetic_rain import HEAVY_RAIN, RainStyle, render_rain

    clean = np.full((96, 96, 3), 0.3, np.float32)
    light = [render_rain(clean, np.random.default_rng(s), RainStyle()) for s in range(8)]
    heavy = [render_rain(clean, np.random.default_rng(s), HEAVY_RAIN) for s in range(8)]
    assert all(0.0 <= im.min() and im.max() <= 1.0 for im in heavy)
    assert np.mean([im.mean() for im in heavy]) - 0.3 > 3 * (np.mean([im.mean() for im in light]) - 0.3)
    assert HEAVY_RAIN.layers[1] == 5


# -- --watch: sets scored at each validation but not used to choose best.pt ----------------------------
def test_watched_sets_are_scored_and_logged_but_do_not_choose_best(tmp_path, paired, other_pairs):
    out = tmp_path / "run"
    trainer = Trainer(TrainConfig(out_dir=str(out), data=str(paired), steps=4, lr=5e-3, val=str(paired), val_every=2, watch=[str(other_pairs)], ema=0.5, **TINY))
    trainer.run()
    vals = [r for r in _log(out) if "val" in r]
    for r in vals:
        for key in ("val", "ema_val"):
            assert set(r[key]["watch"]) == {str(other_pairs)}
            assert r[key]["watch"][str(other_pairs)]["psnr_y"] != r[key]["psnr_y"]  # a different set, not in the mean
    # The same model validated without the watched set gives the same selection score.
    plain = Trainer(TrainConfig(out_dir=str(tmp_path / "plain"), data=str(paired), steps=4, val=str(paired), val_every=2, **TINY))
    plain.model.load_state_dict(trainer.model.state_dict())
    assert plain.validate()["psnr_y"] == trainer.validate()["psnr_y"]


def test_cli_watch_needs_val_and_is_printed(tmp_path, paired, other_pairs):
    res = _cli("train", str(paired), "--out", str(tmp_path / "a"), "--steps", "2", "--watch", str(other_pairs), *CLI_TINY)
    assert res.exit_code == 2 and "--watch sets are scored at each validation: give --val too" in res.output
    res = _cli("train", str(paired), "--out", str(tmp_path / "b"), "--steps", "2", "--val", str(paired), "--val-every", "2",
               "--watch", str(other_pairs), *CLI_TINY)
    assert res.exit_code == 0, res.output
    assert f"[watch: {other_pairs.name} " in res.output


def test_cli_rain_style_is_checked_and_old_checkpoints_resume_as_light(tmp_path, paired):
    write_png(tmp_path / "clean" / "0.png", 40, 40, seed=0)
    res = _cli("train", "--clean", str(tmp_path / "clean"), "--out", str(tmp_path / "a"), "--rain-style", "storm", *CLI_TINY)
    assert res.exit_code == 2 and "--rain-style must be one of light, fine, heavy, additive, heavy-additive, not 'storm'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "a").exists()
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), clean=str(tmp_path / "clean"), steps=2, **TINY)
    Trainer(cfg).run()
    # A checkpoint written before --rain-style existed has no such field: it ran the light style.
    ckpt = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["config"]["rain_style"]
    torch.save(state, ckpt)
    assert Trainer(TrainConfig(**{**cfg.__dict__, "steps": 3})).resume() == ["steps"]
    assert Trainer(TrainConfig(**{**cfg.__dict__, "rain_style": "fine"})).resume() == ["rain_style"]
