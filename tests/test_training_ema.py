"""The moving average of the weights: its recurrence, resume, validation, export and the CLI option."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jdnet_cli.errors import JDNetError
from jdnet_cli.inference.checkpoint import load_model
from jdnet_cli.training import TrainConfig, Trainer

from .test_training import CLI_TINY, _cli

TINY = dict(batch_size=2, patch_size=16, channels=4, num_units=1, threads=1, device="cpu", log_every=1, save_every=100,
            loss="l1+ssim", lr=5e-3, seed=4)


def _cfg(out: Path, data: Path, **kw) -> TrainConfig:
    return TrainConfig(out_dir=str(out), data=str(data), **{**TINY, "steps": 5, **kw})


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_the_average_follows_its_recurrence_for_weights_and_bn_statistics(tmp_path, paired):
    decay = 0.6
    trainer = Trainer(_cfg(tmp_path / "run", paired, ema=decay))
    # float64 reference: e_0 = the initial weights, e_k = decay * e_(k-1) + (1 - decay) * w_k.
    ref = {k: v.double().clone() for k, v in trainer.model.state_dict().items()}

    def follow(_step: int) -> None:
        for k, w in trainer.model.state_dict().items():
            ref[k] = decay * ref[k] + (1 - decay) * w.double() if w.is_floating_point() else w.double().clone()

    trainer.run(on_step=follow)
    ema = trainer.ema_model.state_dict()
    assert any("running_var" in k for k in ema)  # BN statistics are averaged too
    for k, w in trainer.model.state_dict().items():
        assert torch.allclose(ema[k].double(), ref[k], rtol=1e-5, atol=1e-6), k
        if w.is_floating_point() and w.numel() > 1:
            assert not torch.equal(ema[k], w), k  # five steps at lr 5e-3 move every tensor away from its average
    tracked = [k for k in ema if k.endswith("num_batches_tracked")]
    assert tracked and all(int(ema[k]) == 5 for k in tracked)
    assert all(not p.requires_grad for p in trainer.ema_model.parameters())


def test_resume_restores_the_average_exactly_and_can_start_one(tmp_path, paired):
    straight = Trainer(_cfg(tmp_path / "a", paired, ema=0.7))
    straight.run()
    first = Trainer(_cfg(tmp_path / "b", paired, ema=0.7))
    first.run(should_stop=lambda: first.step >= 3)
    second = Trainer(_cfg(tmp_path / "b", paired, ema=0.7))
    assert second.resume() == []
    second.run()
    for (k, a), b in zip(straight.ema_model.state_dict().items(), second.ema_model.state_dict().values()):
        assert torch.equal(a, b), k
    # A run without an average, resumed with one: the average starts from the resumed weights.
    plain = Trainer(_cfg(tmp_path / "c", paired))
    plain.run(should_stop=lambda: plain.step >= 3)
    later = Trainer(_cfg(tmp_path / "c", paired, ema=0.7))
    assert later.resume() == ["ema"]
    for (k, w), e in zip(later.model.state_dict().items(), later.ema_model.state_dict().values()):
        assert torch.equal(w, e), k


def test_validation_scores_both_and_best_keeps_the_better_with_its_provenance(tmp_path, paired):
    out = tmp_path / "run"
    trainer = Trainer(_cfg(out, paired, ema=0.5, steps=6, val=str(paired), val_every=2))
    trainer.run()
    vals = [r for r in _log(out) if "val" in r]
    assert [r["step"] for r in vals] == [2, 4, 6]
    assert all(r["val"] != r["ema_val"] for r in vals)  # two different sets of weights were scored
    kept = max(vals, key=lambda r: (max(r["val"]["psnr_y"], r["ema_val"]["psnr_y"]), -r["step"]))
    from_ema = kept["ema_val"]["psnr_y"] > kept["val"]["psnr_y"]
    _, meta = load_model(out / "best.pt")
    assert meta["steps_done"] == kept["step"]
    assert meta["val"] == (kept["ema_val"] if from_ema else kept["val"])
    assert meta["weights"] == ("moving average (decay 0.5)" if from_ema else "as trained")
    # The final export is the average, and scores as the last validation said it would.
    final = trainer.export()
    model, meta = load_model(final)
    assert meta["weights"] == "moving average (decay 0.5)" and "EMA 0.5" in meta["lineage"][-1]["recipe"]
    trainer.model.load_state_dict(model.state_dict())
    assert trainer.validate()["psnr_y"] == pytest.approx(vals[-1]["ema_val"]["psnr_y"], abs=0.05)  # fp16 file


def test_without_an_average_nothing_changes(tmp_path, paired):
    trainer = Trainer(_cfg(tmp_path / "run", paired, steps=2, val=str(paired), val_every=2))
    trainer.run()
    assert trainer.ema_model is None
    (record,) = [r for r in _log(tmp_path / "run") if "val" in r]
    assert "ema_val" not in record
    assert load_model(trainer.export())[1]["weights"] == "as trained"
    assert torch.load(trainer.checkpoint_path, weights_only=True)["ema"] is None


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_decay_outside_0_1_is_refused(tmp_path, paired, decay):
    with pytest.raises(JDNetError, match=r"EMA decay .* is not in \[0, 1\)"):
        Trainer(_cfg(tmp_path / "run", paired, ema=decay))
    res = _cli("train", str(paired), "--out", str(tmp_path / "cli"), "--ema", str(decay), *CLI_TINY)
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "EMA decay" in res.output


def test_cli_prints_both_scores(tmp_path, paired):
    out = tmp_path / "run"
    res = _cli("train", str(paired), "--out", str(out), "--steps", "2", "--ema", "0.9", "--val", str(paired), "--val-every", "2", *CLI_TINY)
    assert res.exit_code == 0, res.output
    assert "step 2: val PSNR-Y" in res.output and "; average PSNR-Y" in res.output
    assert load_model(out / "jdnet.pt")[1]["weights"] == "moving average (decay 0.9)"



def test_keep_validated_exports_each_checked_model_and_its_average(tmp_path, paired):
    out = tmp_path / "run"
    trainer = Trainer(_cfg(out, paired, ema=0.5, steps=4, val=[str(paired)], val_every=2, keep_validated=True))
    kept = {}

    def snapshot(step: int) -> None:
        if step % 2 == 0:
            kept[step] = ({k: v.clone() for k, v in trainer.model.state_dict().items()},
                          {k: v.clone() for k, v in trainer.ema_model.state_dict().items()})

    trainer.run(on_step=snapshot)
    assert sorted(p.name for p in (out / "validated").iterdir()) == ["step-2-ema.pt", "step-2.pt", "step-4-ema.pt", "step-4.pt"]
    vals = [r for r in _log(out) if "val" in r]
    for rec in vals:
        step = rec["step"]
        for suffix, state, score, label in (("", kept[step][0], rec["val"], "as trained"),
                                            ("-ema", kept[step][1], rec["ema_val"], "moving average (decay 0.5)")):
            model, meta = load_model(out / "validated" / f"step-{step}{suffix}.pt")
            assert meta["weights"] == label and meta["steps_done"] == step
            assert meta["val"]["psnr_y"] == pytest.approx(score["psnr_y"])
            for k, v in model.state_dict().items():
                if v.is_floating_point():  # exported as fp16, loaded as fp32
                    assert torch.equal(v, state[k].half().float()), (step, suffix, k)


def test_keep_validated_is_off_by_default_and_needs_val(tmp_path, paired):
    out = tmp_path / "run"
    Trainer(_cfg(out, paired, ema=0.5, steps=2, val=[str(paired)], val_every=2)).run()
    assert not (out / "validated").exists()
    res = _cli("train", str(paired), "--out", str(tmp_path / "cli"), *CLI_TINY, "--keep-validated")
    assert res.exit_code == 2 and "--keep-validated keeps the models each validation scores: give --val too" in res.output
