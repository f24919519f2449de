"""Device and precision selection with clear messages for what a device cannot run."""
from __future__ import annotations

import torch

from ..errors import JDNetError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present else CPU; 'cuda[:N]' is checked to exist."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise JDNetError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise JDNetError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise JDNetError(f"device {name!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    elif dev.type != "cpu":
        raise JDNetError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return dev


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """Map fp32/fp16/bf16 to a dtype the device can run, or raise a one-line error."""
    key = (name or "fp32").strip().lower()
    if key not in PRECISIONS:
        raise JDNetError(f"unknown precision {name!r} (use fp32, fp16 or bf16)")
    dtype = PRECISIONS[key]
    if device.type == "cpu" and dtype == torch.float16:
        raise JDNetError("fp16 is not supported on the CPU; use --precision fp32 or bf16 (or a CUDA device)")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise JDNetError(f"bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    return dtype


def device_name(device: torch.device) -> str:
    """Human-readable device description."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def parse_device_list(spec: str) -> list[str]:
    """'0,1' -> ['cuda:0', 'cuda:1']; names such as 'cpu' or 'cuda:2' pass through."""
    names = [part.strip().lower() for part in spec.split(",") if part.strip()]
    if not names:
        raise JDNetError(f"--devices {spec!r}: give a comma-separated list, e.g. 0,1 or cpu")
    return [f"cuda:{name}" if name.isdigit() else name for name in names]
