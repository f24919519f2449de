"""Flip self-ensemble (``--ensemble``): exact means of flipped passes, every path, clean errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from jdnet_cli.errors import JDNetError
from jdnet_cli.inference.derainer import Derainer

from ..conftest import make_tiny_model, run_cli, write_png


def _reference(model, x: torch.Tensor, flips: list[tuple[int, ...]]) -> torch.Tensor:
    """The ensemble written out by hand: plain model calls on flipped copies, flipped back, averaged."""
    model = model.eval()
    outs = []
    with torch.no_grad():
        for dims in flips:
            xin = x.flip(dims) if dims else x
            y = model(xin.contiguous())
            outs.append(y.flip(dims) if dims else y)
    return torch.stack(outs).mean(0)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.random((37, 53, 3), dtype=np.float32)


@pytest.mark.parametrize(
    "n,flips", [(1, [()]), (2, [(), (-1,)]), (4, [(), (-1,), (-2,), (-2, -1)])]
)
def test_ensemble_is_the_mean_of_flipped_passes(rgb, n, flips):
    model = make_tiny_model()
    out = Derainer(model=model, device="cpu", tile=0, ensemble=n)(rgb)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    ref = _reference(make_tiny_model(), x, flips)[0].permute(1, 2, 0).clamp(0, 1).numpy()
    np.testing.assert_allclose(out, ref, atol=2e-6)


def test_ensemble_changes_the_output_and_one_is_the_plain_model(rgb):
    plain = Derainer(model=make_tiny_model(), device="cpu", tile=0)(rgb)
    one = Derainer(model=make_tiny_model(), device="cpu", tile=0, ensemble=1)(rgb)
    two = Derainer(model=make_tiny_model(), device="cpu", tile=0, ensemble=2)(rgb)
    np.testing.assert_array_equal(plain, one)
    assert np.abs(two - plain).max() > 1e-4  # a random model is far from flip-equivariant


def test_ensemble_with_tiles_matches_whole_image_ensemble():
    rng = np.random.default_rng(5)
    rgb = rng.random((150, 170, 3), dtype=np.float32)
    whole = Derainer(model=make_tiny_model(), device="cpu", tile=0, ensemble=4)(rgb)
    tiled = Derainer(model=make_tiny_model(), device="cpu", tile=64, tile_overlap=32, ensemble=4)(rgb)
    # Tiles see the whole image's position planes; what differs is the feathered borders
    # (measured 8e-6 mean; the ensemble itself moves this model's output by 5.6e-4 on average).
    assert np.abs(tiled - whole).mean() < 5e-5 and np.abs(tiled - whole).max() < 1e-3


def test_video_frames_batch_path_matches_image_path():
    rng = np.random.default_rng(7)
    frames = [(rng.random((24, 40, 3)) * 255).astype(np.uint8) for _ in range(3)]
    d = Derainer(model=make_tiny_model(), device="cpu", tile=0, ensemble=2)
    batched = d.derain_frames(frames)
    single = [d.derain_frames([f])[0] for f in frames]
    for a, b, f in zip(batched, single, frames):
        assert a.dtype == np.uint8 and a.shape == f.shape
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # batch vs one-by-one rounding
    by_hand = _reference(make_tiny_model(), torch.from_numpy(frames[0]).permute(2, 0, 1)[None].float() / 255, [(), (-1,)])
    expect = (by_hand[0].permute(1, 2, 0).clamp(0, 1) * 255).round().numpy().astype(np.uint8)
    assert np.abs(batched[0].astype(int) - expect.astype(int)).max() <= 1


@pytest.mark.parametrize("bad", [0, 3, 8, -1])
def test_unsupported_ensemble_sizes_are_refused(bad):
    with pytest.raises(JDNetError, match=f"ensemble must be one of 1, 2, 4, not {bad}"):
        Derainer(model=make_tiny_model(), device="cpu", ensemble=bad)


def test_cli_ensemble_option(tmp_path, tiny_weights):
    src = tmp_path / "in.png"
    write_png(src, 20, 30, seed=1)
    out1, out2 = tmp_path / "o1.png", tmp_path / "o2.png"
    assert run_cli("derain", str(src), str(out1), "--weights", str(tiny_weights), "--device", "cpu", "-q").returncode == 0
    res = run_cli("derain", str(src), str(out2), "--weights", str(tiny_weights), "--device", "cpu", "-q", "--ensemble", "2")
    assert res.returncode == 0, res.stderr
    a, b = cv2.imread(str(out1)), cv2.imread(str(out2))
    assert a.shape == b.shape == (20, 30, 3) and not np.array_equal(a, b)
    bad = run_cli("derain", str(src), str(tmp_path / "o3.png"), "--weights", str(tiny_weights), "--ensemble", "3")
    assert bad.returncode == 2
    err = bad.stderr.decode().strip()
    assert err.endswith("ensemble must be one of 1, 2, 4, not 3") and len(err.splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "o3.png").exists()
