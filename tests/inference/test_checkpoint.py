"""Checkpoint compatibility (authors' formats, bare state dicts, ours) and one-line load errors."""
from __future__ import annotations

import pickle

import pytest
import torch

from jdnet_cli.errors import JDNetError
from jdnet_cli.inference.checkpoint import load_model, save_weights

from ..conftest import make_tiny_model


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layout", ["authors", "authors_module", "bare", "bare_module", "ours"])
def test_formats_load_with_architecture_from_tensors(tmp_path, layout):
    model = make_tiny_model(channels=8, units=3)
    state = model.state_dict()
    path = tmp_path / "w.pt"
    if layout == "ours":
        save_weights(model, path, {"steps": 5})
    else:
        if layout.endswith("module"):
            state = {"module." + k: v for k, v in state.items()}
        obj = {"net": state, "clock_net": 123, "opt_net": {}} if layout.startswith("authors") else state
        torch.save(obj, path)
    loaded, meta = load_model(path)
    assert (loaded.channels, loaded.num_units) == (8, 3)
    assert _same(loaded, model)
    if layout == "ours":
        assert meta["steps"] == 5 and meta["arch"] == {"channels": 8, "num_units": 3}
    if layout.startswith("authors"):
        assert meta["step"] == 123


def test_half_precision_export_roundtrip(tmp_path):
    model = make_tiny_model()
    save_weights(model, tmp_path / "h.pt", half=True)
    loaded, _ = load_model(tmp_path / "h.pt")
    for k, v in loaded.state_dict().items():
        if v.is_floating_point():
            assert v.dtype == torch.float32
            assert torch.allclose(v, model.state_dict()[k], atol=1e-2, rtol=1e-3)


def test_missing_file(tmp_path):
    with pytest.raises(JDNetError, match="not found"):
        load_model(tmp_path / "nope.pt")


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_text("hello")
    with pytest.raises(JDNetError, match="junk.pt: not a PyTorch weights file$"):
        load_model(p)
    png = tmp_path / "photo.png"  # an image given to -w by mistake
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(JDNetError, match="photo.png: not a PyTorch weights file$"):
        load_model(png)
    cut = tmp_path / "cut.pt"  # a zip archive that ends early
    torch.save({"w": torch.zeros(4)}, cut)
    cut.write_bytes(cut.read_bytes()[:200])
    with pytest.raises(JDNetError, match="cut.pt: not a loadable checkpoint") as err:
        load_model(cut)
    assert "\n" not in str(err.value)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"net": Evil()}, fh)
    with pytest.raises(JDNetError, match=r"not a loadable checkpoint \(it holds Python objects besides tensors, "
                                         r"which jdnet does not load \(weights_only\)\)$"):
        load_model(p)


def test_wrong_shapes(tmp_path):
    state = make_tiny_model().state_dict()
    state["derain_net.units.0.scn.conv3.weight"] = torch.zeros(8, 8, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(JDNetError, match="do not fit") as err:
        load_model(tmp_path / "bad.pt")
    assert "\n" not in str(err.value)


def test_not_jdnet_tensors(tmp_path):
    torch.save({"foo": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(JDNetError, match="not a JDNet checkpoint"):
        load_model(tmp_path / "other.pt")
