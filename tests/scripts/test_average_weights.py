"""scripts/average_weights.py: the uniform average of weights files, with its lineage."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from jdnet_cli.errors import JDNetError
from jdnet_cli.inference.checkpoint import load_model, save_weights
from jdnet_cli.models import JDNet

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "average_weights.py"


def _script():
    spec = importlib.util.spec_from_file_location("average_weights", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _weights(path: Path, seed: int, channels: int = 4) -> dict:
    torch.manual_seed(seed)
    model = JDNet(channels=channels, num_units=1)
    for m in model.modules():  # non-trivial BatchNorm statistics, which are averaged too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    save_weights(model, path, {"lineage": [{"init_sha256": "abc", "steps": 5}]}, half=True)
    return load_model(path)[0].state_dict()


def test_average_is_the_mean_of_every_tensor_and_names_its_sources(tmp_path):
    a, b = _weights(tmp_path / "a.pt", 0), _weights(tmp_path / "b.pt", 1)
    meta = _script().average_weights([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "soup.pt")
    soup, saved = load_model(tmp_path / "soup.pt")
    for k, v in soup.state_dict().items():
        if v.is_floating_point():
            # Written in fp16: the mean of two fp16 values is within one fp16 step of the stored one.
            torch.testing.assert_close(v, ((a[k] + b[k]) / 2).half().float(), rtol=1e-3, atol=1e-3)
        else:
            assert torch.equal(v, a[k])
    assert saved["averaged"] == [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    assert [s["steps"] for s in saved["lineage"]] == [5, 0] and "uniform average of" in saved["lineage"][-1]["recipe"]
    assert saved["weights"] == meta["weights"]


def test_average_refuses_one_file_and_other_architectures(tmp_path):
    _weights(tmp_path / "a.pt", 0)
    _weights(tmp_path / "wide.pt", 1, channels=6)
    mod = _script()
    with pytest.raises(JDNetError, match="at least two"):
        mod.average_weights([tmp_path / "a.pt"], tmp_path / "x.pt")
    with pytest.raises(JDNetError, match="wide.pt: not the architecture of"):
        mod.average_weights([tmp_path / "a.pt", tmp_path / "wide.pt"], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
