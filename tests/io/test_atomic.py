"""Atomic writes: all-or-nothing, normal permissions, temp files cleaned up on failure."""
from __future__ import annotations

import stat

import pytest

from jdnet_cli.io.atomic import atomic_path, atomic_write_bytes


def test_written_file_has_umask_permissions(tmp_path):
    from jdnet_cli.io import atomic

    atomic_write_bytes(tmp_path / "a.bin", b"data")
    assert (tmp_path / "a.bin").read_bytes() == b"data"
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o666 & ~atomic._UMASK
    with open(tmp_path / "plain.bin", "wb"):
        pass
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)


def test_failure_leaves_old_file_and_no_temp(tmp_path):
    dest = tmp_path / "keep.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("name", ["L" * 250 + ".png", "é" * 125 + ".png", "雨" * 83 + ".tif"])
def test_names_up_to_the_limit_can_be_written(tmp_path, name):
    # The temp file's name adds a dot, 8 random characters and '.part.png': it is shortened, the output is not.
    assert len(name.encode()) <= 255
    atomic_write_bytes(tmp_path / name, b"data")
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_bytes() == b"data"


def test_a_failed_write_or_rename_names_the_destination_not_the_temp_file(tmp_path):
    with pytest.raises(OSError) as err:
        with atomic_path(tmp_path / "a.png"):
            raise OSError(28, "No space left on device")  # what write() raises: no file named
    assert err.value.errno == 28 and err.value.filename == str(tmp_path / "a.png")
    (tmp_path / "taken").mkdir()  # a folder where the file is to go: the rename fails
    with pytest.raises(OSError) as err:
        with atomic_path(tmp_path / "taken") as tmp:
            tmp.write_bytes(b"data")
    assert err.value.filename == str(tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
