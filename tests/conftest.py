"""Shared fixtures: ../shared data (skip when absent), tiny weight files, CLI runners."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("JDNET_SHARED", REPO.parent / "shared"))

# Triton reads TRITON_INTERPRET once, when torch first imports it (torch._dynamo does, which the
# training tests load), and its own jit'd library functions (tl.max, tl.sum...) keep that mode; set later, only
# by the interpreter tests' fixture, their kernels failed whenever a training test ran first. On a
# machine without CUDA the interpreter is the only way Triton runs, and the library's dispatch only
# asks for Triton with CUDA tensors, so setting it for the whole run changes nothing else. With CUDA,
# tests/ops/test_attention_triton.py runs its interpreter tests in a child process.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def shared_path(*parts: str) -> Path:
    """Path under ../shared, skipping the test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("JDNET_REQUIRE_SHARED") == "1":
            # CI has ../shared: a test that would skip there is a broken path, not a missing folder.
            pytest.fail(f"{path} not available (JDNET_REQUIRE_SHARED=1)")
        pytest.skip(f"{path} not available")
    return path


def make_tiny_model(channels: int = 8, units: int = 2, seed: int = 0):
    """A small JDNet with random but fixed weights and non-trivial BN statistics."""
    from jdnet_cli.models import JDNet

    torch.manual_seed(seed)
    model = JDNet(channels, units)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    # Keep the rain layer small so outputs stay in a sensible range.
    model.exitBlock[0].weight.data.mul_(0.1)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A project-format weights file of a 2-unit, 8-channel model."""
    from jdnet_cli.inference.checkpoint import save_weights

    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_weights(make_tiny_model(), path, {"note": "test"})
    return path


@pytest.fixture(scope="session")
def paired(tmp_path_factory) -> Path:
    """Three 24x28 rain/norain training pairs."""
    root = tmp_path_factory.mktemp("paired")
    for i in range(3):
        write_png(root / "norain" / f"norain-{i}.png", 24, 28, seed=i)
        write_png(root / "rain" / f"rain-{i}.png", 24, 28, seed=10 + i)
    return root


def write_png(path: Path, h: int, w: int, seed: int = 0, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    """Write a random image with OpenCV and return the array written (BGR order)."""
    import cv2

    rng = np.random.default_rng(seed)
    hi = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if channels == 1 else (h, w, channels)
    arr = rng.integers(0, hi + 1, size=shape, dtype=np.int64).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)
    return arr


def run_cli(*args: str, cwd: Path | None = None, input: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m jdnet_cli`` as a user would, capturing bytes."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "jdnet_cli", *args], cwd=cwd, input=input, capture_output=True, env=full_env, timeout=600
    )


# Runs 24 input shapes through a 32-channel model, then the first shape again (after "AGAIN"), with
# ONEDNN_VERBOSE=2 so that a kernel the cache dropped shows as create:cache_miss. ``SETUP`` runs first.
ONEDNN_CACHE_PROBE = """
import ctypes, torch, jdnet_cli
from jdnet_cli.inference.derainer import Derainer
from jdnet_cli.models import JDNet
SETUP
torch.set_num_threads(1)
torch.manual_seed(0)
d = Derainer(model=JDNet(32, 1), device="cpu", tile=0)  # 32 channels: convs that go to oneDNN
shapes = [(40 + 2 * k, 56) for k in range(24)]
for shape in shapes:
    d.run_tensor(torch.rand(1, 3, *shape))
ctypes.CDLL(None).fflush(None)  # oneDNN's verbose lines sit in C's stdout buffer
print("AGAIN", flush=True)
d.run_tensor(torch.rand(1, 3, *shapes[0]))
"""


def onednn_cache_misses(user_value: str | None, setup: str = "") -> tuple[bool, bool]:
    """(kernels compiled in the first pass, kernels compiled again for the first shape) in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    if user_value:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = env["LRU_CACHE_CAPACITY"] = user_value
    env.update(ONEDNN_VERBOSE="2", PYTHONPATH=str(REPO))
    code = ONEDNN_CACHE_PROBE.replace("SETUP", setup)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    first, _, again = res.stdout.partition("AGAIN")
    return "create:cache_miss" in first, "create:cache_miss" in again
