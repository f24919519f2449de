"""A prepared training stage for a session that is lent a GPU (the `device` tool of these sessions).

Such a machine gets only the repository (64 MiB in all, ``../shared`` stays behind) and a few
minutes, and sends back at most 8 files of 16 MiB. So:

    python scripts/gpu_stage.py pack            # here: copy the data the stage needs into .gpu-stage/
    # device run, carry [".gpu-stage"], timeout_s 600:
    #   PYTHONUNBUFFERED=1 python3 scripts/gpu_stage.py run --budget 480
    # then here: jdnet benchmark quality ../shared/data/rain12 ../shared/data/rain100l-sample \
    #   --weights weights/jdnet.pt --weights <files_at>/best.pt --json

``pack`` copies Rain12 (validation) and as many clean photos as fit beside the repository
(``.gpu-stage/`` is ignored through .git/info/exclude). ``run`` times a short trial of
``jdnet train`` on the device, sizes a cosine run from the measured speed to end inside
``--budget`` seconds (validation and export included), runs it warm-started from
``weights/jdnet.pt`` (fp16 autocast on CUDA), and leaves best.pt, jdnet.pt and the logs in $OUT.
Nothing here has run on a GPU yet: the CPU dry run (``run --device cpu --budget 120``) is what
has been checked.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGE = REPO / ".gpu-stage"
EXCLUDE = REPO / ".git" / "info" / "exclude"
SHARED = REPO.parent / "shared" / "data"
TREE_LIMIT = 64 * 2**20
HEADROOM = 3 * 2**20  # the run's own files and git metadata that travel with the tree


def _tree_bytes() -> int:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    return sum((REPO / p).stat().st_size for p in out.decode().split("\0") if p and (REPO / p).is_file())


def pack(args: argparse.Namespace) -> None:
    """Copy Rain12 and the clean photos that fit into .gpu-stage/ and keep git from tracking it."""
    exclude = EXCLUDE
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.gpu-stage/" not in (exclude.read_text().split() if exclude.exists() else []):
        with exclude.open("a") as f:
            f.write("/.gpu-stage/\n")
    shutil.rmtree(STAGE, ignore_errors=True)
    shutil.copytree(Path(args.val), STAGE / "val")
    budget = TREE_LIMIT - HEADROOM - _tree_bytes() - sum(p.stat().st_size for p in (STAGE / "val").rglob("*") if p.is_file())
    (STAGE / "clean").mkdir(parents=True)
    photos = sorted(p for p in Path(args.clean).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    taken = 0
    # Every other photo first, then the rest: a cut-off budget still spans all source collections.
    for photo in photos[::2] + photos[1::2]:
        size = photo.stat().st_size
        if size > budget:
            continue
        shutil.copy2(photo, STAGE / "clean" / photo.name)
        budget -= size
        taken += 1
    print(f"packed {taken} of {len(photos)} clean photos and {args.val} into {STAGE} ({budget / 2**20:.1f} MiB to spare)")


def _train(args: argparse.Namespace, out: Path, steps: int, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jdnet_cli", "train", "--clean", str(STAGE / "clean"), "--init", str(REPO / "weights" / "jdnet.pt"),
           "--out", str(out), "--steps", str(steps), "--batch-size", str(args.batch_size), "--patch-size", str(args.patch_size),
           "--lr", str(args.lr), "--loss", "l1+ssim", "--rain-style", args.rain_style, "--flips", "--seed", str(args.seed),
           "--device", args.device, *extra]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), text=True)


def run(args: argparse.Namespace) -> None:
    """Trial, then a cosine run sized to the budget; results into $OUT (or --out)."""
    start = time.monotonic()
    dest = Path(args.out or os.environ.get("OUT") or REPO / "runs" / "gpu-stage")
    dest.mkdir(parents=True, exist_ok=True)
    trial = REPO / "runs" / "gpu-trial"
    shutil.rmtree(trial, ignore_errors=True)
    trial_steps = args.trial_steps
    t0 = time.monotonic()
    if _train(args, trial, trial_steps, ["--log-every", "1", "--save-every", "100000"]).returncode != 0:
        raise SystemExit("trial run failed")
    trial_s = time.monotonic() - t0
    records = [json.loads(line) for line in (trial / "train_log.jsonl").read_text().splitlines()]
    step_s = [1.0 / r["it_s"] for r in records if r.get("it_s") and r.get("step", 0) > 2]
    per_step = sorted(step_s)[len(step_s) // 2] if step_s else trial_s / trial_steps
    setup_s = max(0.0, trial_s - per_step * trial_steps)  # start-up, model build, first-step compile
    left = args.budget - (time.monotonic() - start) - 2 * setup_s - args.val_seconds * args.validations
    steps = max(10, int(left / per_step))
    print(f"trial: {per_step:.3f} s per step, {setup_s:.0f} s setup; main run {steps} steps", flush=True)
    main = REPO / "runs" / "gpu-main"
    shutil.rmtree(main, ignore_errors=True)
    val_every = max(1, steps // args.validations)
    proc = _train(args, main, steps, ["--warmup", "20", "--schedule", "cosine", "--save-every", str(val_every),
                                      "--val", str(STAGE / "val"), "--val-every", str(val_every), "--log-every", "20"])
    for name in ("best.pt", "jdnet.pt", "train_log.jsonl"):
        if (main / name).exists():
            shutil.copy2(main / name, dest / name)
    print(f"main run exit {proc.returncode}; results in {dest}: {sorted(p.name for p in dest.iterdir())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("pack", help="copy the stage's data into .gpu-stage/ (run here)")
    p.add_argument("--clean", default=str(SHARED / "clean"))
    p.add_argument("--val", default=str(SHARED / "rain12"))
    r = sub.add_parser("run", help="trial, then a run sized to --budget (run on the device)")
    r.add_argument("--budget", type=float, default=480.0, help="seconds for the whole stage")
    r.add_argument("--device", default="cuda")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--patch-size", type=int, default=128)
    r.add_argument("--lr", type=float, default=1e-4)
    r.add_argument("--seed", type=int, default=21)
    # Additive streaks, as the dev sets are made: from stage 12 they lifted both dev sets by 0.4-0.6 dB within
    # 250 CPU steps where the screened light style had stalled (weights/MODEL_CARD.md, stage 16).
    r.add_argument("--rain-style", default="additive")
    r.add_argument("--trial-steps", type=int, default=12)
    r.add_argument("--validations", type=int, default=4)
    r.add_argument("--val-seconds", type=float, default=10.0, help="allowance per validation pass")
    r.add_argument("--out", help="where results go (default $OUT)")
    args = ap.parse_args()
    pack(args) if args.mode == "pack" else run(args)


if __name__ == "__main__":
    main()
