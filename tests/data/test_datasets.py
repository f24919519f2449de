"""Paired-dataset layouts, pair loading, crops/augmentation, synthetic patches and DDP sharding."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from jdnet_cli.data.datasets import (
    PairedPatches,
    SyntheticRainPatches,
    augment,
    find_pairs,
    random_crop,
    rank_slice,
)
from jdnet_cli.data.synthetic_rain import RainStyle
from jdnet_cli.errors import JDNetError
from tests.conftest import shared_path, write_png


def _names(pairs) -> list[tuple[str, str]]:
    return [(p.rainy.name, p.clean.name) for p in pairs]


def _touch(folder: Path, names: list[str], h: int = 12, w: int = 16) -> None:
    for i, name in enumerate(names):
        write_png(folder / name, h, w, seed=i)


def test_rain_norain_folders_pair_rain_n_with_norain_n(tmp_path):
    _touch(tmp_path / "rain", ["rain-001.png", "rain-002.png", "rain-003.png"])
    _touch(tmp_path / "norain", ["norain-001.png", "norain-002.png", "norain-003.png"])
    assert _names(find_pairs(tmp_path)) == [
        ("rain-001.png", "norain-001.png"),
        ("rain-002.png", "norain-002.png"),
        ("rain-003.png", "norain-003.png"),
    ]


def test_numbers_match_regardless_of_zero_padding(tmp_path):
    _touch(tmp_path / "rain", ["rain-1.png", "rain-12.png"])
    _touch(tmp_path / "norain", ["norain-001.png", "norain-012.png"])
    assert _names(find_pairs(tmp_path)) == [("rain-1.png", "norain-001.png"), ("rain-12.png", "norain-012.png")]


def test_equal_names_in_both_folders(tmp_path):
    _touch(tmp_path / "rain", ["beach.png", "rainbow.png", "street.jpg"])
    _touch(tmp_path / "norain", ["beach.png", "rainbow.png", "street.jpg", "bow.png"])
    assert _names(find_pairs(tmp_path)) == [
        ("beach.png", "beach.png"),
        ("rainbow.png", "rainbow.png"),
        ("street.jpg", "street.jpg"),
    ]


@pytest.mark.parametrize("rain_dir,clean_dir", [("rainy", "norain"), ("input", "target"), ("rain", "clean"), ("data", "gt")])
def test_other_two_folder_layouts(tmp_path, rain_dir, clean_dir):
    _touch(tmp_path / rain_dir, ["a.png", "b.png"])
    _touch(tmp_path / clean_dir, ["a.png", "b.png"])
    pairs = find_pairs(tmp_path)
    assert _names(pairs) == [("a.png", "a.png"), ("b.png", "b.png")]
    assert {p.rainy.parent.name for p in pairs} == {rain_dir}
    assert {p.clean.parent.name for p in pairs} == {clean_dir}


def test_rainy_folder_with_norain_files_beside_it(tmp_path):
    # PReNet's Rain100L/H test copies: Rain100L/rainy/rain-N.png and Rain100L/norain-N.png.
    _touch(tmp_path / "rainy", ["rain-001.png", "rain-002.png"])
    _touch(tmp_path, ["norain-001.png", "norain-002.png"])
    pairs = find_pairs(tmp_path)
    assert _names(pairs) == [("rain-001.png", "norain-001.png"), ("rain-002.png", "norain-002.png")]
    assert pairs[0].clean.parent == tmp_path


def test_flat_folder_of_rain_n_beside_norain_n(tmp_path):
    # Rain100L/H training sets, with the extra rainregion/rainstreak maps some copies carry.
    _touch(tmp_path, ["norain-1.png", "norain-2.png", "rain-1.png", "rain-2.png", "rainstreak-1.png", "rainregion-1.png"])
    assert _names(find_pairs(tmp_path)) == [("rain-1.png", "norain-1.png"), ("rain-2.png", "norain-2.png")]


def test_side_by_side_pairs_left_clean_right_rainy(tmp_path):
    bgr = write_png(tmp_path / "pair-1.png", 10, 24, seed=3)
    pairs = find_pairs(tmp_path)
    assert len(pairs) == 1 and pairs[0].side_by_side
    rainy, clean = pairs[0].load()
    rgb = bgr[..., ::-1].astype(np.float32) / 255.0
    np.testing.assert_array_equal(clean, rgb[:, :12])
    np.testing.assert_array_equal(rainy, rgb[:, 12:])


def test_pair_load_is_exact_rgb(tmp_path):
    rain = write_png(tmp_path / "rain" / "rain-1.png", 9, 11, seed=1)
    clean = write_png(tmp_path / "norain" / "norain-1.png", 9, 11, seed=2)
    (pair,) = find_pairs(tmp_path)
    rainy_rgb, clean_rgb = pair.load()
    np.testing.assert_array_equal(rainy_rgb, rain[..., ::-1].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(clean_rgb, clean[..., ::-1].astype(np.float32) / 255.0)


def test_pair_of_different_sizes_names_the_file(tmp_path):
    write_png(tmp_path / "rain" / "x.png", 9, 11)
    write_png(tmp_path / "norain" / "x.png", 9, 12)
    (pair,) = find_pairs(tmp_path)
    with pytest.raises(JDNetError, match=r"rain/x\.png: 11x9 does not match"):
        pair.load()


def test_unknown_layout_lists_the_layouts_understood(tmp_path):
    _touch(tmp_path / "photos", ["a.png"])
    _touch(tmp_path, ["holiday.png"], h=20, w=10)
    with pytest.raises(JDNetError) as err:
        find_pairs(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path}: unknown dataset layout; understood layouts:")
    for layout in ("rain/ + norain/", "rainy/ with norain-N", "input/ + target/", "side-by-side"):
        assert layout in msg
    assert "\n" not in msg


def test_folders_without_matching_names_are_an_error(tmp_path):
    _touch(tmp_path / "rain", ["a.png"])
    _touch(tmp_path / "norain", ["b.png"])
    with pytest.raises(JDNetError, match="rain/ and norain/: no rainy image has a clean twin"):
        find_pairs(tmp_path)


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(JDNetError, match="not a directory"):
        find_pairs(tmp_path / "nope")


def test_rain12_has_twelve_pairs():
    root = shared_path("data", "rain12")
    pairs = find_pairs(root)
    assert len(pairs) == 12
    assert all(p.clean.name == "no" + p.rainy.name for p in pairs)
    rainy, clean = pairs[0].load()
    assert rainy.shape == clean.shape == (320, 480, 3)  # shared README says 481x321; the files are 480x320


def test_random_crop_cuts_the_same_window_and_pads_small_images():
    rng = np.random.default_rng(0)
    a = np.arange(20 * 30 * 3, dtype=np.float32).reshape(20, 30, 3)
    ca, cb = random_crop([a, a + 1], 8, rng)
    assert ca.shape == (8, 8, 3)
    np.testing.assert_array_equal(cb, ca + 1)
    (small,) = random_crop([a[:5, :6]], 8, rng)
    assert small.shape == (8, 8, 3)


def test_augment_applies_one_transform_to_all_arrays():
    a = np.random.default_rng(1).random((6, 6, 3)).astype(np.float32)
    seen = set()
    for seed in range(12):
        x, y = augment([a, a * 2], np.random.default_rng(seed), flips=True, rotations=True)
        np.testing.assert_array_equal(y, x * 2)
        seen.add(x.tobytes())
    assert len(seen) > 4  # flips and rotations really vary
    (same,) = augment([a], np.random.default_rng(0), flips=False, rotations=False)
    np.testing.assert_array_equal(same, a)


def test_paired_patches_keep_rainy_and_clean_aligned(tmp_path):
    clean = write_png(tmp_path / "norain" / "a.png", 40, 50, seed=5)
    rainy = np.clip(clean.astype(np.int32) // 2 + 10, 0, 255).astype(np.uint8)
    (tmp_path / "rain").mkdir()
    assert cv2.imwrite(str(tmp_path / "rain" / "a.png"), rainy)
    data = PairedPatches(find_pairs(tmp_path))
    rng = np.random.default_rng(0)
    for _ in range(5):
        r, c = data.sample(rng, 16, flips=True, rotations=True)
        assert r.shape == c.shape == (16, 16, 3)
        np.testing.assert_allclose(r * 255, np.floor(np.round(c * 255) / 2) + 10, atol=1e-3)


def test_synthetic_patches_are_reproducible_and_rainy(tmp_path):
    write_png(tmp_path / "a.png", 90, 100, seed=0)
    data = SyntheticRainPatches(tmp_path, RainStyle(haze_prob=0.0))
    r1, c1 = data.sample(np.random.default_rng(7), 32, flips=True, rotations=False)
    r2, c2 = data.sample(np.random.default_rng(7), 32, flips=True, rotations=False)
    assert r1.shape == c1.shape == (32, 32, 3)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(c1, c2)
    assert np.all(r1 >= c1 - 1e-6)  # without haze, the screen blend only brightens
    assert np.abs(r1 - c1).max() > 0.1


def test_synthetic_patches_need_images(tmp_path):
    with pytest.raises(JDNetError, match="no images found"):
        SyntheticRainPatches(tmp_path)


def test_shard_gives_each_rank_its_own_items():
    items = list(range(7))
    assert rank_slice(items, 0, 2) == [0, 2, 4, 6]
    assert rank_slice(items, 1, 2) == [1, 3, 5]
    assert rank_slice([5], 1, 2) == [5]


def test_synthetic_patches_decode_only_their_rank_share(tmp_path):
    for i in range(3):
        write_png(tmp_path / f"{i}.png", 8, 8, seed=i)
    assert [p.name for p in SyntheticRainPatches(tmp_path, rank=0, world=2).files] == ["0.png", "2.png"]
    rank1 = SyntheticRainPatches(tmp_path, rank=1, world=2)
    assert [p.name for p in rank1.files] == ["1.png"] and len(rank1.images) == 1
    assert [p.name for p in SyntheticRainPatches(tmp_path, limit=2).files] == ["0.png", "1.png"]
