"""Training: exact resume, schedule, losses, checkpoints, validation, export, the CLI and DDP on gloo."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jdnet_cli.benchmarking.metrics import ssim, ssim_torch
from jdnet_cli.errors import JDNetError
from jdnet_cli.inference.checkpoint import load_model
from jdnet_cli.training import TrainConfig, Trainer, loss_fn

from .conftest import REPO, onednn_cache_misses, write_png

# 4 channels, 1 unit, 16x16 patches: a step costs milliseconds, yet every code path runs.
TINY = dict(batch_size=2, patch_size=16, channels=4, num_units=1, threads=1, device="cpu")


def _cfg(out: Path, data: Path, **kw) -> TrainConfig:
    return TrainConfig(out_dir=str(out), data=str(data), **{**TINY, "steps": 6, "save_every": 100, "log_every": 1, **kw})


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_resume_continues_bit_exactly(tmp_path, paired):
    kw = dict(loss="l1+ssim", flips=True, rotations=True, seed=3)
    straight = Trainer(_cfg(tmp_path / "a", paired, **kw))
    straight.run()
    first = Trainer(_cfg(tmp_path / "b", paired, **kw))
    first.run(should_stop=lambda: first.step >= 4)  # past the first lr milestone (step 3)
    assert torch.load(first.checkpoint_path, weights_only=True)["step"] == 4
    second = Trainer(_cfg(tmp_path / "b", paired, **kw))
    assert second.resume() == []
    assert second.step == 4
    second.run()
    assert second.step == straight.step == 6
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name  # parameters and BN statistics
    assert straight.opt.param_groups[0]["lr"] == second.opt.param_groups[0]["lr"]
    sa, sb = straight.opt.state_dict()["state"], second.opt.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    losses_a = [r["loss"] for r in _log(tmp_path / "a")]
    losses_b = [r["loss"] for r in _log(tmp_path / "b")]
    assert losses_a == losses_b  # the log continues where it stopped, with the same losses


def test_a_different_seed_trains_differently(tmp_path, paired):
    a = Trainer(_cfg(tmp_path / "a", paired, steps=1, seed=0))
    b = Trainer(_cfg(tmp_path / "b", paired, steps=1, seed=1))
    assert not torch.equal(a.model.enterBlock[0].weight, b.model.enterBlock[0].weight)


def test_lr_decays_tenfold_at_60_and_80_percent(tmp_path, paired):
    Trainer(_cfg(tmp_path, paired, steps=10)).run()
    lrs = [r["lr"] for r in _log(tmp_path)]  # lr in force after each step
    assert lrs == pytest.approx([5e-4] * 5 + [5e-5] * 2 + [5e-6] * 3, rel=1e-9)


def test_checkpoints_are_periodic_and_atomic(tmp_path, paired):
    trainer = Trainer(_cfg(tmp_path, paired, steps=5, save_every=2))
    seen = {}

    def on_step(step: int) -> None:
        path = trainer.checkpoint_path
        seen[step] = torch.load(path, weights_only=True)["step"] if path.exists() else None

    trainer.run(on_step=on_step)
    assert seen == {1: None, 2: None, 3: 2, 4: 2, 5: 4}
    ckpt = torch.load(trainer.checkpoint_path, weights_only=True)
    assert ckpt["step"] == 5 and ckpt["world_size"] == 1 and ckpt["config"]["steps"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "train_log.jsonl"]  # no temp files left


def test_resume_reports_changed_options_and_refuses_other_architectures(tmp_path, paired):
    Trainer(_cfg(tmp_path, paired, steps=2)).run()
    resumed = Trainer(_cfg(tmp_path, paired, steps=4, lr=1e-3, log_every=5))
    assert resumed.resume() == ["steps"]
    # The restored schedule runs on the checkpoint's own peak rate: that is what the run (and its
    # exported metadata) records, and the new --lr is reported as unused.
    assert (resumed.cfg.lr, resumed.lr_asked) == (TrainConfig(out_dir="").lr, 1e-3)
    resumed.run()
    assert _log(tmp_path)[-1]["lr"] == pytest.approx(resumed.sched.get_last_lr()[0])
    assert load_model(resumed.export())[1]["training"]["lr"] == TrainConfig(out_dir="").lr
    with pytest.raises(JDNetError, match="checkpoint is a 4-channel, 1-unit model; this run asks for 6 channels, 1 units"):
        Trainer(_cfg(tmp_path, paired, channels=6)).resume()
    with pytest.raises(JDNetError, match="no checkpoint to resume from"):
        Trainer(_cfg(tmp_path / "new", paired)).resume()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(JDNetError, match="junk.pt: not a jdnet training checkpoint"):
        Trainer(_cfg(tmp_path, paired)).resume(tmp_path / "junk.pt")


def test_resume_after_a_kill_logs_each_step_once(tmp_path, paired):
    Trainer(_cfg(tmp_path, paired, steps=2)).run()  # checkpoint at step 2
    with open(tmp_path / "train_log.jsonl", "a") as fh:  # what a kill after two more steps leaves
        fh.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + json.dumps({"step": 4, "loss": 1.0}) + "\n" + '{"step": 5, "lo')
    resumed = Trainer(_cfg(tmp_path, paired, steps=5))
    resumed.resume()
    resumed.run()
    assert [r["step"] for r in _log(tmp_path)] == [1, 2, 3, 4, 5]
    assert all(r["loss"] != 1.0 for r in _log(tmp_path))  # the resumed run's own records


def test_a_new_run_beside_an_old_log_starts_its_own_and_keeps_the_old_one(tmp_path, paired):
    (tmp_path / "train_log.jsonl").write_text(json.dumps({"step": 7, "loss": 9.0}) + "\n")  # a run with no checkpoint
    Trainer(_cfg(tmp_path, paired, steps=2)).run()
    assert [r["step"] for r in _log(tmp_path)] == [1, 2]
    assert (tmp_path / "train_log.previous-1.jsonl").read_text() == json.dumps({"step": 7, "loss": 9.0}) + "\n"


def test_validation_is_logged_every_n_steps(tmp_path, paired):
    trainer = Trainer(_cfg(tmp_path, paired, steps=4, val=str(paired), val_every=2, val_limit=2))
    trainer.run()
    vals = [r for r in _log(tmp_path) if "val" in r]
    assert [r["step"] for r in vals] == [2, 4]
    assert vals[-1]["val"] == trainer.validate()
    assert 0 < vals[-1]["val"]["ssim_y"] < 1 and 5 < vals[-1]["val"]["psnr_y"] < 60


def test_export_writes_loadable_weights_with_metadata(tmp_path, paired):
    trainer = Trainer(_cfg(tmp_path, paired, steps=2, loss="mse"))
    trainer.run()
    dest = trainer.export()
    assert dest == tmp_path / "jdnet.pt"
    model, meta = load_model(dest)
    assert meta["arch"] == {"channels": 4, "num_units": 1}
    assert meta["steps_done"] == 2 and meta["world_size"] == 1
    assert meta["training"]["loss"] == "mse" and meta["training"]["patch_size"] == 16
    x = torch.rand(1, 3, 16, 16)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), trainer.model(x), atol=5e-3, rtol=0)  # fp16 weights


def test_losses():
    a = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    b = (a + 0.1).clamp(0, 1)
    assert loss_fn("ssim")(a, a).item() == pytest.approx(-1.0, abs=1e-6)
    assert loss_fn("l1")(a, b).item() == pytest.approx((a - b).abs().mean().item())
    assert loss_fn("mse")(a, b).item() == pytest.approx(((a - b) ** 2).mean().item())
    expected = (a - b).abs().mean().item() + 1 - ssim_torch(a, b).item()
    assert loss_fn("l1+ssim")(a, b).item() == pytest.approx(expected)
    with pytest.raises(JDNetError, match="unknown loss 'l2'"):
        loss_fn("l2")


def test_ssim_loss_matches_the_metric_gaussian_11_sigma_1_5():
    rng = np.random.default_rng(0)
    a = rng.random((20, 24))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    ta, tb = (torch.from_numpy(x)[None, None] for x in (a, b))
    assert ssim_torch(ta, tb).item() == pytest.approx(ssim(a * 255, b * 255), abs=1e-12)


def test_trainer_needs_a_data_source(tmp_path, paired):
    with pytest.raises(JDNetError, match="no training data"):
        Trainer(TrainConfig(out_dir=str(tmp_path), **TINY))


def test_synthetic_rain_training_runs(tmp_path):
    for i in range(2):
        write_png(tmp_path / "clean" / f"{i}.jpg", 40, 40, seed=i)
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path / "run"), clean=str(tmp_path / "clean"), steps=2, log_every=1, **TINY))
    trainer.run()
    assert [r["step"] for r in _log(tmp_path / "run")] == [1, 2]


# -- the command ------------------------------------------------------------------------------------
def _cli(*args: str):
    from typer.testing import CliRunner

    from jdnet_cli.cli.app import app

    return CliRunner().invoke(app, list(args))


CLI_TINY = ["--batch-size", "2", "--patch-size", "16", "--channels", "4", "--units", "1", "--device", "cpu", "--threads", "1"]


def test_cli_train_run_folder_errors_are_one_line(tmp_path, paired):
    (tmp_path / "taken").write_text("a file")
    res = _cli("train", str(paired), "--out", str(tmp_path / "taken"), "--steps", "1", *CLI_TINY)
    assert res.exit_code == 2 and res.output == f"error: {tmp_path / 'taken'}: exists and is not a folder; --out names the run's folder\n"
    # A folder that cannot be made (as a full or read-only disk would fail mid-run): no traceback.
    res = _cli("train", str(paired), "--out", "/proc/jdnet-no-such-run", "--steps", "1", *CLI_TINY)
    assert res.exit_code == 2, res.output
    assert res.output.splitlines()[-1] == "error: /proc/jdnet-no-such-run: No such file or directory"


def test_cli_train_writes_log_checkpoint_and_weights_then_resumes(tmp_path, paired):
    out = tmp_path / "run"
    res = _cli("train", str(paired), "--out", str(out), "--steps", "2", "--log-every", "1", *CLI_TINY)
    assert res.exit_code == 0, res.output
    assert "training JDNet(4 ch, 1 units) on 3 pairs" in res.output
    assert "step 2: loss" in res.output and f"weights: {out / 'jdnet.pt'}" in res.output
    assert [r["step"] for r in _log(out)] == [1, 2]
    assert load_model(out / "jdnet.pt")[1]["steps_done"] == 2

    again = _cli("train", str(paired), "--out", str(out), "--steps", "2", *CLI_TINY)
    assert again.exit_code == 2
    assert "checkpoint.pt exists: pass --resume" in again.output

    more = _cli("train", str(paired), "--out", str(out), "--steps", "3", "--log-every", "1", "--resume", *CLI_TINY)
    assert more.exit_code == 0, more.output
    assert "resumed" in more.output and "at step 2" in more.output
    assert "options differ from the checkpoint's run: steps" in more.output
    assert [r["step"] for r in _log(out)] == [1, 2, 3]


def test_cli_train_errors_are_one_line(tmp_path):
    (tmp_path / "photos").mkdir()
    write_png(tmp_path / "photos" / "a.png", 20, 10)
    res = _cli("train", str(tmp_path / "photos"), "--out", str(tmp_path / "run"), *CLI_TINY)
    assert res.exit_code == 2
    assert res.output.startswith(f"error: {tmp_path / 'photos'}: unknown dataset layout; understood layouts:")
    assert res.output.count("\n") == 1
    res = _cli("train", "--out", str(tmp_path / "run"), *CLI_TINY)
    assert res.exit_code == 2 and "no training data: give a paired dataset (DATA or --pairs) or --clean DIR" in res.output
    res = _cli("train", str(tmp_path), "--out", str(tmp_path / "run"), "--loss", "l2", *CLI_TINY)
    assert res.exit_code == 2 and "unknown loss 'l2'" in res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, message", [
    (["--lr", "-1"], "error: --lr must be a positive number, not -1"),
    (["--lr", "nan"], "error: --lr must be a positive number, not nan"),
    (["--lr", "inf"], "error: --lr must be a positive number, not inf"),
    (["--export", "EXPORT_DIR"], "error: EXPORT_DIR: is a folder; --export names the weights file to write"),
    (["--val", "VAL_SET"], "error: VAL_SET/rain/rain-0.png: 8x8 is smaller than the 11x11 SSIM window; a validation "
                           "image must be at least that"),
])
def test_cli_train_refuses_what_would_fail_later_before_any_step(tmp_path, paired, option, message):
    (tmp_path / "export_dir").mkdir()
    for kind in ("rain", "norain"):
        write_png(tmp_path / "val_set" / kind / f"{kind}-0.png", 8, 8)
    option = [o.replace("EXPORT_DIR", str(tmp_path / "export_dir")).replace("VAL_SET", str(tmp_path / "val_set"))
              for o in option]
    message = message.replace("EXPORT_DIR", str(tmp_path / "export_dir")).replace("VAL_SET", str(tmp_path / "val_set"))
    res = _cli("train", str(paired), "--out", str(tmp_path / "run"), "--steps", "2", *option, *CLI_TINY)
    assert (res.exit_code, res.output) == (2, message + "\n")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_seeds_outside_what_the_generators_take_are_usage_errors(tmp_path, paired):
    for command in (["train", str(paired), "--out", str(tmp_path / "run"), *CLI_TINY], ["rain", str(paired), str(tmp_path / "r")]):
        for seed in ("-1", str(2**32)):
            res = _cli(*command, "--seed", seed)
            assert res.exit_code == 2 and "Invalid value for '--seed'" in res.output, res.output


def test_a_full_disk_while_checkpointing_is_one_line_not_a_traceback(tmp_path, paired):
    import resource

    def small_files():  # files over 20 kB cannot be written (EFBIG), as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "jdnet_cli", "train", str(paired), "--out", str(out), "--steps", "2",
                          *CLI_TINY], capture_output=True, text=True, env=env, preexec_fn=small_files, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines()[-1] == f"error: {out / 'checkpoint.pt'}: File too large", res.stderr
    assert "Traceback" not in res.stderr and not any(p.name.startswith(".") for p in out.iterdir())


def test_torchrun_ddp_on_gloo_two_processes(tmp_path, paired):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "jdnet_cli", "train", str(paired), "--out", str(out), "--steps", "3", "--log-every", "1",
        "--save-every", "2", *CLI_TINY,
    ]
    res = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    err = res.stderr.decode()
    assert res.returncode == 0, err
    assert err.count("training JDNet(4 ch, 1 units) on 2 pairs per process, 2 process(es)") == 1  # rank 0 only
    assert [r["step"] for r in _log(out)] == [1, 2, 3]  # one log, written once per step
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["world_size"] == 2
    r0, r1 = ckpt["rank_rngs"]
    assert r0["numpy"] != r1["numpy"]  # each rank samples its own patches
    _, meta = load_model(out / "jdnet.pt")
    assert meta["world_size"] == 2 and meta["steps_done"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "jdnet.pt", "train_log.jsonl"]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_finishes_the_step_saves_a_checkpoint_and_resume_continues(tmp_path, paired, signum, code):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "jdnet_cli", "train", str(paired), "--out", str(out), "--steps", "100000",
           "--log-every", "1", "--save-every", "100000", *CLI_TINY]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "train_log.jsonl").exists() or len(_log(out)) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1].decode()
        time.sleep(0.01)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    notice = "interrupted: finishing the current step, then stopping (Ctrl-C again to abandon it)"
    assert err.count(notice) == 1
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert f"interrupted at step {step}; checkpoint saved, continue with --resume" in err
    assert err.index(notice) < err.index("interrupted at step")
    assert _log(out)[-1]["step"] == step and not (out / "jdnet.pt").exists()
    more = _cli("train", str(paired), "--out", str(out), "--steps", str(step + 2), "--log-every", "1", "--resume", *CLI_TINY)
    assert more.exit_code == 0, more.output
    assert [r["step"] for r in _log(out)][-3:] == [step, step + 1, step + 2]


_MAKE_A_TRAINER = """
import tempfile, cv2, numpy as np
from jdnet_cli.training import TrainConfig, Trainer
tmp = tempfile.mkdtemp()
for i in range(2):
    cv2.imwrite(f"{tmp}/{i}.png", np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8))
Trainer(TrainConfig(out_dir=tmp + "/run", clean=tmp, batch_size=1, patch_size=32, channels=4, num_units=1, device="cpu"))
"""


@pytest.mark.parametrize("user_value,evicted", [(None, False), ("64", True)])
def test_training_gives_the_kernel_caches_room_unless_the_user_sized_them(user_value, evicted):
    """A Trainer lifts import's 64-entry oneDNN cache cap (a training step needs more kernels); an exported value wins."""
    assert onednn_cache_misses(user_value, setup=_MAKE_A_TRAINER) == (True, evicted)


def test_cpu_training_keeps_freed_memory_like_inference(tmp_path, monkeypatch):
    import jdnet_cli.training as training

    calls = []
    monkeypatch.setattr(training, "keep_freed_memory", lambda: calls.append(1) or True)
    clean = tmp_path / "clean"
    write_png(clean / "a.png", 40, 40)
    Trainer(TrainConfig(out_dir=str(tmp_path / "run"), clean=str(clean), batch_size=1, patch_size=32, channels=4, num_units=1, device="cpu"))
    assert calls == [1]


def test_precision_picks_bf16_fusions_only_for_auto_on_the_cpu(tmp_path, paired, monkeypatch):
    import jdnet_cli.training as training

    monkeypatch.setattr(training, "bf16_fusions_usable", lambda: True)
    auto = Trainer(TrainConfig(out_dir=str(tmp_path / "a"), data=str(paired), **TINY))
    fp32 = Trainer(TrainConfig(out_dir=str(tmp_path / "b"), data=str(paired), precision="fp32", **TINY))
    assert (auto.cpu_mixed, auto.amp, fp32.cpu_mixed, fp32.amp) == (True, False, False, False)
    monkeypatch.setattr(training, "bf16_fusions_usable", lambda: False)
    assert not Trainer(TrainConfig(out_dir=str(tmp_path / "c"), data=str(paired), **TINY)).cpu_mixed
    with pytest.raises(JDNetError, match="unknown training precision 'fp16'"):
        Trainer(TrainConfig(out_dir=str(tmp_path / "d"), data=str(paired), precision="fp16", **TINY))


def test_cli_precision_is_checked_in_one_line(tmp_path, paired):
    from typer.testing import CliRunner

    from jdnet_cli.cli.app import app

    res = CliRunner().invoke(app, ["train", str(paired), "--out", str(tmp_path / "x"), "--precision", "half"])
    assert res.exit_code == 2 and res.output == "error: --precision must be one of auto, fp32, not 'half'\n"
