"""Loading and saving JDNet weights: the authors' checkpoints, bare state dicts, and our own format.

Our format is ``{"format": "jdnet", "version": 1, "arch": {...}, "state_dict": ..., "meta": {...}}``.
Everything is loaded with ``weights_only=True``: a checkpoint can never run code.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import JDNetError
from ..io.atomic import atomic_path
from ..models import JDNet

FORMAT_NAME = "jdnet"
FORMAT_VERSION = 1
_UNIT_KEY = re.compile(r"^derain_net\.units\.(\d+)\.")


def read_checkpoint(path: Path) -> Any:
    """Load a checkpoint file safely (weights_only), with one-line errors for missing or foreign files."""
    if not path.exists():
        raise JDNetError(f"{path}: weights file not found")
    if not path.is_file():
        raise JDNetError(f"{path}: weights path is not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise JDNetError(f"{path}: cannot read ({err.strerror or err})") from None
    # torch.save writes a zip archive; files from before torch 1.6 are a bare pickle (protocol byte 0x80).
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise JDNetError(f"{path}: not a PyTorch weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # garbage bytes can raise nearly anything from the unpickler
        text = str(err).strip()
        if "Weights only load failed" in text:
            reason = "it holds Python objects besides tensors, which jdnet does not load (weights_only)"
        else:
            reason = (text.splitlines()[0] if text else type(err).__name__)[:160]
        raise JDNetError(f"{path}: not a loadable checkpoint ({reason})") from None


def extract_state_dict(obj: Any, source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    """Return (state_dict with canonical names, metadata) from any supported checkpoint layout."""
    meta: dict = {}
    if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
        state, meta = obj.get("state_dict"), dict(obj.get("meta") or {})
        meta["arch"] = obj.get("arch")
    elif isinstance(obj, dict) and "net" in obj and isinstance(obj["net"], dict):
        state = obj["net"]
        if "clock_net" in obj:
            meta["step"] = obj["clock_net"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict) and "step" in obj:
        state = obj["model"]  # a training checkpoint of ours
        meta["step"] = obj["step"]
    else:
        state = obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise JDNetError(f"{source}: not a JDNet checkpoint (no tensor state dict found)")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    return state, meta


def infer_arch(state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, int]:
    """Read channels and number of units from the tensors themselves."""
    enter = state.get("enterBlock.0.weight")
    if enter is None or enter.dim() != 4:
        raise JDNetError(f"{source}: not a JDNet checkpoint (missing enterBlock.0.weight)")
    units = {int(m.group(1)) for k in state for m in [_UNIT_KEY.match(k)] if m}
    if not units:
        raise JDNetError(f"{source}: not a JDNet checkpoint (no joint units)")
    return {"channels": int(enter.shape[0]), "num_units": max(units) + 1}


def build_model(state: dict[str, torch.Tensor], source: str = "checkpoint") -> JDNet:
    """Instantiate a JDNet of the checkpoint's architecture and load the weights strictly."""
    arch = infer_arch(state, source)
    model = JDNet(**arch)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise JDNetError(f"{source}: weights do not fit JDNet({arch['channels']} ch, {arch['num_units']} units): {detail[:200]}") from None
    return model


def load_model(path: str | Path) -> tuple[JDNet, dict]:
    """Load any supported checkpoint file into an eval-mode JDNet on the CPU; return (model, meta)."""
    path = Path(path)
    state, meta = extract_state_dict(read_checkpoint(path), str(path))
    model = build_model(state, str(path))
    return model.eval(), meta


def save_weights(model: JDNet, dest: str | Path, meta: dict | None = None, half: bool = False) -> None:
    """Write an inference weights file in the project format, atomically."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "arch": {"channels": model.channels, "num_units": model.num_units},
        "state_dict": state,
        "meta": meta or {},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(buf.getvalue())
