"""Training-step yardstick: one JDNet train step against one Adam step of an equal-FLOP conv stack.

JDNet costs ~2.72 MFLOP per pixel forward; 148 layers of 32->32 3x3 conv + LeakyReLU cost the
same, so the ratio jdnet/stack says how much of a training step is overhead rather than
arithmetic. Both are timed here, in fresh child processes interleaved repeat by repeat (so
background load hits them alike), with the glibc allocator settings jdnet uses. The stack is timed
in NCHW and channels-last and the faster counts. The JDNet child also splits its steps into
phases: data (patch sampling and synthetic rain), forward, loss, backward, optimizer.

    python benchmarks/train_step_speed.py                          # batch 4 of 64x64, as `jdnet train`
    python benchmarks/train_step_speed.py --batch 16               # or --patch 128
    python benchmarks/train_step_speed.py --baseline /other/checkout  # time that checkout's step too

Measured 2026-12-03 on the 2-core development VM (torch 2.13.0+cpu, 2 threads, the background
training run paused), batch 4 of 64x64, loss l1+ssim, medians of 5 steps.

Before (b056360): 4.31-4.49 s per step, 4.5-4.7x the stack's 0.95-1.0 s. Phases: data 5.6 ms
(0.1%), forward 1005 ms (23%), loss 10 ms (0.2%), backward 3192 ms (74%), optimizer 97 ms (2.3%).
In torch.profiler convolution backward took 1.73 s of a step against 0.34 s for the same
convolutions forward (5x), ~0.5-2.5 ms per call even at 4x4 pixels: with oneDNN's kernel caches
capped at 64 entries (jdnet_cli/__init__.py, for inference) every step recompiled the ~90
forward/backward kernels of its ~30 conv shapes; and the attention's NCHW output and strided
gradients next to channels-last convs made oneDNN reorder on every call.

After (16ef55f: caches sized for training, attention in its inputs' layout, glibc heap kept as for
inference): 2.81 s per step vs 4.49 s for b056360 in the same run (1.60x), 2.84x the stack.
Phases: data 6 ms (0.2%), forward 1069 ms (36%), loss 6 ms (0.2%), backward 1802 ms (61%),
optimizer 91 ms (3.1%). What is left (torch.profiler, per step): the banded attention's backward
0.75 s (its 49-tap loops, F.fold) and forward 0.29 s, conv backward 0.52 s, the dense fusions'
GEMMs ~0.35 s (forward addmm, backward mm and weight-gradient addmm_, ~76 GFLOP/s on these tall,
32-wide products). Data preparation is not on the critical path (0.1-0.2%), so there is no prefetch
thread; the SSIM loss (separable or not) is 0.2% of a step.

Then (8297a1a: the attention's forward and backward in C++, fused Adam, the dense fusions' forward
and backward in C++ over slot pairs), against bf9f38f in the same runs: batch 4 of 64x64 1.93 s vs
2.78 s per step (1.44x; 3 x 8 steps), 2.06x the stack (bf9f38f: 2.96x); batch 16 of 64x64 6.90 s
vs 9.89 s (1.43x), 1.87x the stack; batch 4 of 128x128 6.22 s vs 10.21 s (1.64x), 1.56x the stack.
Phases at batch 4 of 64x64: data 6 ms (0.3%), forward 821 ms (34%), loss 7 ms (0.3%), backward
1509 ms (63%), optimizer 43 ms (1.8%). torch.profiler per step (3 steps, its overhead included):
convolution backward 0.54 s and forward 0.28 s (oneDNN; ~930 calls a step, many of them 1x1 or
16-channel convs and pyramid levels of 4x4 to 32x32 pixels, where a call costs more than its
arithmetic), the dense fusions' backward kernel 0.54 s and forward 0.12 s (memory-bound: each
fusion reads its whole prefix and adds into the gradients of every slot it read, 3.4 GB a step),
full-resolution adds 0.15 s, the attention 0.12 s (was 1.04 s), upsampling 0.07 s, LReLU forward
and backward 0.10 s. The 1.5x bar is met at 128x128 patches nearly (1.56x), not at 64x64.

Then (3557b4b: the dense fusions' input gradients deferred, each slot's computed once from the
kept g_i; the scale projections summed from the smallest level up, one full-size upsample instead
of four), against e6c2a1f in the same runs (this VM was noisier that day, ±10% between repeats):
batch 4 of 64x64 1.98 s vs 2.18 s per step (1.10x; 4 x 8 steps), 2.19x the stack. The dense
fusion ops alone (torch.profiler, 3 steps, two pairs): 1.66-2.31 s -> 1.34-1.49 s. Phases (2 x 6
steps, same day): data 5 ms (0.3%), forward 649 ms (32%), loss 6 ms (0.3%), backward 1324 ms (66%),
optimizer 36 ms (1.8%); 2.02 s per step, 2.08x the stack. Batch 16 of 64x64: 7.32 s, 1.95x the
stack; batch 4 of 128x128: 6.00 s, 1.62x (2 x 3 steps each, no baseline in those runs).

Why the rest is hard (measured the next session, same VM, training paused): a step uses two
threads badly. One thread takes 2.6-3.3 s against 2.0-2.1 s for two (1.3-1.6x; 2 x 5 steps
each). Timed alone, warm, fwd+bwd at batch 4: 3x3 32->32 convs at 64x64 scale 1.72-1.85x from one
thread to two, 3x3 16->16 at 64x64 1.28x, and every conv on maps of 16x16 or smaller 0.59-1.23x
(the pyramid levels and the SC context branch run slower on two threads than on one). Tried and
dropped: two processes of one thread and batch 2 under torchrun (DDP) run 1.8-2.0 s per step,
no faster; the SC bottleneck's and the SAM output's 1x1 convs with their residual, cat and LReLU
as one autograd Function (C++ forward, GEMM backward), 1.016x in 14 interleaved step pairs; the
two 16-channel 3x3 branches as one grouped conv (slower alone: 5.1-5.8 vs 3.7-3.9 ms);
torch.compile of a joint unit (graph breaks at the op back-end switch; 111 vs 72-77 ms fwd+bwd);
bf16 convs (this CPU has AVX512-BF16: 1.55x on 3x3 32->32 at 64x64, but 0.64-1.0x on the 1x1s
and the small maps that dominate here).

Re-measured 2026-12-06 at 3338c7f (same VM type, two `nice -n 19` training runs in the background,
so not idle): `--repeats 2`, batch 4 of 64x64: 1.72 s per step, 2.16x the stack's 0.80 s (NHWC;
NCHW 0.88 s). Phases: data 4 ms, forward 602 ms (33%), loss 5 ms, backward 1163 ms (64%), optimizer
31 ms. Per aten op (a dispatch-mode timer around each call, 3 steps; the timer's own overhead
raised the step to 2.0 s, 1.57 s of it inside ops): convolution backward 489 ms and forward 234 ms
(the 16->16 3x3 convs at 64x64 run at ~140-160 GFLOP/s, near the stack's ~167; the 1x1s at
~70 GFLOP/s and the pyramid's 16x16 to 4x4 levels are where convs lose), dense fusion forward
(and slot gradients) 214 ms and weight gradients 206 ms (~180-200 GFLOP/s: arithmetic-bound now),
attention 107 ms, full-resolution adds 62 ms, LReLU 66 ms, BatchNorm 37 ms, cat 18 ms, Adam 12 ms.
Tried the same day, interleaved step pairs in one process (6 pairs each, ±10% noise from the
background runs), all dropped as no faster: every full-resolution 1x1 conv as addmm/mm on the
channels-last rows in one autograd Function (0.95x; alone, warm, it was 0.49-1.38x of oneDNN
depending on shape); the SAM's three projections (32->2, 32->2, 32->8) as one 32->12 conv
sliced (0.93x); the SC bottleneck's two 32->16 1x1s as one 32->32 conv (0.93x); both (0.96x).

2026-12-07 (41aa125, same VM type, training runs paused): the dense fusions' weight gradient ran at
86-100 GFLOP/s against ~205 for their forward (the two kernels timed alone, P = 16384, k = 128 to
1024): AVX2's 16 registers held 8 accumulator chains. An AVX-512 block (8 columns x 2 vectors,
chosen at run time, same bits) with a prefetch of the next segment's rows: 125-207 GFLOP/s (1.4-1.9x in one
run), this CPU's FMA peak being ~234 (117 per core, measured). A step: `--repeats 3 --baseline <adece66>`
1.37 s vs 1.43 s (1.04x), 1.92x the stack's 0.71 s (baseline 2.01x); 4 x 6
interleaved steps of the same checkout with and without JDNET_CPU_AVX2_ONLY: medians 1.42-1.74 vs
1.54-1.67 s. So +-10% VM noise hides the ~4% this should give. Where the 1.37 s goes now
(dispatch-mode timer, 3 steps, the timer raising a step to 1.65 s): convolutions 640 ms (backward
430, forward 210), dense fusion forward and slot gradients 189 ms (~199 GFLOP/s, near peak),
weight gradients 113 ms, attention 99 ms, full-resolution adds 60 ms (11.5 per unit, mostly
autograd summing the gradients of tensors used twice), LReLU 55 ms, BatchNorm 35 ms. The pyramid's
levels of 16x16 and smaller cost 3.8 ms a unit where their FLOPs need ~1.2 ms (a 3x3 32->32 conv
on 4 x 4x4 pixels: ~295 us forward and backward, ~18 us of arithmetic).

Then (7248b50: the SAM block's BatchNorm, LReLU, three projections and attention as one autograd
Function, ops/sam_training.py, with the batch statistics and the input stage's backward in C++),
against 41aa125 in the same run, `--repeats 4`: 1.29 s vs 1.37 s per step (1.06x; every repeat
faster), **1.76x** the stack's 0.73 s (41aa125: 1.87x). The SAM block alone, forward and backward
(batch 4, 32 x 64x64): 7.6-8.6 ms vs 9.3-9.5 ms. A step's fixed cost is large: at batch 4 of
8x8 patches (arithmetic ~1/64 of 64x64) a full-model step takes ~300 ms; it runs ~10,800 aten
calls, 834 convolutions forward and 834 backward, and oneDNN costs ~50 us forward and ~150 us
backward per call on this VM whatever the size (a 4 x 32 x 4x4 conv: forward 83 us, backward
152 us; the native non-oneDNN conv: 27 / 127 us), so ~140 ms of a 64x64 step is oneDNN's per-call
cost. Tried the same session and dropped: the SC bottleneck's 1x1 convs (the 32->16 pair and the
32->32 fusion with its residual) as autograd Functions over the fuse_segments and
dense_fusion_backward kernels (block forward+backward 8.3-9.2 vs 8.4-9.3 ms, 3 x 20 interleaved:
oneDNN's 1x1 on full-size maps is near memory speed, 0.28 ms forward and ~0.5 ms backward, and the
kernels' 0.18 + 0.39 ms win only ~0.3 ms a block); the pyramid's strided residual blocks as one
C++ Function each (direct 3x3 loops on padded channels-last maps, two pixels or channels per
register block, gradients bit-checked against the convs): forward+backward per block at inputs of
64, 32, 16 and 8 px: 9.7 / 2.6 / 0.88 / 0.46 ms against oneDNN's 4.6 / 1.6 / 0.88 / 0.71, a gain
only on the 8x8 level (~8 ms a step); OMP_WAIT_POLICY=ACTIVE (3 x 6 interleaved steps: within
noise). Same session, 7248b50+ against adece66 (the session's start), one run each, 3 steps: batch
16 of 64x64 4.54 vs 4.85 s (1.07x), **1.44x** the stack's 3.15 s (adece66 1.54x), peak RSS growth
218 vs 354 MiB; batch 4 of 128x128 4.45 vs 4.93 s (1.11x), **1.39x** the stack's 3.20 s (adece66
1.54x), 264 vs 337 MiB.

Then the attention's C++ training kernels in vector passes (each tap's backward in one pass over the
row instead of 14; a tap's logits in one pass over the four relations; the forward's 49-tap sums in
registers): kernel alone, batch 4 of 64x64, forward 0.54 vs 0.69 ms, backward 1.47 vs 2.23 ms.
Step, `--repeats 3 --baseline <adece66>` (the session's start), same run: **1.30 s vs 1.46 s
(1.12x), 1.78x the stack's 0.73 s (adece66 2.00x)**; every repeat faster (1.25-1.35 vs 1.40-1.70 s).
The issue's check (`jdnet train ... --steps 6 --batch-size 4 --patch-size 64 --threads 2 --log-every 1`,
median s/step over steps 2-6, the NHWC stack's Adam step right after), each checkout run from a neutral
directory, two rounds: b5fb9a4 1.24 / 1.36 s, **1.62x / 1.73x** the stack (0.76 / 0.78 s); adece66 1.43 /
1.51 s, 1.85x / 1.90x. (Run as `python -m jdnet_cli` from the working tree, `-m` puts the current
directory before PYTHONPATH, so an earlier "baseline" of this check this session ran the new code twice;
those figures are dropped. `--baseline` here is unaffected: a script's own folder comes first, not the
current directory.) In real training the same code took two one-thread runs side by side from
0.39-0.44 it/s (stage 18l) to 0.46-0.48 it/s (stages 19l and 19m; same batch and patch, not a
controlled comparison).

Then mixed precision on the CPU (982d9f7, 5b5621b; `jdnet train --precision auto`, the default, on a
CPU with AVX512-BF16): the dense fusions in C++ bfloat16 kernels with float32 sums (VDPBF16PS; kernels
alone, P = 16384: forward 190-198 -> 293-362 GFLOP/s, weight gradient 134-170 -> 183-275), the feature
buffer in bfloat16, and each joint unit's pyramid and SC bottleneck under bf16 autocast (oneDNN's bf16
3x3 convs, alone with their casts: 1.22x at 16 channels of 64x64, 1.48x at 32 of 32x32). The SAM
block, losses and optimizer stay float32; inference is untouched. On the shipped weights, one batch:
the rain layer moves 0.43% and the gradients 0.46% from float32. `--repeats 3 --also-fp32
--stack-bf16 --baseline <11a7681>` (training paused): **1.08 s per step, 1.43x the float32 stack's
0.75 s**; --precision fp32 1.41 s (1.87x), 11a7681 1.38 s (1.83x): 1.28x over the session's start.
Phases: data 4 ms, forward 382 ms (33%), loss 5 ms, backward 727 ms (64%), optimizer 25 ms. Batch 16
of 64x64 (3 steps): 3.46 s, **1.11x** the stack's 3.11 s (fp32 4.59 s, 1.48x); batch 4 of 128x128:
3.13 s, **1.00x** the stack's 3.12 s (fp32 4.42 s, 1.42x). The issue's check (runs of this checkout
from /tmp, --precision auto vs fp32 interleaved, two rounds): **1.38x / 1.36x** (1.00 / 1.01 s) against
1.85x / 1.78x. A fair caveat: the yardstick is a float32 stack, and the same stack under bf16
autocast takes 0.41 s (batch 16: 1.59 s; 128x128: 1.61 s), so against a bf16 stack JDNet's step is
~2.6x at batch 4 of 64x64; the bf16 win is bigger for plain 3x3 stacks than for JDNet's small maps,
1x1 convs and float32 attention. Inference, `conv_stack_yardstick.py --size 481x321 --repeats 3
--baseline <11a7681>`: 0.99x / 0.98x (noise), 1.22x / 1.18x the stack. Training outcome: the same
recipe and seed in fp32 (stage 20l) and mixed precision (21x) logged losses within 5e-4 relative over
400 steps and validated within 0.004 dB at steps 200 and 400 (weights/MODEL_CARD.md).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STACK_LAYERS = 148
PHASES = ("data", "forward", "loss", "backward", "optimizer")


def _keep_freed_memory() -> None:
    try:  # what jdnet sets up on the CPU (a --baseline checkout may keep it at the top level)
        try:
            from jdnet_cli.inference.cpu_allocator import keep_freed_memory
        except ImportError:
            from jdnet_cli.cpu_allocator import keep_freed_memory
        keep_freed_memory()
    except ImportError:
        pass


def _jdnet_child(args: argparse.Namespace) -> dict:
    import torch

    from jdnet_cli.training import TrainConfig, Trainer

    _keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        extra = {"precision": args.precision} if args.precision != "auto" else {}  # baselines may predate it
        tr = Trainer(TrainConfig(out_dir=tmp, clean=args.clean, batch_size=args.batch, patch_size=args.patch,
                                 loss=args.loss, device="cpu", threads=args.threads, **extra))
        tr.model.train()
        tr.train_step()  # first step: allocator and primitive caches
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            tr.train_step()
            times.append(time.perf_counter() - t0)
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        # The same work as train_step (CPU: no autocast or scaling), cut at the phase boundaries.
        phases: dict[str, list[float]] = {k: [] for k in PHASES}
        for _ in range(args.steps if args.phases else 0):
            t = [time.perf_counter()]
            rainy, clean = tr.batch()
            t.append(time.perf_counter())
            out = tr.forward(rainy) if hasattr(tr, "forward") else tr.net(rainy)
            t.append(time.perf_counter())
            loss = tr.loss(out.float(), clean)
            t.append(time.perf_counter())
            tr.opt.zero_grad(set_to_none=True)
            loss.backward()
            t.append(time.perf_counter())
            tr.opt.step()
            tr.sched.step()
            t.append(time.perf_counter())
            for name, a, b in zip(PHASES, t, t[1:]):
                phases[name].append(b - a)
    return {"times": times, "peak_growth_mib": peak, "threads": torch.get_num_threads(),
            "phases": {k: statistics.median(v) for k, v in phases.items() if v}}


def _stack_child(args: argparse.Namespace, channels_last: bool, bf16: bool = False) -> dict:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if args.threads:
        torch.set_num_threads(args.threads)
    _keep_freed_memory()
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 1, 1)]
    for _ in range(STACK_LAYERS):
        layers += [nn.Conv2d(32, 32, 3, 1, 1), nn.LeakyReLU(0.2)]
    layers.append(nn.Conv2d(32, 3, 3, 1, 1))
    net = nn.Sequential(*layers).to(memory_format=fmt).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(args.batch, 3, args.patch, args.patch).contiguous(memory_format=fmt)
    y = torch.rand_like(x)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        loss = F.l1_loss(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"times": times, "peak_growth_mib": peak, "threads": torch.get_num_threads()}


def _run_child(kind: str, repo: Path, args: argparse.Namespace, precision: str = "auto") -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--clean", args.clean, "--steps", str(args.steps),
           "--batch", str(args.batch), "--patch", str(args.patch), "--threads", str(args.threads), "--loss", args.loss,
           "--precision", precision]
    if not args.phases:
        cmd.append("--no-phases")
    out = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clean", default=str(REPO.parent / "shared" / "data" / "clean"))
    ap.add_argument("--steps", type=int, default=5, help="timed steps per child (after one untimed)")
    ap.add_argument("--repeats", type=int, default=1, help="children per configuration")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    ap.add_argument("--loss", default="l1+ssim")
    ap.add_argument("--no-phases", dest="phases", action="store_false", help="skip the per-phase split")
    ap.add_argument("--baseline", type=Path, help="another checkout whose JDNet step is timed too")
    ap.add_argument("--also-fp32", action="store_true", help="also time this checkout's step with --precision fp32")
    ap.add_argument("--stack-bf16", action="store_true",
                    help="also time the NHWC stack under bf16 autocast (a reference for mixed precision; not the yardstick)")
    ap.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--json", dest="json_out", type=Path, help="also write the results here")
    ap.add_argument("--child", choices=["jdnet", "stack-nchw", "stack-nhwc", "stack-nhwc-bf16"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = _jdnet_child(args) if args.child == "jdnet" else _stack_child(args, args.child != "stack-nchw", args.child.endswith("bf16"))
        print(json.dumps(res))
        return res

    configs = {"jdnet": ("jdnet", REPO, "auto"), "stack NCHW": ("stack-nchw", REPO, "auto"),
               "stack NHWC": ("stack-nhwc", REPO, "auto")}
    if args.also_fp32:
        configs["jdnet fp32"] = ("jdnet", REPO, "fp32")
    if args.stack_bf16:
        configs["stack NHWC bf16"] = ("stack-nhwc-bf16", REPO, "auto")
    if args.baseline:
        configs["jdnet baseline"] = ("jdnet", args.baseline.resolve(), "auto")
    results: dict[str, list[dict]] = {k: [] for k in configs}
    for rep in range(args.repeats):
        for name, (kind, repo, precision) in configs.items():
            res = _run_child(kind, repo, args, precision)
            results[name].append(res)
            print(f"repeat {rep + 1}: {name:15s} steps {' '.join(f'{t:.2f}' for t in res['times'])} s, "
                  f"peak RSS growth {res['peak_growth_mib']:.0f} MiB", flush=True)
    med = {k: statistics.median(t for r in v for t in r["times"]) for k, v in results.items()}
    stack = min(med["stack NCHW"], med["stack NHWC"])  # float32: the yardstick
    summary = {
        "batch": args.batch, "patch": args.patch, "threads": results["jdnet"][0]["threads"], "loss": args.loss,
        "seconds_per_step": med, "ratio": med["jdnet"] / stack,
        "peak_growth_mib": {k: max(r["peak_growth_mib"] for r in v) for k, v in results.items()},
    }
    print(f"\ntrain step, batch {args.batch} of {args.patch}x{args.patch}, CPU, {summary['threads']} threads, "
          f"median s/step over {args.repeats} x {args.steps} steps:")
    for name, s in med.items():
        print(f"  {name:15s} {s:6.2f} s  {s / stack:5.2f}x stack  peak RSS growth {summary['peak_growth_mib'][name]:6.0f} MiB")
    if args.also_fp32:
        summary["speedup_over_fp32"] = med["jdnet fp32"] / med["jdnet"]
        print(f"  speed-up over --precision fp32: {summary['speedup_over_fp32']:.2f}x")
    if args.baseline:
        summary["speedup_over_baseline"] = med["jdnet baseline"] / med["jdnet"]
        print(f"  speed-up over baseline: {summary['speedup_over_baseline']:.2f}x")
    if args.phases:
        phases = {k: statistics.median(r["phases"][k] for r in results["jdnet"]) for k in PHASES}
        total = sum(phases.values())
        summary["phases"] = phases
        print("  jdnet phases: " + ", ".join(f"{k} {v * 1000:.0f} ms ({100 * v / total:.1f}%)" for k, v in phases.items()))
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
