"""Training loop: weighted data sources, SSIM/L1/MSE losses, Adam with warm-up and step or cosine decay,
an optional moving average of the weights, warm starts with lineage, exact resume, validation keeping
the best weights, DDP via torchrun."""
from __future__ import annotations

import copy
import io
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .benchmarking.metrics import score_pair, ssim_torch
from .data.datasets import MixedPatches, PairedPatches, SyntheticRainPatches, find_pairs, rank_slice, split_weight
from .data.synthetic_rain import RAIN_STYLES
from .errors import JDNetError
from .inference.checkpoint import build_model, extract_state_dict, read_checkpoint, save_weights
from .inference.cpu_allocator import keep_freed_memory
from .inference.shipped_weights import file_sha256
from .inference.devices import resolve_device
from .io.atomic import atomic_path
from .models import JDNet
from .ops.backend import cpu_mixed_precision
from .ops.fusion_bf16 import bf16_fusions_usable

LOSSES = ("ssim", "l1", "mse", "l1+ssim")
SCHEDULES = ("step", "cosine")
TRAIN_PRECISIONS = ("auto", "fp32")


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in checkpoints and the exported weights' metadata."""

    out_dir: str
    data: str | None = None
    clean: str | None = None
    steps: int = 1000
    batch_size: int = 16
    patch_size: int = 64
    lr: float = 5e-4
    loss: str = "ssim"
    flips: bool = False
    rotations: bool = False
    seed: int = 0
    channels: int = 32
    num_units: int = 32
    save_every: int = 100
    log_every: int = 10
    val: str | list[str] | None = None
    val_every: int = 0
    val_limit: int = 0
    device: str = "auto"
    threads: int = 0
    extra: dict = field(default_factory=dict)
    # More paired folders, each ``DIR`` or ``DIR:WEIGHT``; ``data`` and ``clean`` take the same suffix.
    pairs: list[str] = field(default_factory=list)
    heavy_fraction: float = 0.0
    # Style of the synthetic rain (a RAIN_STYLES name); heavy_fraction of the patches use heavy_style.
    rain_style: str = "light"
    heavy_style: str = "heavy"
    schedule: str = "step"
    warmup: int = 0
    init: str | None = None
    # Decay of an exponential moving average of the weights (and BN statistics); 0 turns it off.
    ema: float = 0.0
    # Paired sets scored at each validation and logged, but not used to choose best.pt.
    watch: list[str] = field(default_factory=list)
    # Also export each validated model (and its average) as OUT/validated/step-N[-ema].pt: neighbouring
    # checks differ by as much as a stage gains, and best.pt keeps only the light dev sets' favourite.
    keep_validated: bool = False
    # "auto": mixed precision where it pays (CUDA: fp16 autocast; CPU: the dense fusions in
    # bfloat16 with float32 sums, on CPUs with AVX512-BF16); "fp32": float32 throughout.
    precision: str = "auto"


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The learning rate after ``step`` steps, as a fraction of ``cfg.lr``."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
    if cfg.schedule == "cosine":
        # Cosine from the end of the warm-up down to 0 at the last step.
        span = max(1, cfg.steps - cfg.warmup)
        t = min(1.0, max(0, step - cfg.warmup) / span)
        return warm * 0.5 * (1.0 + math.cos(math.pi * t))
    milestones = sorted({max(1, int(cfg.steps * 0.6)), max(1, int(cfg.steps * 0.8))})
    return warm * 0.1 ** sum(step >= m for m in milestones)


# The SSIM window: a smaller validation image has no score.
_MIN_SCORED_SIDE = 11


def _load_scored_set(pairs: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (rainy, clean) arrays of a validation or watch set; raise JDNetError naming a pair that cannot be scored."""
    loaded = []
    for pair in pairs:
        rainy, clean = pair.load()
        if min(rainy.shape[:2]) < _MIN_SCORED_SIDE:
            raise JDNetError(f"{pair.rainy}: {rainy.shape[1]}x{rainy.shape[0]} is smaller than the "
                             f"{_MIN_SCORED_SIDE}x{_MIN_SCORED_SIDE} SSIM window; a validation image must be at least that")
        loaded.append((rainy, clean))
    return loaded


def val_sets(cfg: TrainConfig) -> list[str]:
    """The validation folders of a config (one path or several)."""
    if not cfg.val:
        return []
    return [cfg.val] if isinstance(cfg.val, str) else list(cfg.val)


def loss_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss by name; SSIM is maximised, so its loss is -SSIM as in the paper's code."""
    if name == "ssim":
        return lambda out, ref: -ssim_torch(out, ref)
    if name == "l1":
        return F.l1_loss
    if name == "mse":
        return F.mse_loss
    if name == "l1+ssim":
        return lambda out, ref: F.l1_loss(out, ref) + (1.0 - ssim_torch(out, ref))
    raise JDNetError(f"unknown loss {name!r} (choose from {', '.join(LOSSES)})")


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _pick_device(name: str, local_rank: int) -> torch.device:
    # Under torchrun each process takes the GPU of its LOCAL_RANK unless a device index was given.
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        return torch.device(f"cuda:{local_rank}")
    return device


def _rng_state(rng: np.random.Generator, device: torch.device) -> dict:
    state = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(rng: np.random.Generator, state: dict, device: torch.device) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"].cpu())
    random.setstate((3, tuple(state["python"]), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# Fields that may differ on --resume without changing what the run computes.
_RESUME_FREE_FIELDS = {"out_dir", "save_every", "log_every", "val", "val_every", "val_limit", "device", "threads", "extra", "init", "watch", "keep_validated"}


TRAINING_ONEDNN_CACHE_CAPACITY = "1024"


def size_kernel_caches_for_training() -> None:
    """Give oneDNN's kernel caches their default size back for training, unless the user set one.

    Importing jdnet_cli caps them at 64 entries for inference (many image shapes, see
    ``jdnet_cli/__init__.py``). A training step has fixed shapes but needs more: forward,
    backward-data and backward-weights kernels for ~30 convolution shapes. At 64 entries every
    step recompiled them: 3.99 s vs 3.40 s per step (batch 4 of 64x64,
    benchmarks/train_step_speed.py). oneDNN reads the sizes when the process runs its first
    convolution, so this works before any model has run in the process.
    """
    from . import ONEDNN_CACHE_VARIABLES, USER_ONEDNN_CACHE

    for name in ONEDNN_CACHE_VARIABLES:
        if USER_ONEDNN_CACHE[name] is None:
            os.environ[name] = TRAINING_ONEDNN_CACHE_CAPACITY


class Trainer:
    """Owns model, optimiser, schedule, data and logging for one run (one process of a DDP job)."""

    def __init__(self, cfg: TrainConfig, on_log: Callable[[dict], None] | None = None):
        if cfg.loss not in LOSSES:
            raise JDNetError(f"unknown loss {cfg.loss!r} (choose from {', '.join(LOSSES)})")
        if cfg.data is None and cfg.clean is None and not cfg.pairs:
            raise JDNetError("no training data: give a paired dataset (DATA or --pairs) or --clean DIR")
        if cfg.schedule not in SCHEDULES:
            raise JDNetError(f"unknown schedule {cfg.schedule!r} (choose from {', '.join(SCHEDULES)})")
        for style in (cfg.rain_style, cfg.heavy_style):
            if style not in RAIN_STYLES:
                raise JDNetError(f"unknown rain style {style!r} (choose from {', '.join(RAIN_STYLES)})")
        if not 0.0 <= cfg.heavy_fraction <= 1.0:
            raise JDNetError(f"heavy rain fraction {cfg.heavy_fraction} is not in [0, 1]")
        if not 0.0 <= cfg.ema < 1.0:
            raise JDNetError(f"EMA decay {cfg.ema} is not in [0, 1) (0 turns the average off)")
        if cfg.precision not in TRAIN_PRECISIONS:
            raise JDNetError(f"unknown training precision {cfg.precision!r} (choose from {', '.join(TRAIN_PRECISIONS)})")
        self.cfg = cfg
        self.rank, self.world, local_rank = _dist_info()
        self.device = _pick_device(cfg.device, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL collectives use the current device
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        size_kernel_caches_for_training()
        if self.device.type == "cpu":
            # As for inference: a step frees and reallocates hundreds of large activations.
            keep_freed_memory()
        self.out_dir = Path(cfg.out_dir)
        self.on_log = on_log
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        # Each rank draws from its own stream, so ranks see different patches (their own shard).
        self.rng = np.random.default_rng([cfg.seed, self.rank])
        self.data = self._load_data()
        self.lineage: list[dict] = []
        self.init_sha256: str | None = None
        if cfg.init:
            self.model, self.lineage = self._warm_start_model(cfg.init)
        else:
            self.model = JDNet(cfg.channels, cfg.num_units)
        self.model = self.model.to(self.device)
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net: torch.nn.Module = self.model
        # Checkpoints a few dozen steps apart differ by up to ~0.4 dB on the dev sets (batch-4 noise);
        # an average of the recent weights is steadier and usually better than any one of them.
        self.ema_model: JDNet | None = None
        if cfg.ema:
            self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
            self._ema_pairs = list(zip(self.ema_model.state_dict().values(), self.model.state_dict().values()))
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # Fused Adam: one kernel over all parameters instead of ~8 ops per tensor (68 -> 20 ms per
        # step for the 32-unit model's 1,892 tensors on 2 CPU threads).
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, fused=self.device.type in ("cpu", "cuda"))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: lr_factor(step, cfg))
        mixed = cfg.precision == "auto"
        self.amp = mixed and self.device.type == "cuda"
        self.cpu_mixed = mixed and self.device.type == "cpu" and bf16_fusions_usable()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.loss = loss_fn(cfg.loss)
        self.step = 0
        self.elapsed = 0.0
        self.lr_asked: float | None = None  # a --lr that a resume did not use (the run keeps its own)
        # Read (and checked) now, as the training data is: a bad image found at the first validation
        # would end the run there, after its training time.
        self.val_named = {root: _load_scored_set(find_pairs(root)[: cfg.val_limit or None]) for root in val_sets(cfg)}
        self.val_pairs = [p for pairs in self.val_named.values() for p in pairs]
        self.watch_named = {root: _load_scored_set(find_pairs(root)[: cfg.val_limit or None]) for root in cfg.watch}
        self.best_score: float | None = None
        self.best_step = 0

    def _warm_start_model(self, path: str) -> tuple[JDNet, list[dict]]:
        """The model built from an inference weights file, and the lineage recorded in that file."""
        source = Path(path)
        state, meta = extract_state_dict(read_checkpoint(source), str(source))
        model = build_model(state, str(source))
        if (model.channels, model.num_units) != (self.cfg.channels, self.cfg.num_units):
            raise JDNetError(
                f"{source}: init weights are a {model.channels}-channel, {model.num_units}-unit model; "
                f"this run asks for {self.cfg.channels} channels, {self.cfg.num_units} units"
            )
        self.init_sha256 = file_sha256(source)
        lineage = meta.get("lineage")
        if not isinstance(lineage, list):
            # Weights from before lineage was recorded (or the authors' files): one stage from what they say.
            training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
            lineage = [{
                "sha256": self.init_sha256,
                "steps": int(meta.get("steps_done") or meta.get("step") or 0),
                "seconds": float(meta.get("train_seconds") or 0.0),
                "data": _data_summary(training) if training else "unknown",
                "recipe": _recipe_summary(training) if training else "unknown",
            }]
        return model, [dict(stage) for stage in lineage]

    # -- data ---------------------------------------------------------------------------------
    def _load_data(self) -> MixedPatches:
        cfg, sources, names = self.cfg, [], []
        if cfg.clean:
            folder, weight = split_weight(cfg.clean)
            sources.append((SyntheticRainPatches(folder, style=RAIN_STYLES[cfg.rain_style], rank=self.rank, world=self.world,
                                                 heavy_fraction=cfg.heavy_fraction, heavy_style=RAIN_STYLES[cfg.heavy_style]),
                            weight))
            names.append(f"synthetic:{folder}")
        for spec in ([cfg.data] if cfg.data else []) + list(cfg.pairs):
            folder, weight = split_weight(spec)
            sources.append((PairedPatches(rank_slice(find_pairs(folder), self.rank, self.world)), weight))
            names.append(f"pairs:{folder}")
        return MixedPatches(sources, names)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one batch of (rainy, clean) patches as N x 3 x P x P tensors on the device."""
        rainy, clean = zip(
            *(self.data.sample(self.rng, self.cfg.patch_size, self.cfg.flips, self.cfg.rotations) for _ in range(self.cfg.batch_size))
        )

        def to_tensor(arrs: tuple[np.ndarray, ...]) -> torch.Tensor:
            t = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).to(self.device)
            return t.contiguous(memory_format=torch.channels_last) if self.device.type == "cpu" else t.contiguous()

        return to_tensor(rainy), to_tensor(clean)

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        """Everything needed to continue bit-exactly, written atomically by rank 0 (all ranks call it)."""
        rng = _rng_state(self.rng, self.device)
        rank_rngs = [rng]
        if self.world > 1:
            # Every rank draws its own patches, so every rank's RNG state goes into the checkpoint.
            rank_rngs = [None] * self.world
            dist.all_gather_object(rank_rngs, {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in rng.items()})
        if self.rank != 0:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "rng": rank_rngs[0],
            "rank_rngs": rank_rngs,
            "world_size": self.world,
            "config": asdict(self.cfg),
            "best": {"psnr_y": self.best_score, "step": self.best_step},
            "ema": self.ema_model.state_dict() if self.ema_model is not None else None,
            "lineage": {"init_sha256": self.init_sha256, "stages": self.lineage},
        }
        # Serialised in memory first: torch's zip writer reports a full disk as a RuntimeError midway
        # through the file; a plain write raises the OSError that the command reports in one line.
        buf = io.BytesIO()
        torch.save(state, buf)
        with atomic_path(self.checkpoint_path) as tmp:
            tmp.write_bytes(buf.getbuffer())

    def resume(self, path: str | Path | None = None) -> list[str]:
        """Restore model, optimiser, scheduler, step and RNG states; return config fields that differ."""
        path = Path(path) if path else self.checkpoint_path
        if not path.is_file():
            raise JDNetError(f"{path}: no checkpoint to resume from")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            saved_cfg = dict(state["config"])
        except Exception as err:  # a truncated or foreign file can raise nearly anything
            raise JDNetError(f"{path}: not a jdnet training checkpoint ({str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__})") from None
        arch = (saved_cfg.get("channels"), saved_cfg.get("num_units"))
        if arch != (self.cfg.channels, self.cfg.num_units):
            raise JDNetError(
                f"{path}: checkpoint is a {arch[0]}-channel, {arch[1]}-unit model; "
                f"this run asks for {self.cfg.channels} channels, {self.cfg.num_units} units"
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        # The scheduler state just restored holds the run's own peak learning rate, so that is the one
        # used; the config (and so the exported metadata) must say so rather than echo a new --lr.
        saved_lr = saved_cfg.get("lr")
        if saved_lr is not None and saved_lr != self.cfg.lr:
            self.lr_asked, self.cfg.lr = self.cfg.lr, saved_lr
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        if self.ema_model is not None:
            # A run that turns the average on at a resume starts it from the weights it resumes.
            self.ema_model.load_state_dict(state.get("ema") or state["model"])
        best = state.get("best") or {}
        self.best_score, self.best_step = best.get("psnr_y"), int(best.get("step") or 0)
        # The lineage is the run's own: resuming without --init keeps the init it started from.
        lineage = state.get("lineage") or {}
        self.init_sha256, self.lineage = lineage.get("init_sha256"), list(lineage.get("stages") or [])
        rank_rngs = state.get("rank_rngs") or [state["rng"]]
        if len(rank_rngs) == self.world:
            _set_rng_state(self.rng, rank_rngs[self.rank], self.device)
        else:
            # A different world size cannot replay the same streams; derive fresh ones from the step.
            self.rng = np.random.default_rng([self.cfg.seed, self.rank, self.step])
        if self.rank == 0:
            self._trim_log()
        mine, defaults = asdict(self.cfg), asdict(TrainConfig(out_dir=""))
        # A field newer than the checkpoint had its default in the run that wrote it.
        return sorted(k for k in mine if k not in _RESUME_FREE_FIELDS and saved_cfg.get(k, defaults[k]) != mine[k])

    def _trim_log(self) -> None:
        """Drop log records past the checkpoint's step: a run killed after its last checkpoint (a session that
        ended, a power cut) logged steps that the resumed run does again, which would then be there twice."""
        path = self.out_dir / "train_log.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the line a kill cut off
            if isinstance(record, dict) and int(record.get("step", 0)) <= self.step:
                kept.append(line)
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    def _set_aside_old_log(self) -> None:
        """A new run in a folder that holds another run's log (one that left no checkpoint) starts its own log;
        the old one is kept beside it as train_log.previous-N.jsonl instead of having this run's lines appended."""
        path = self.out_dir / "train_log.jsonl"
        if not path.is_file():
            return
        n = 1
        while (self.out_dir / f"train_log.previous-{n}.jsonl").exists():
            n += 1
        path.rename(self.out_dir / f"train_log.previous-{n}.jsonl")

    # -- logging and validation ----------------------------------------------------------------
    def log(self, record: dict) -> None:
        """Append one JSON line to train_log.jsonl and forward it to the progress display."""
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "train_log.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.on_log:
            self.on_log(record)

    @torch.no_grad()
    def validate(self, model: torch.nn.Module | None = None) -> dict:
        """Mean PSNR-Y / SSIM-Y of the model (default: the trained weights) over the --val sets, each set's, and the --watch sets'."""
        model = model or self.model
        was_training = model.training
        model.eval()
        per_set = {root: self._score_set(model, pairs) for root, pairs in self.val_named.items()}
        watched = {root: self._score_set(model, pairs) for root, pairs in self.watch_named.items()}
        model.train(was_training)
        result = {k: float(np.mean([v[k] for v in per_set.values()])) for k in ("psnr_y", "ssim_y")}
        if len(per_set) > 1:
            result["sets"] = per_set
        if watched:
            result["watch"] = watched
        return result

    def _score_set(self, model: torch.nn.Module, pairs: list) -> dict:
        scores = []
        for rainy, clean in pairs:
            x = torch.from_numpy(rainy).permute(2, 0, 1)[None].to(self.device)
            out = model(x).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
            out = np.round(out * 255.0) / 255.0
            scores.append(score_pair(out, clean))
        return {k: float(np.mean([s[k] for s in scores])) for k in ("psnr_y", "ssim_y")}

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def _keep_if_best(self, val: dict, ema_val: dict | None = None) -> bool:
        """Export to OUT/best.pt the better of the weights and their average, if the best so far (mean PSNR-Y)."""
        use_ema = ema_val is not None and ema_val["psnr_y"] > val["psnr_y"]
        score = ema_val if use_ema else val
        if self.best_score is not None and score["psnr_y"] <= self.best_score:
            return False
        self.best_score, self.best_step = score["psnr_y"], self.step
        self.export(self.best_path, extra={"val": score}, use_ema=use_ema)
        return True

    def _keep_validated(self, val: dict, ema_val: dict | None = None) -> None:
        """Export the weights just validated (and their average) to OUT/validated/step-N.pt (and step-N-ema.pt)."""
        folder = self.out_dir / "validated"
        folder.mkdir(exist_ok=True)
        self.export(folder / f"step-{self.step}.pt", extra={"val": val}, use_ema=False)
        if ema_val is not None:
            self.export(folder / f"step-{self.step}-ema.pt", extra={"val": ema_val}, use_ema=True)

    # -- the loop -------------------------------------------------------------------------------
    def forward(self, rainy: torch.Tensor) -> torch.Tensor:
        """The training forward pass in the run's precision (backward follows what it chose)."""
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp), cpu_mixed_precision(self.cpu_mixed):
            return self.net(rainy)

    def train_step(self) -> float:
        """One optimisation step; returns the loss."""
        rainy, clean = self.batch()
        out = self.forward(rainy)
        # The loss runs in the data's precision (fp32, or fp64 in tests) outside autocast: SSIM's
        # variances (E[x^2] - mu^2) cancel badly in fp16.
        loss = self.loss(out.to(clean.dtype), clean)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.step += 1
        if self.ema_model is not None:
            self._update_ema()
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * weights, for parameters and BN statistics alike."""
        floats = [(e, m) for e, m in self._ema_pairs if e.is_floating_point()]
        torch._foreach_lerp_([e for e, _ in floats], [m for _, m in floats], 1.0 - self.cfg.ema)
        for e, m in self._ema_pairs:
            if not e.is_floating_point():
                e.copy_(m)  # BN's num_batches_tracked

    def run(self, should_stop: Callable[[], bool] = lambda: False, on_step: Callable[[int], None] | None = None) -> None:
        """Train until ``cfg.steps`` (or ``should_stop()``), checkpointing every ``save_every`` steps."""
        self.model.train()
        cfg = self.cfg
        if self.step == 0 and self.rank == 0:
            self._set_aside_old_log()
        # it/s counts training steps only, so validation and checkpoint time do not depress it.
        window_s, window_n, losses = 0.0, 0, []
        while self.step < cfg.steps and not should_stop():
            t0 = time.perf_counter()
            losses.append(self.train_step())
            dt = time.perf_counter() - t0
            self.elapsed += dt
            window_s, window_n = window_s + dt, window_n + 1
            if on_step:
                on_step(self.step)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self.log({
                    "step": self.step,
                    "loss": float(np.mean(losses)),
                    "lr": self.opt.param_groups[0]["lr"],
                    "it_s": window_n / max(window_s, 1e-9),
                    "elapsed_s": round(self.elapsed, 2),
                })
                window_s, window_n, losses = 0.0, 0, []
            if cfg.val_every and self.val_pairs and self.step % cfg.val_every == 0 and self.rank == 0:
                val = self.validate()
                record = {"step": self.step, "val": val}
                if self.ema_model is not None:
                    record["ema_val"] = self.validate(self.ema_model)
                record["best"] = self._keep_if_best(val, record.get("ema_val"))
                if cfg.keep_validated:
                    self._keep_validated(val, record.get("ema_val"))
                self.log(record)
            if self.step % cfg.save_every == 0:
                self.save_checkpoint()
        self.save_checkpoint()

    def stage_record(self) -> dict:
        """This run as one stage of the weights' lineage."""
        cfg = asdict(self.cfg)
        return {
            "init_sha256": self.init_sha256,
            "steps": self.step,
            "seconds": round(self.elapsed, 1),
            "data": _data_summary(cfg),
            "recipe": _recipe_summary(cfg),
            "precision": self.precision_used,
            "hardware": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or platform.machine(),
        }

    @property
    def precision_used(self) -> str:
        """What this process trains in (``cfg.precision`` resolved for the device)."""
        if self.amp:
            return "mixed fp16 (CUDA autocast)"
        return "mixed bf16 (CPU: dense fusions, unit convs)" if self.cpu_mixed else "fp32"

    def export(self, dest: str | Path | None = None, half: bool = True, extra: dict | None = None, use_ema: bool | None = None) -> Path:
        """Write inference weights (the average when there is one, unless ``use_ema`` is False) with metadata and lineage (rank 0 only)."""
        dest = Path(dest) if dest else self.out_dir / "jdnet.pt"
        use_ema = self.ema_model is not None if use_ema is None else use_ema
        if self.rank == 0:
            lineage = self.lineage + [self.stage_record()]
            meta = {
                "training": {k: v for k, v in asdict(self.cfg).items() if k not in ("extra",)},
                "steps_done": self.step,
                "train_seconds": round(self.elapsed, 1),
                "hardware": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "world_size": self.world,
                "torch": str(torch.__version__),  # TorchVersion would not load with weights_only=True
                "python": sys.version.split()[0],
                "lineage": lineage,
                "total_steps": sum(int(st.get("steps") or 0) for st in lineage),
                "total_seconds": round(sum(float(st.get("seconds") or 0.0) for st in lineage), 1),
                "weights": f"moving average (decay {self.cfg.ema:g})" if use_ema else "as trained",
                **(extra or {}),
            }
            save_weights(self.ema_model if use_ema else self.model, dest, meta, half=half)
        return dest

    def close(self) -> None:
        """Leave the process group (DDP runs); harmless otherwise."""
        if self.world > 1 and dist.is_initialized():
            # A rank that tears gloo down while a peer is still busy (rank 0 exporting) can abort in
            # gloo's threads ("terminate called without an active exception"): leave together.
            dist.barrier()
            dist.destroy_process_group()


def _data_summary(cfg: dict) -> str:
    """One line naming a run's data sources and their weights."""
    parts = []
    if cfg.get("clean"):
        folder, weight = split_weight(cfg["clean"])
        heavy = cfg.get("heavy_fraction") or 0.0
        style = cfg.get("rain_style") or "light"
        heavy_style = cfg.get("heavy_style") or "heavy"
        parts.append(f"synthetic rain on {folder} (weight {weight:g}" + (f", {style} style" if style != "light" else "")
                     + (f", {heavy_style} {heavy:g})" if heavy else ")"))
    for spec in ([cfg["data"]] if cfg.get("data") else []) + list(cfg.get("pairs") or []):
        folder, weight = split_weight(spec)
        parts.append(f"pairs {folder} (weight {weight:g})")
    return "; ".join(parts) or "unknown"


def _recipe_summary(cfg: dict) -> str:
    """One line with the recipe of a run."""
    schedule = cfg.get("schedule", "step")
    sched = "cosine" if schedule == "cosine" else "x0.1 at 60%/80%"
    warm = f", warm-up {cfg['warmup']}" if cfg.get("warmup") else ""
    warm += f", EMA {cfg['ema']:g}" if cfg.get("ema") else ""
    aug = "+flips" if cfg.get("flips") else ""
    aug += "+rot90" if cfg.get("rotations") else ""
    return (f"batch {cfg.get('batch_size')}, patch {cfg.get('patch_size')}{aug}, loss {cfg.get('loss')}, "
            f"Adam lr {cfg.get('lr'):g} {sched}{warm}, {cfg.get('steps')} planned steps, seed {cfg.get('seed')}")
