"""Uniform average ("model soup") of inference weights files fine-tuned from one start: OUT IN1 IN2 [...].

    python scripts/average_weights.py runs/soup.pt runs/stage12c/best.pt runs/stage12d/best.pt

The files must share the architecture. Floating tensors (weights and BatchNorm statistics) are
averaged in fp64 and written in fp16 like jdnet's exports; the lineage is the first file's, plus one
stage naming every averaged file by sha256.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jdnet_cli.errors import JDNetError  # noqa: E402
from jdnet_cli.inference.checkpoint import load_model, save_weights  # noqa: E402
from jdnet_cli.training import file_sha256  # noqa: E402


def average_weights(paths: list[str | Path], dest: str | Path) -> dict:
    """Write the uniform average of ``paths`` to ``dest``; return its metadata."""
    if len(paths) < 2:
        raise JDNetError("give at least two weights files to average")
    loaded = [load_model(p) for p in paths]
    model, meta = loaded[0]
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    first = model.state_dict()
    total = {k: v.double() for k, v in first.items() if v.is_floating_point()}
    for path, (other, _) in zip(paths[1:], loaded[1:]):
        state = other.state_dict()
        if {k: v.shape for k, v in state.items()} != shapes:
            raise JDNetError(f"{path}: not the architecture of {paths[0]}")
        for k in total:
            total[k] += state[k].double()
    # Integer buffers (BatchNorm's batch counters) are the first file's: inference does not read them.
    model.load_state_dict({k: (total[k] / len(paths)).to(v.dtype) if k in total else v for k, v in first.items()})
    sources = [f"{p} (sha256 {file_sha256(p)[:12]})" for p in paths]
    stage = {"init_sha256": meta.get("lineage", [{}])[-1].get("init_sha256"), "steps": 0, "seconds": 0.0,
             "data": "none (weights average)", "recipe": "uniform average of " + ", ".join(sources)}
    meta = {**meta, "weights": "uniform average of " + ", ".join(sources), "averaged": [str(p) for p in paths],
            "lineage": list(meta.get("lineage", [])) + [stage]}
    save_weights(model, dest, meta, half=True)
    return meta


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    try:
        average_weights(sys.argv[2:], sys.argv[1])
    except JDNetError as err:
        sys.exit(f"error: {err}")
    print(f"wrote {sys.argv[1]}")
