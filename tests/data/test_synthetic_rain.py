"""The synthetic rain renderer and the ``jdnet rain`` command that writes a paired dataset with it."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from jdnet_cli.data.datasets import find_pairs
from jdnet_cli.data.synthetic_rain import RainStyle, rain_layer, render_rain

from ..conftest import run_cli, write_png


def _photo(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth colour image in [0, 1] with bright and dark areas."""
    rng = np.random.default_rng(seed)
    small = rng.random((6, 6, 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _gradient_energy(diff: np.ndarray) -> tuple[float, float]:
    """(energy across columns, energy across rows) of a H x W map: vertical streaks give the first."""
    return float((np.diff(diff, axis=1) ** 2).sum()), float((np.diff(diff, axis=0) ** 2).sum())


def test_same_seed_same_rain_other_seed_other_rain():
    img = _photo()
    a = render_rain(img, np.random.default_rng(5))
    b = render_rain(img, np.random.default_rng(5))
    c = render_rain(img, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


@pytest.mark.parametrize("fill", [None, 0.0, 1.0])
def test_output_stays_in_range_and_keeps_shape(fill):
    img = _photo(64, 80) if fill is None else np.full((64, 80, 3), fill, np.float32)
    heavy = RainStyle(layers=(3, 4), density=(0.01, 0.02), brightness=(0.8, 1.0), haze_prob=1.0, haze=(0.1, 0.2))
    for seed in range(5):
        out = render_rain(img, np.random.default_rng(seed), heavy)
        assert out.shape == img.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_rain_changes_the_image():
    img = _photo()
    for seed in range(10):
        out = render_rain(img, np.random.default_rng(seed))
        diff = np.abs(out - img).max(axis=2)
        assert (diff > 0.05).mean() > 0.005, seed  # visible streak pixels in every sample
    np.testing.assert_array_equal(img, _photo())  # the input is not modified


def test_without_haze_rain_only_brightens():
    img = _photo()
    out = render_rain(img, np.random.default_rng(0), RainStyle(haze_prob=0.0))
    assert np.all(out >= img - 1e-6)


def test_streaks_are_roughly_vertical():
    img = np.full((96, 96, 3), 0.3, np.float32)
    ratios = []
    for seed in range(20):
        diff = (render_rain(img, np.random.default_rng(seed)) - img).mean(axis=2)
        across, along = _gradient_energy(diff)
        ratios.append(across / along)
    assert min(ratios) > 1.5  # every sample within ~35 degrees of vertical
    assert np.median(ratios) > 5


def test_layer_angle_convention():
    style = RainStyle(density=(0.005, 0.005))
    across0, along0 = _gradient_energy(rain_layer(96, 96, np.random.default_rng(0), style, 0.0))
    across90, along90 = _gradient_energy(rain_layer(96, 96, np.random.default_rng(0), style, 90.0))
    assert across0 > 10 * along0  # 0 degrees: vertical
    assert along90 > 10 * across90  # 90 degrees: horizontal


# -- jdnet rain ---------------------------------------------------------------------------------------
def test_rain_command_writes_a_paired_dataset(tmp_path):
    clean = tmp_path / "clean"
    first = write_png(clean / "a.png", 40, 48, seed=1)
    write_png(clean / "b.jpg", 30, 36, seed=2)
    (clean / "notes.txt").write_text("not an image")
    res = run_cli("rain", str(clean), str(tmp_path / "out"), "--seed", "7")
    assert res.returncode == 0, res.stderr.decode()
    assert f"2 pairs written to {tmp_path / 'out'}/rain and" in res.stderr.decode()
    for sub in ("rain", "norain"):
        assert sorted(p.name for p in (tmp_path / "out" / sub).iterdir()) == ["a.png", "b.png"]
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out" / "norain" / "a.png")), first)  # clean copied exactly
    rainy = cv2.imread(str(tmp_path / "out" / "rain" / "a.png"))
    assert rainy.shape == first.shape and np.abs(rainy.astype(int) - first).max() > 20
    assert [(p.rainy.name, p.clean.name) for p in find_pairs(tmp_path / "out")] == [("a.png", "a.png"), ("b.png", "b.png")]


def test_rain_command_is_deterministic_and_refuses_to_overwrite_inputs(tmp_path):
    from typer.testing import CliRunner

    from jdnet_cli.cli.app import app

    write_png(tmp_path / "clean" / "a.png", 40, 48, seed=1)
    runner = CliRunner()
    for out, seed in (("o1", "3"), ("o2", "3"), ("o3", "4")):
        assert runner.invoke(app, ["rain", str(tmp_path / "clean"), str(tmp_path / out), "--seed", seed]).exit_code == 0
    read = lambda out: (tmp_path / out / "rain" / "a.png").read_bytes()  # noqa: E731
    assert read("o1") == read("o2") and read("o1") != read("o3")

    res = runner.invoke(app, ["rain", str(tmp_path / "o1" / "norain"), str(tmp_path / "o1")])
    assert res.exit_code == 2
    assert "norain/a.png: would overwrite an input image; choose another OUT_DIR" in res.output
    res = runner.invoke(app, ["rain", str(tmp_path / "missing"), str(tmp_path / "o4")])
    assert res.exit_code == 2 and f"error: {tmp_path / 'missing'}: not a directory" in res.output
    (tmp_path / "taken").write_text("a file")
    res = runner.invoke(app, ["rain", str(tmp_path / "clean"), str(tmp_path / "taken")])
    assert res.exit_code == 2
    assert res.output == f"error: cannot write {tmp_path / 'taken' / 'norain' / 'a.png'}: Not a directory\n"


def test_rain_command_leaves_out_a_damaged_photo_and_exits_1(tmp_path):
    from typer.testing import CliRunner

    from jdnet_cli.cli.app import app

    write_png(tmp_path / "clean" / "a.png", 20, 20, seed=1)
    (tmp_path / "clean" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    write_png(tmp_path / "clean" / "c.png", 20, 20, seed=2)
    res = CliRunner().invoke(app, ["rain", str(tmp_path / "clean"), str(tmp_path / "out")])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert lines[0].startswith(f"failed: {tmp_path / 'clean' / 'b.png'}: ") and len(lines) == 2
    assert lines[1].startswith(f"2 pairs written to {tmp_path / 'out'}/rain") and lines[1].endswith("; 1 photo(s) failed")
    assert sorted(p.name for p in (tmp_path / "out" / "rain").iterdir()) == ["a.png", "c.png"]


def test_rain_command_heavy_style_renders_heavier_rain_over_the_same_photos(tmp_path):
    from typer.testing import CliRunner

    from jdnet_cli.cli.app import app

    clean = write_png(tmp_path / "clean" / "a.png", 96, 128, seed=1).astype(int)
    runner = CliRunner()
    for style in ("fine", "light", "heavy"):
        res = runner.invoke(app, ["rain", str(tmp_path / "clean"), str(tmp_path / style), "--seed", "5", "--style", style])
        assert res.exit_code == 0, res.output
    diff = {s: np.abs(cv2.imread(str(tmp_path / s / "rain" / "a.png")).astype(int) - clean).mean() for s in ("fine", "light", "heavy")}
    assert diff["heavy"] > 2 * diff["light"] > 0 and diff["light"] > diff["fine"] > 0
    # The default is the light style, and --style light is the same rain.
    assert runner.invoke(app, ["rain", str(tmp_path / "clean"), str(tmp_path / "default"), "--seed", "5"]).exit_code == 0
    assert (tmp_path / "default" / "rain" / "a.png").read_bytes() == (tmp_path / "light" / "rain" / "a.png").read_bytes()
    res = runner.invoke(app, ["rain", str(tmp_path / "clean"), str(tmp_path / "x"), "--style", "storm"])
    assert res.exit_code == 2 and "--style must be one of light, fine, heavy, additive, heavy-additive, not 'storm'" in res.output and not (tmp_path / "x").exists()


def test_additive_rain_keeps_its_strength_on_bright_backgrounds_where_screened_rain_fades():
    from jdnet_cli.data.synthetic_rain import ADDITIVE_RAIN

    def streak_p95(style: RainStyle, level: float) -> float:
        clean = np.full((128, 128, 3), level, np.float32)
        diffs = [(render_rain(clean, np.random.default_rng(s), style) - clean).mean(2) for s in range(6)]
        return float(np.quantile(np.concatenate([d.ravel() for d in diffs]), 0.95))

    # Same seeds, same streaks: only the background differs.
    light = streak_p95(RainStyle(haze_prob=0.0), 0.1), streak_p95(RainStyle(haze_prob=0.0), 0.6)
    added = streak_p95(dataclasses.replace(ADDITIVE_RAIN, haze_prob=0.0), 0.1), streak_p95(dataclasses.replace(ADDITIVE_RAIN, haze_prob=0.0), 0.6)
    assert light[1] / light[0] < 0.5  # screening: (1 - 0.6) / (1 - 0.1) = 0.44 of the change
    assert added[1] == pytest.approx(added[0], rel=1e-4)  # adding: the same change on both
    assert 0.05 < added[0] < 0.2


def test_additive_rain_is_clean_plus_streaks_clipped_and_mixed_styles_draw_per_image():
    img = _photo(seed=3)
    out = render_rain(img, np.random.default_rng(4), RainStyle(additive=1.0, haze_prob=0.0))
    diff = out - img
    assert diff.min() >= -1e-6 and out.max() <= 1.0
    bright = img > 0.9  # clipped there: the streak adds at most 1 - clean
    assert np.all(diff[bright] <= 1.0 - img[bright] + 1e-6)
    # additive=0 renders exactly the screened style, drawing nothing extra from the generator.
    assert np.array_equal(render_rain(img, np.random.default_rng(4), RainStyle(additive=0.0)),
                          render_rain(img, np.random.default_rng(4), RainStyle()))
    # A mixed style adds on some images and screens on others.
    flat = np.full((64, 64, 3), 0.6, np.float32)
    strengths = [float((render_rain(flat, np.random.default_rng(s), RainStyle(additive=0.5, haze_prob=0.0)) - flat).max())
                 for s in range(24)]
    assert min(strengths) < 0.35 < max(strengths)


def test_heavy_additive_rain_adds_heavy_streaks_as_heavy_18_does():
    from jdnet_cli.data.synthetic_rain import HEAVY_ADDITIVE_RAIN, HEAVY_RAIN, RAIN_STYLES

    assert RAIN_STYLES["heavy-additive"] is HEAVY_ADDITIVE_RAIN and HEAVY_ADDITIVE_RAIN.additive == 1.0

    def change(style: RainStyle, level: float) -> np.ndarray:
        clean = np.full((96, 96, 3), level, np.float32)
        return np.concatenate([(render_rain(clean, np.random.default_rng(s), style) - clean).mean(2).ravel() for s in range(8)])

    # Same seeds, same streaks: added streaks keep their strength on a brighter background until they
    # clip at 1 - clean (0.45 here); screened ones fade there.
    flat = dataclasses.replace(HEAVY_ADDITIVE_RAIN, haze_prob=0.0)
    dark, mid = change(flat, 0.1), change(flat, 0.55)
    assert np.quantile(mid, 0.9) == pytest.approx(min(np.quantile(dark, 0.9), 0.45), rel=1e-3)
    screened = dataclasses.replace(HEAVY_RAIN, haze_prob=0.0)
    assert np.quantile(change(screened, 0.55), 0.9) < 0.75 * np.quantile(change(screened, 0.1), 0.9)
    # Still heavy rain: several times the light style's mean change.
    assert change(HEAVY_ADDITIVE_RAIN, 0.3).mean() > 3 * change(RainStyle(), 0.3).mean() > 0


def test_rain_command_refuses_names_that_would_collide(tmp_path):
    from jdnet_cli.data.datasets import write_synthetic_pairs
    from jdnet_cli.errors import JDNetError

    write_png(tmp_path / "clean" / "a.png", 20, 20, seed=1)
    write_png(tmp_path / "clean" / "a.jpg", 20, 20, seed=2)
    with pytest.raises(JDNetError, match=r"a\.png: same name as a\.jpg; both would be written as a\.png"):
        write_synthetic_pairs(tmp_path / "clean", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fine_rain_is_fainter_than_light_and_rarely_veiled():
    from jdnet_cli.data.synthetic_rain import FINE_RAIN, RAIN_STYLES

    assert RAIN_STYLES["fine"] is FINE_RAIN and RAIN_STYLES["light"] == RainStyle()
    img = _photo(64, 64) * 0.3  # dark, so a veil of atmospheric light (0.7-0.95) always lifts it
    means, floors = {}, {}
    for name in ("fine", "light"):
        rng = np.random.default_rng(11)
        diffs = [(render_rain(img, rng, RAIN_STYLES[name]) - img).mean(2) for _ in range(200)]
        means[name] = float(np.mean([d.mean() for d in diffs]))
        # Without streaks (brightness 0) what is left is the veil, when there is one.
        unstreaked = dataclasses.replace(RAIN_STYLES[name], brightness=(0.0, 0.0))
        floors[name] = float(np.mean([(render_rain(img, rng, unstreaked) - img).mean() > 0.002 for _ in range(400)]))
    # Same ranges but brightness 0.2-0.7 against 0.25-0.8: about 0.82x the mean difference.
    assert 0.65 < means["fine"] / means["light"] < 0.95
    # Veils on 10% against 40% of images (the faintest of 0 to 0.04 do not pass the test).
    assert floors["fine"] < 0.15 < 0.25 < floors["light"] < 0.45
