"""scripts/gpu_stage.py pack: what travels to a GPU machine stays under the device tool's limit."""
from __future__ import annotations

import importlib.util

from ..conftest import REPO


def _load():
    spec = importlib.util.spec_from_file_location("gpu_stage", REPO / "scripts" / "gpu_stage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pack_copies_validation_and_the_photos_that_fit_and_ignores_the_folder(tmp_path, monkeypatch):
    stage = _load()
    clean, val = tmp_path / "clean", tmp_path / "val"
    (val / "rain").mkdir(parents=True)
    (val / "rain" / "a.png").write_bytes(b"v" * 1000)
    clean.mkdir()
    for i, size in enumerate([300, 5000, 300, 300, 300]):
        (clean / f"p{i}.jpg").write_bytes(b"c" * size)
    (clean / "SOURCES.tsv").write_text("not a photo")
    monkeypatch.setattr(stage, "STAGE", tmp_path / "stage")
    monkeypatch.setattr(stage, "EXCLUDE", tmp_path / "git" / "info" / "exclude")
    monkeypatch.setattr(stage, "_tree_bytes", lambda: 10_000)
    # Room for the validation set and 1,000 bytes of photos: three of the 300-byte ones.
    monkeypatch.setattr(stage, "TREE_LIMIT", 10_000 + stage.HEADROOM + 1000 + 1000)
    stage.pack(type("Args", (), {"clean": str(clean), "val": str(val)})())
    assert (tmp_path / "stage" / "val" / "rain" / "a.png").read_bytes() == b"v" * 1000
    # Every other photo first (p0, p2, p4), then the rest; p1 never fits.
    assert sorted(p.name for p in (tmp_path / "stage" / "clean").iterdir()) == ["p0.jpg", "p2.jpg", "p4.jpg"]
    assert (tmp_path / "git" / "info" / "exclude").read_text().split() == ["/.gpu-stage/"]
    stage.pack(type("Args", (), {"clean": str(clean), "val": str(val)})())  # again: the line is not repeated
    assert (tmp_path / "git" / "info" / "exclude").read_text().split() == ["/.gpu-stage/"]
