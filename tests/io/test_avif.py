"""AVIF photos through Pillow's AVIF plugin: reading, writing, metadata, orientation, depth, colour, errors."""
from __future__ import annotations

import io
import struct
import subprocess

import numpy as np
import pytest

from jdnet_cli.errors import JDNetError
from jdnet_cli.io import avif as avif_module
from jdnet_cli.io.image_headers import avif_properties, header_size
from jdnet_cli.io.image_metadata import EXIF_HEADER, exif_orientation
from jdnet_cli.io.images import conversion_losses, decode_image, encode_image, read_image
from jdnet_cli.pipelines.planning import normalize_ext, plan_jobs
from tests.conftest import run_cli
from tests.io.test_heif import _exif, _gradient, _psnr, png_chunks

PIL_Image = pytest.importorskip("PIL.Image")
if avif_module.avif_support_missing():
    pytest.skip("this Pillow has no AVIF support", allow_module_level=True)


def _avif(pixels: np.ndarray, mode: str = "RGB", **options) -> bytes:
    """AVIF bytes written by Pillow itself (as a browser or another tool would), independent of jdnet's writer."""
    out = io.BytesIO()
    PIL_Image.fromarray(np.ascontiguousarray(pixels), mode).save(out, format="AVIF", quality=95, **options)
    return out.getvalue()


def _pil(data: bytes):
    image = PIL_Image.open(io.BytesIO(data))
    image.load()
    return image


def test_an_avif_photo_decodes_with_its_metadata():
    rgb = _gradient()
    data = _avif(rgb, exif=EXIF_HEADER + _exif(), xmp=b"<x:xmpmeta>rain</x:xmpmeta>", icc_profile=b"fake icc")
    assert header_size(data, ".avif") == (64, 48)
    img = decode_image(data, "photo.avif")
    assert img.format == ".avif" and img.bit_depth == 8 and img.stored_bit_depth is None and img.alpha is None
    assert img.rgb.shape == (48, 64, 3) and img.heif_chroma == 420
    assert _psnr(img.rgb, rgb / 255.0) > 30
    assert b"RainCam" in img.metadata.exif and exif_orientation(img.metadata.exif) == 1
    assert img.metadata.xmp == b"<x:xmpmeta>rain</x:xmpmeta>" and img.metadata.icc == b"fake icc"
    assert conversion_losses(img, ".avif") is None and conversion_losses(img, ".jpg") is None


def test_a_turned_avif_is_upright_and_its_exif_then_says_so():
    # Pillow stores EXIF orientation 6 as the file's rotate/mirror properties, which readers must apply.
    img = decode_image(_avif(_gradient(), exif=EXIF_HEADER + _exif(orientation=6)), "turned.avif")
    assert img.rgb.shape == (64, 48, 3)
    assert img.rgb[0, -1, 0] > 0.9 and img.rgb[0, -1, 1] < 0.1  # the red corner, turned clockwise to the top right
    assert exif_orientation(img.metadata.exif) == 1
    written = _pil(encode_image(img, ".avif"))
    assert written.size == (48, 64) and written.getexif().get(0x0112, 1) == 1  # not turned a second time
    assert written.getexif().get(0x010F) == "RainCam"


def test_jdnet_writes_avif_with_exif_xmp_icc_alpha_and_the_input_chroma():
    rgba = np.dstack([_gradient(), np.full((48, 64), 200, np.uint8)])
    rgba[:8, :8, 3] = 0
    img = decode_image(_avif(rgba, "RGBA", subsampling="4:4:4", exif=EXIF_HEADER + _exif(), xmp=b"<x/>",
                             icc_profile=b"fake icc"), "a.avif")
    assert img.heif_chroma == 444 and img.alpha is not None and img.alpha[0, 0] == 0 and img.alpha[-1, -1] == 200
    data = encode_image(img, ".avif")
    av1c = avif_properties(data)[b"av1C"][0]
    assert not av1c[2] & 0x0C  # no horizontal or vertical chroma subsampling: 4:4:4 kept (the default is 4:2:0)
    back = _pil(data)
    assert back.mode == "RGBA" and back.info["xmp"] == b"<x/>" and back.info["icc_profile"] == b"fake icc"
    assert back.getexif().get(0x010F) == "RainCam"
    assert _psnr(np.asarray(back)[..., :3] / 255.0, img.rgb) > 30
    # From a JPEG or PNG the layout is 4:2:0, as for HEIC.
    png = decode_image(encode_image(img, ".png"), "a.png")
    assert avif_properties(encode_image(png, ".avif"))[b"av1C"][0][2] & 0x0C == 0x0C


def test_grey_avif_round_trips_as_grey():
    grey = _gradient()[..., 1]
    img = decode_image(_avif(grey, "L"), "grey.avif")
    assert img.grayscale and img.rgb.shape == (48, 64, 3)
    assert _pil(encode_image(img, ".avif")).mode == "L"


def _ffmpeg() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    return imageio_ffmpeg.get_ffmpeg_exe()


def test_a_ten_bit_avif_is_read_at_eight_bits_and_a_note_says_so(tmp_path):
    src = tmp_path / "src.png"
    src.write_bytes(encode_image(decode_image(_avif(_gradient()), "g.avif"), ".png"))
    ten = tmp_path / "ten.avif"
    made = subprocess.run([_ffmpeg(), "-v", "error", "-i", str(src), "-c:v", "libaom-av1", "-pix_fmt", "yuv420p10le",
                           "-still-picture", "1", str(ten)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"this ffmpeg writes no 10-bit AVIF: {made.stderr.decode()[-200:]}")
    img = read_image(ten)
    assert img.bit_depth == 8 and img.stored_bit_depth == 10
    assert _psnr(img.rgb, _gradient() / 255.0) > 30
    note = "has 8 bits per sample: the input's 10-bit AVIF is read at 8 bits (Pillow's AVIF decoder)"
    assert conversion_losses(img, ".png") == note and conversion_losses(img, ".avif") == note


def _with_nclx(data: bytes, primaries: int, transfer: int) -> bytes:
    """The AVIF with its 'colr' nclx box's primaries and transfer changed (Pillow writes sRGB's: 1 and 13)."""
    at = data.index(b"colrnclx") + 8
    assert struct.unpack(">HH", data[at : at + 4]) == (1, 13)
    return data[:at] + struct.pack(">HH", primaries, transfer) + data[at + 4 :]


def test_a_display_p3_avif_keeps_its_colour_space_in_png_and_says_it_is_dropped_elsewhere():
    img = decode_image(_with_nclx(_avif(_gradient()), 12, 13), "p3.avif")
    assert img.metadata.nclx is not None and img.metadata.nclx[:2] == (12, 13)
    assert conversion_losses(img, ".png") is None
    assert png_chunks(encode_image(img, ".png"))[b"cICP"][:2] == bytes((12, 13))
    assert conversion_losses(img, ".avif") == ("drops the input's colour space (Display P3 primaries): jdnet does not "
                                               "write it into avif files")
    plain = decode_image(_avif(_gradient()), "plain.avif")
    assert conversion_losses(plain, ".jpg") is None and b"cICP" not in png_chunks(encode_image(plain, ".png"))


def test_damaged_truncated_and_oversized_avif_fail_in_one_line(monkeypatch):
    data = _avif(_gradient())
    with pytest.raises(JDNetError, match=r"^cut\.avif: truncated AVIF file \(box 'mdat' cut off: \d+ of \d+ bytes\)$"):
        decode_image(data[:-10], "cut.avif")
    damaged = bytearray(data)
    at = data.index(b"iloc")
    damaged[at - 4 : at + 40] = bytes(44)  # where the image data is: gone
    with pytest.raises(JDNetError, match=r"^bad\.avif: corrupt AVIF "):
        decode_image(bytes(damaged), "bad.avif")
    monkeypatch.setattr(avif_module, "decode_avif", lambda _: pytest.fail("decoded a refused image"))
    with pytest.raises(JDNetError, match=r"^big\.avif: 64x48 exceeds --max-pixels 1000 \(possible decompression bomb\)$"):
        decode_image(data, "big.avif", max_pixels=1000)


def test_without_avif_support_it_fails_by_name_with_the_install_hint(monkeypatch, tmp_path):
    def missing():
        raise JDNetError(f"AVIF support is not installed ({avif_module.INSTALL_HINT})")

    monkeypatch.setattr(avif_module, "_backend", missing)
    photo = tmp_path / "IMG_0001.AVIF"
    photo.write_bytes(_avif(_gradient()))
    with pytest.raises(JDNetError) as err:
        read_image(photo)
    assert str(err.value) == f"{photo}: AVIF support is not installed (pip install 'pillow>=11.3')"
    with pytest.raises(JDNetError, match=r"^--ext avif: AVIF support is not installed"):
        normalize_ext("avif")
    [job] = plan_jobs([str(tmp_path)], str(tmp_path / "out"))
    assert job.input == photo and job.output == tmp_path / "out" / "IMG_0001.AVIF" and job.error is None


def test_derain_a_folder_of_avif_photos_keeps_format_and_exif(tmp_path, tiny_weights):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "IMG_0001.AVIF").write_bytes(_avif(_gradient(), exif=EXIF_HEADER + _exif(orientation=6)))
    out = tmp_path / "out"
    res = run_cli("derain", str(photos), str(out), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 0, res.stderr.decode()
    written = _pil((out / "IMG_0001.AVIF").read_bytes())
    assert written.format == "AVIF" and written.size == (48, 64)  # upright, as the input displays
    assert written.getexif().get(0x0112, 1) == 1 and written.getexif().get(0x010F) == "RainCam"
    res = run_cli("derain", str(photos / "IMG_0001.AVIF"), str(tmp_path / "as.png"), "--weights", str(tiny_weights),
                  "--device", "cpu")
    assert res.returncode == 0, res.stderr.decode()
    png = read_image(tmp_path / "as.png")
    assert png.rgb.shape == (64, 48, 3) and b"RainCam" in png.metadata.exif
