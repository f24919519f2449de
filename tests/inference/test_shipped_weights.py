"""--weights takes a file or the name of shipped weights; an existing file always wins."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jdnet_cli.cli.app import app
from jdnet_cli.errors import JDNetError
from jdnet_cli.inference import shipped_weights
from jdnet_cli.inference.checkpoint import load_model, save_weights
from jdnet_cli.inference.shipped_weights import resolve_weights, shipped_weights_path
from jdnet_cli.models import JDNet


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """Shipped weights in a temporary folder: a tiny 'heavy' model, and no default."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    torch.manual_seed(0)
    save_weights(JDNet(channels=4, num_units=1), folder / "jdnet-heavy.pt")
    monkeypatch.setattr(shipped_weights, "weights_folders", lambda: [tmp_path / "none", folder])
    return folder


def test_names_resolve_to_shipped_files(shipped):
    assert resolve_weights("heavy") == shipped / "jdnet-heavy.pt"
    assert shipped_weights_path("heavy") == shipped / "jdnet-heavy.pt"
    model, _ = load_model(resolve_weights("heavy"))
    assert (model.channels, model.num_units) == (4, 1)


def test_missing_shipped_file_is_a_clear_error(shipped):
    with pytest.raises(JDNetError, match=r"^no shipped weights found in this install; pass --weights PATH$"):
        resolve_weights(None)
    (shipped / "jdnet-heavy.pt").unlink()
    with pytest.raises(JDNetError, match=r"^no shipped 'heavy' weights found in this install; pass --weights PATH$"):
        resolve_weights("heavy")


def test_an_existing_file_wins_over_a_name(shipped, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("heavy").write_bytes(b"x")
    assert resolve_weights("heavy") == Path("heavy")
    # Anything else that is not a file stays a path, for the loader to report.
    assert resolve_weights("heavy.pt") == Path("heavy.pt")
    assert resolve_weights(Path("sub/heavy")) == Path("sub/heavy")


def test_checkout_ships_the_default_under_its_name():
    repo_weights = Path(__file__).resolve().parents[2] / "weights"
    if not (repo_weights / "jdnet.pt").is_file():
        pytest.skip("no shipped weights in this checkout")
    assert resolve_weights(None).resolve() == resolve_weights("default").resolve()
    assert resolve_weights(None).name == "jdnet.pt"


def test_derain_takes_a_shipped_name(shipped, tmp_path):
    import cv2
    import numpy as np

    src = tmp_path / "in.png"
    cv2.imwrite(str(src), (np.random.default_rng(0).random((20, 24, 3)) * 255).astype("uint8"))
    res = CliRunner().invoke(app, ["derain", str(src), str(tmp_path / "out"), "--weights", "heavy", "--quiet"])
    assert res.exit_code == 0, res.output
    assert cv2.imread(str(tmp_path / "out" / "in.png")).shape == (20, 24, 3)
    (shipped / "jdnet-heavy.pt").unlink()
    res = CliRunner().invoke(app, ["derain", str(src), str(tmp_path / "out2"), "--weights", "heavy"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == "error: no shipped 'heavy' weights found in this install; pass --weights PATH"


SHARED = Path(__file__).resolve().parents[3] / "shared"


def _shipped_or_skip(name: str) -> Path:
    try:
        return shipped_weights_path(name)
    except JDNetError:
        pytest.skip(f"no shipped '{name}' weights in this checkout")


@pytest.mark.skipif(not (SHARED / "data" / "rain12").is_dir(), reason="needs ../shared/data/rain12")
def test_shipped_heavy_weights_beat_the_default_on_heavy_rain():
    import numpy as np

    from jdnet_cli import Derainer
    from jdnet_cli.benchmarking.metrics import score_pair
    from jdnet_cli.data.synthetic_rain import HEAVY_RAIN, render_rain
    from jdnet_cli.io.images import read_rgb

    heavy, default = _shipped_or_skip("heavy"), _shipped_or_skip("default")
    model, meta = load_model(heavy)
    assert (model.channels, model.num_units) == (32, 32)
    assert meta["lineage"], "the heavy weights keep their lineage"
    # Rain12's clean images are a dev set: rendering rain on them is how runs/dev-heavy-rain12 is made.
    clean = read_rgb(SHARED / "data" / "rain12" / "norain" / "norain-001.png")[:128, :160]
    rainy = render_rain(clean, np.random.default_rng(7), HEAVY_RAIN)
    scores = {"input": score_pair(rainy, clean)["psnr_y"]}
    for name, weights in [("default", default), ("heavy", heavy)]:
        scores[name] = score_pair(Derainer(weights=weights, device="cpu", tile=0)(rainy), clean)["psnr_y"]
    assert scores["heavy"] > scores["default"] + 4.0, scores  # measured: 22.6 vs 12.8 dB (stage-25 heavy, stage-31 default), input 11.8


def test_version_names_the_shipped_weights_it_would_load(shipped):
    from jdnet_cli import __version__
    from jdnet_cli.inference.shipped_weights import file_sha256

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0
    heavy = file_sha256(shipped / "jdnet-heavy.pt")[:12]
    assert res.stdout == (
        f"jdnet {__version__} (torch {torch.__version__}; weights sha256: default missing, heavy {heavy})\n"
    )


def test_version_of_this_install(tmp_path):
    import hashlib
    import importlib.metadata

    from jdnet_cli import __version__
    from tests.conftest import REPO, run_cli

    # The installed metadata reads jdnet_cli.__version__, so the two cannot disagree.
    assert importlib.metadata.version("jdnet") == __version__
    res = run_cli("--version", cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == b""
    default = hashlib.sha256((REPO / "weights" / "jdnet.pt").read_bytes()).hexdigest()[:12]
    assert res.stdout.decode().startswith(f"jdnet {__version__} (torch {torch.__version__}; weights sha256: default {default}, heavy ")
