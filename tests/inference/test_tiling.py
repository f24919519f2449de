"""Tiled inference: grid, feather weights, tiled == whole, position step, OOM halving, CLI options."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from jdnet_cli.errors import JDNetError
from jdnet_cli.inference import tiling
from jdnet_cli.inference.derainer import Derainer
from jdnet_cli.inference.memory_budget import bytes_per_pixel, choose_batch, choose_tile, parse_byte_size
from jdnet_cli.inference.tiling import normalise_tile, plan_axis, plan_tiles, run_halving_on_oom, run_tiled

from ..conftest import make_tiny_model, run_cli, shared_path, write_png


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


# --- grid -----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [33, 100, 129, 240, 481, 1000])
@pytest.mark.parametrize("tile,overlap", [(64, 16), (128, 32), (128, 64), (96, 40)])
def test_axis_spans_are_aligned_cover_and_overlap(length, tile, overlap):
    tile, overlap = normalise_tile(tile, overlap)
    spans = plan_axis(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for start, end in spans:
        assert start % 16 == 0
        assert 0 < end - start <= tile
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s0 < s1 and e0 < e1
        assert e0 - s1 >= overlap  # at least the requested overlap everywhere
    if length > tile:
        assert all(end - start > tile - 16 for start, end in spans)  # no sliver tiles


def test_axis_plan_exact_values():
    assert plan_axis(100, 128, 32) == [(0, 100)]
    assert plan_axis(240, 128, 32) == [(0, 128), (64, 192), (112, 240)]
    assert plan_axis(321, 128, 32) == [(0, 128), (80, 208), (144, 272), (208, 321)]
    assert plan_axis(481, 128, 32) == [(0, 128), (96, 224), (192, 320), (288, 416), (368, 481)]
    assert normalise_tile(100, 20) == (96, 32)  # tile down to the grid, stride 64 -> overlap 32
    with pytest.raises(JDNetError, match="overlap 128 must be"):
        normalise_tile(128, 128)
    with pytest.raises(JDNetError, match="too small"):
        normalise_tile(16, 0)


@pytest.mark.parametrize("length,tile,overlap", [(240, 128, 32), (481, 64, 16), (1000, 256, 64), (200, 96, 32)])
def test_feather_weights_are_a_smooth_partition_of_unity(length, tile, overlap):
    spans = plan_axis(length, tile, overlap)
    weights = tiling.axis_weights(spans, length, overlap)
    total = torch.zeros(length, dtype=torch.float64)
    for (start, end), w in zip(spans, weights):
        assert w.shape == (end - start,) and float(w.min()) >= 0 and float(w.max()) <= 1
        total[start:end] += w.double()
    assert torch.allclose(total, torch.ones(length, dtype=torch.float64), atol=1e-6)
    # No hard cut: from one pixel to the next a tile's weight changes by far less than a step.
    for w in weights:
        assert float(w.diff().abs().max()) < 0.25
    # Inner edges carry no weight (they are the least reliable pixels); image edges carry full weight.
    assert float(weights[0][0]) == 1.0 and float(weights[-1][-1]) == 1.0
    assert float(weights[0][-1]) == 0.0 and float(weights[1][0]) == 0.0


def test_ramp_is_symmetric_and_smooth():
    r = tiling.ramp(32)
    assert torch.allclose(r + r.flip(0), torch.ones(32, dtype=torch.float64))
    assert float(r[0]) == 0.0 and float(r[-1]) == 1.0 and bool((r.diff() >= 0).all())


def test_2d_weights_sum_to_one_through_run_tiled():
    """Running the identity over the tiles must give back the image exactly (partition of unity)."""
    img = torch.rand(1, 3, 150, 223, generator=torch.Generator().manual_seed(0))
    calls = []

    def identity(batch, origin, full):
        calls.append((tuple(batch.shape), origin, full))
        return batch.clone()

    grid = plan_tiles(150, 223, *normalise_tile(64, 16))
    out = run_tiled(img, identity, grid, batch_size=4)
    assert torch.allclose(out, img, atol=1e-6)
    assert sum(shape[0] for shape, _, _ in calls) == len(grid) == 3 * 5
    assert all(full == (150, 223) for _, _, full in calls)
    assert max(shape[0] for shape, _, _ in calls) == 4  # same-size tiles were batched


# --- tiled == whole for a real network --------------------------------------------------------


@pytest.mark.parametrize("size", [(77, 101), (130, 97)])
def test_tiled_matches_whole_for_tiny_model_on_odd_sizes(size):
    derainer = Derainer(model=make_tiny_model(), device="cpu", tile=0)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(size[0]))
    whole = derainer._run_image(x)
    tiled = Derainer(model=make_tiny_model(), device="cpu", tile=48, tile_overlap=32)._run_image(x)
    assert tiled.shape == whole.shape
    assert psnr(tiled, whole) > 50
    # The exact same network without overlap (hard cuts) is measurably worse: the blend matters.
    hard = Derainer(model=make_tiny_model(), device="cpu", tile=48, tile_overlap=0)._run_image(x)
    assert psnr(hard, whole) < psnr(tiled, whole)


def test_tile_position_planes_are_the_whole_image_planes_cropped():
    from jdnet_cli.ops import position_planes

    whole = position_planes(97, 130)
    tile = position_planes(48, 64, origin=(32, 48), full_size=(97, 130))
    assert torch.equal(tile, whole[..., 32:80, 48:112])
    assert not torch.allclose(position_planes(48, 64), tile)  # the tile's own step differs


def test_tiles_get_the_whole_image_position_step(monkeypatch):
    """The step changes the output, the origin does not, and the tiled path passes the whole size."""
    model = make_tiny_model(seed=3)
    with torch.no_grad():  # make the position term matter
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.in_channels == 2 and m.out_channels == 2 and m.kernel_size == (1, 1):
                m.weight.mul_(40.0)
    derainer = Derainer(model=model, device="cpu", tile=0)
    crop = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    placed = derainer.run_tensor(crop, origin=(16, 32), full_size=(64, 96))
    own_step = derainer.run_tensor(crop)  # the tile's own step 2/(47), not 2/95
    shifted = derainer.run_tensor(crop, origin=(0, 0), full_size=(64, 96))
    # Only differences of positions enter the attention, so the origin changes nothing beyond
    # rounding (which is why a batch of tiles can share the first tile's origin) but the step does.
    origin_effect = float((shifted - placed).abs().max())
    step_effect = float((own_step - placed).abs().max())
    assert origin_effect < 1e-6 and step_effect > 20 * max(origin_effect, 1e-8)
    seen = []
    real = derainer.run_tensor
    monkeypatch.setattr(derainer, "run_tensor", lambda t, origin, full_size: seen.append(full_size) or real(t, origin, full_size))
    derainer.tile, derainer.tile_overlap = 32, 16
    derainer._run_image(torch.rand(1, 3, 40, 70, generator=torch.Generator().manual_seed(2)))
    assert len(seen) >= 1 and set(seen) == {(40, 70)}


# --- OOM halving ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        lambda: RuntimeError("CUDA error: out of memory"),
    ],
)
def test_oom_halves_the_tile_and_retries(error):
    tried, remembered = [], []

    def attempt(tile):
        tried.append(tile)
        if tile == 0 or tile > 200:
            raise error()
        return f"done at {tile}"

    assert run_halving_on_oom(attempt, 0, 1000, on_retry=remembered.append) == "done at 112"
    assert tried == [0, 496, 240, 112] and remembered == [496, 240, 112]


def test_oom_at_min_tile_is_a_clean_error_and_other_errors_pass_through():
    def always_oom(tile):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(JDNetError, match="photo.png: out of memory even with 32x32 tiles"):
        run_halving_on_oom(always_oom, 64, 4000, name="photo.png")

    def broken(tile):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_halving_on_oom(broken, 0, 100)


def test_derainer_recovers_from_oom_and_remembers_the_smaller_tile(monkeypatch):
    derainer = Derainer(model=make_tiny_model(), device="cpu", tile=0)
    real = derainer.run_tensor
    sizes = []

    def fake_run_tensor(x, origin=(0, 0), full_size=None):
        sizes.append(tuple(x.shape[-2:]))
        if x.shape[-2] * x.shape[-1] > 64 * 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return real(x, origin=origin, full_size=full_size)

    monkeypatch.setattr(derainer, "run_tensor", fake_run_tensor)
    x = torch.rand(1, 3, 100, 130, generator=torch.Generator().manual_seed(2))
    out = derainer._run_image(x)
    assert sizes[0] == (100, 130) and sizes[1] == (64, 64)  # whole failed, then 130 // 2 -> 64
    assert derainer.plan_tile(100, 130) == 64  # the next image starts at the tile that worked
    whole = Derainer(model=make_tiny_model(), device="cpu", tile=0)._run_image(x)
    assert psnr(out, whole) > 45


# --- auto tile and memory budget ---------------------------------------------------------------


def test_parse_size_and_auto_tile_choice():
    assert parse_byte_size("4GB") == 4 * 10**9 and parse_byte_size("512MiB") == 2**29 and parse_byte_size("1.5g") == 1_500_000_000
    for bad in ("lots", "4XB", "0", "-1GB"):
        with pytest.raises(JDNetError, match="memory size"):
            parse_byte_size(bad)
    per_px = bytes_per_pixel(32, 32)
    assert 4224 < per_px < 8000  # the 33 x 32 fp32 dense buffer plus the working set
    assert bytes_per_pixel(32, 32, torch.float16) < per_px * 0.6
    assert choose_tile(321, 481, per_px, 10**10) == 0  # fits whole
    tile = choose_tile(4000, 6000, per_px, 10**9)
    assert tile % 16 == 0 and tile * tile * per_px <= 10**9 < (tile + 16) ** 2 * per_px
    assert choose_batch(128 * 128, per_px, 10**9, tiles=40) == min(16, 10**9 // (128 * 128 * per_px))
    assert choose_batch(512 * 512, per_px, 10**6, tiles=40) == 1


def test_derainer_auto_tiles_only_when_the_budget_requires():
    d = Derainer(model=make_tiny_model(), device="cpu", max_memory="1GB")
    assert d.plan_tile(321, 481) == 0
    small = Derainer(model=make_tiny_model(), device="cpu", max_memory=64 * 64 * d.bytes_per_pixel)
    assert small.plan_tile(321, 481) == 64
    assert Derainer(model=make_tiny_model(), device="cpu", tile=128).plan_tile(100, 120) == 0
    with pytest.raises(JDNetError, match="tile must be auto, 0 or a size"):
        Derainer(model=make_tiny_model(), device="cpu", tile="big")
    with pytest.raises(JDNetError, match="overlap 64 must be"):
        Derainer(model=make_tiny_model(), device="cpu", tile=64, tile_overlap=64)


def test_a_budget_that_only_fits_tiles_no_wider_than_the_overlap_still_derains():
    # --max-memory small enough for 32-px tiles with the default 32-px overlap (and 64 with --tile-overlap 64).
    x = torch.rand(1, 3, 100, 90)
    for overlap in (32, 64):
        tight = Derainer(model=make_tiny_model(), device="cpu", tile_overlap=overlap, max_memory=1)
        assert tight.plan_tile(100, 90) == 32
        got = tight._run_image(x)
        # The same as asking for 32-px tiles blended over 16 px.
        want = Derainer(model=make_tiny_model(), device="cpu", tile=32, tile_overlap=16)._run_image(x)
        assert got.shape == x.shape and torch.allclose(got, want, atol=1e-5)  # batched tiles round differently


# --- acceptance: tile 128 vs whole on Rain12 ---------------------------------------------------


def _rain12_tensor(crop=None) -> torch.Tensor:
    from jdnet_cli.io.images import read_image

    rgb = read_image(shared_path("data", "rain12", "rain", "rain-001.png")).rgb
    if crop is not None:
        rgb = rgb[crop]
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].contiguous()


def test_full_model_random_weights_tile_128_vs_whole_on_rain12_crop():
    x = _rain12_tensor((slice(40, 136), slice(100, 228)))  # 96 x 128
    model = make_tiny_model(channels=32, units=32)
    whole = Derainer(model=model, device="cpu", tile=0)._run_image(x)
    tiled = Derainer(model=model, device="cpu", tile=64, tile_overlap=32)._run_image(x)
    assert psnr(tiled, whole) >= 45


def test_shipped_weights_tile_128_vs_whole_on_rain12():
    from jdnet_cli.inference.shipped_weights import default_weights_path

    try:
        weights = default_weights_path()
    except JDNetError:
        pytest.skip("no shipped weights in this checkout")
    x = _rain12_tensor()
    whole = Derainer(weights=weights, device="cpu", tile=0)._run_image(x)
    tiled = Derainer(weights=weights, device="cpu", tile=128, tile_overlap=32)._run_image(x)
    assert psnr(tiled, whole) >= 45


# --- CLI --------------------------------------------------------------------------------------


def test_cli_tile_options(tmp_path, tiny_weights):
    src = tmp_path / "a.png"
    write_png(src, 70, 90, seed=5)
    common = ["--weights", str(tiny_weights), "--device", "cpu"]
    res = run_cli("derain", str(src), str(tmp_path / "t.png"), "--tile", "48", "--tile-overlap", "16", *common)
    assert res.returncode == 0, res.stderr.decode()
    res = run_cli("derain", str(src), str(tmp_path / "w.png"), "--tile", "0", "--max-memory", "2GB", *common)
    assert res.returncode == 0, res.stderr.decode()
    tiled, whole = cv2.imread(str(tmp_path / "t.png")), cv2.imread(str(tmp_path / "w.png"))
    d = Derainer(weights=tiny_weights, device="cpu", tile=48, tile_overlap=16)
    from jdnet_cli.io.images import read_image

    expected = np.round(d(read_image(src).rgb) * 255).astype(np.uint8)[..., ::-1]
    assert np.array_equal(tiled, expected)
    assert tiled.shape == whole.shape == (70, 90, 3) and not np.array_equal(tiled, whole)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 8
    assert res.stderr.decode().count("\n") == 1  # only the summary line: no per-tile chatter
    for args, message in [
        (["--tile", "huge"], "tile must be auto, 0 or a size"),
        (["--tile", "8"], "tile size 8 is too small"),
        (["--tile", "64", "--tile-overlap", "64"], "overlap 64 must be"),
        (["--max-memory", "lots"], "cannot read memory size 'lots'"),
    ]:
        res = run_cli("derain", str(src), str(tmp_path / "x.png"), *args, *common)
        assert res.returncode == 2 and message in res.stderr.decode() and b"Traceback" not in res.stderr, (args, res.stderr)


def test_the_library_refuses_integer_empty_and_non_finite_images_instead_of_returning_white(tiny_weights):
    derainer = Derainer(weights=tiny_weights, device="cpu")
    with pytest.raises(ValueError, match=r"^expected floats in \[0, 1\], got uint8 \(divide 8-bit images by 255"):
        derainer(np.zeros((8, 8, 3), np.uint8))  # was run as 0..255: 99% of the output clipped to 1.0
    with pytest.raises(ValueError, match=r"^expected H x W x 3 RGB, got shape \(0, 8, 3\)$"):
        derainer(np.zeros((0, 8, 3), np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        derainer(np.full((8, 8, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"same-size H x W x 3 uint8 or uint16 frames, got uint16"):
        derainer.derain_frames([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint16)])


def test_a_small_tile_with_the_default_overlap_blends_over_half_the_tile(rng=np.random.default_rng(3)):
    model = make_tiny_model()
    rgb = rng.random((40, 72, 3), dtype=np.float32)
    small = Derainer(model=model, device="cpu", tile=32)(rgb)  # was: "overlap 32 ... smaller than the tile (32)"
    assert np.array_equal(small, Derainer(model=model, device="cpu", tile=32, tile_overlap=16)(rgb))
    with pytest.raises(JDNetError, match=r"tile overlap 32 must be at least 0 and smaller than the tile \(32\)"):
        Derainer(model=model, device="cpu", tile=32, tile_overlap=32)  # one the user chose is still checked
