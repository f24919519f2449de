"""HEIC photos through the optional pillow-heif back end: reading, writing, metadata, orientation, errors."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from jdnet_cli.errors import JDNetError
from jdnet_cli.io import heif as heif_module
from jdnet_cli.io.image_metadata import EXIF_HEADER, Metadata, apply_orientation, exif_orientation
from jdnet_cli.io.images import Image, conversion_losses, decode_image, encode_image, read_image
from jdnet_cli.pipelines.planning import normalize_ext, plan_jobs
from tests.conftest import run_cli

pillow_heif = pytest.importorskip("pillow_heif")


def _exif(orientation: int = 1, make: bytes = b"RainCam\x00") -> bytes:
    """Big-endian TIFF with IFD0 = Make (ASCII, offset 26) and Orientation."""
    ifd = struct.pack(">H", 2) + struct.pack(">HHII", 0x010F, 2, len(make), 38)
    ifd += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\x00" * 4
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + make


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth RGB uint8 content (HEVC at high quality keeps it within a few levels), asymmetric so turns show."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([x / (w - 1), y / (h - 1), 0.25 + 0.5 * (x + y) / (w + h)], axis=2)
    rgb[: h // 4, : w // 4] = (1.0, 0.0, 0.0)  # a red corner: top-left must stay top-left
    return np.round(rgb * 255).astype(np.uint8)


def _heic(rgb: np.ndarray, exif: bytes | None = None, xmp: bytes | None = None, icc: bytes | None = None,
          quality: int = 95, **kwargs) -> bytes:
    """HEIC bytes written by pillow-heif itself (as a phone or another tool would), independent of jdnet's writer."""
    mode = ("RGB" if rgb.shape[2] == 3 else "RGBA") + (";16" if rgb.dtype == np.uint16 else "")
    image = pillow_heif.from_bytes(mode=mode, size=(rgb.shape[1], rgb.shape[0]), data=np.ascontiguousarray(rgb).tobytes())
    extra = {k: v for k, v in (("exif", exif), ("xmp", xmp), ("icc_profile", icc)) if v is not None}
    out = io.BytesIO()
    image.save(out, quality=quality, **extra, **kwargs)
    return out.getvalue()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(1.0 / mse)


def test_a_heic_photo_decodes_with_its_metadata():
    rgb = _gradient()
    data = _heic(rgb, exif=EXIF_HEADER + _exif(), xmp=b"<x:xmpmeta>rain</x:xmpmeta>", icc=b"fake icc profile")
    img = decode_image(data, "IMG_0001.HEIC")
    assert img.format == ".heic" and img.bit_depth == 8 and img.frames == 1 and img.alpha is None
    assert img.rgb.shape == (48, 64, 3)
    assert _psnr(img.rgb, rgb / 255.0) > 35
    assert img.metadata.exif == _exif()  # stored with the 'Exif' prefix, carried as the bare TIFF structure
    assert img.metadata.xmp == b"<x:xmpmeta>rain</x:xmpmeta>"
    assert img.metadata.icc == b"fake icc profile"


def test_a_turned_heic_is_upright_once_and_its_exif_then_says_so():
    # pillow-heif stores EXIF orientation 6 as the file's own rotation; libheif applies it when decoding.
    # Applying the EXIF tag as well would turn the photo twice.
    rgb = _gradient()
    img = decode_image(_heic(rgb, exif=EXIF_HEADER + _exif(orientation=6)), "turned.heic")
    upright = apply_orientation(rgb, 6)
    assert img.rgb.shape == upright.shape == (64, 48, 3)
    assert _psnr(img.rgb, upright / 255.0) > 35
    assert exif_orientation(img.metadata.exif) == 1


def test_ten_bit_heic_keeps_its_depth_to_png_and_heic():
    levels = np.linspace(0, 1023, 64).round().astype(np.uint16)
    ten = np.repeat(np.repeat(levels[None, :, None], 8, axis=0), 3, axis=2)
    data = _heic(ten << 6, quality=-1, chroma=444)  # lossless: exact 10-bit samples
    img = decode_image(data, "hdr.heic")
    assert img.bit_depth == 10
    assert np.array_equal(np.round(img.rgb * 1023).astype(np.uint16), ten)  # 1023 is white (1.0), not 65472/65535
    assert conversion_losses(img, ".png") is None  # written as 16-bit
    assert conversion_losses(img, ".heic") is None  # written as 10-bit
    assert conversion_losses(img, ".jpg").startswith("drops 10-bit depth (written as 8-bit)")
    again = decode_image(encode_image(img, ".heic", quality=100), "again.heic")
    assert again.bit_depth == 10
    assert np.abs(again.rgb - img.rgb).max() < 4 / 1023


def test_jdnet_writes_heic_with_exif_xmp_icc_and_the_input_chroma():
    rgb = _gradient()
    img = Image(rgb=rgb / np.float32(255), metadata=Metadata(exif=_exif(), xmp=b"<x/>", icc=b"icc"), format=".heic",
                heif_chroma=444)
    data = encode_image(img, ".heic")
    written = pillow_heif.open_heif(io.BytesIO(data))
    assert written.size == (64, 48) and written.mode == "RGB" and written.info["chroma"] == 444
    assert written.info["exif"].removeprefix(EXIF_HEADER) == _exif()
    assert written.info["xmp"] == b"<x/>" and written.info["icc_profile"] == b"icc"
    assert _psnr(np.asarray(written) / 255.0, rgb / 255.0) > 35
    # Another format in: HEIC's usual 4:2:0.
    img.format = ".png"
    assert pillow_heif.open_heif(io.BytesIO(encode_image(img, ".heic"))).info["chroma"] == 420


def test_heic_alpha_and_grey_round_trip():
    rgba = np.dstack([_gradient(), np.full((48, 64), 200, np.uint8)])
    img = decode_image(_heic(rgba), "alpha.heic")
    assert img.alpha is not None and int(np.median(img.alpha)) in range(195, 206)
    back = pillow_heif.open_heif(io.BytesIO(encode_image(img, ".heic")))
    assert back.mode == "RGBA"
    grey = Image(rgb=np.repeat(np.linspace(0, 1, 64, dtype=np.float32)[None, :, None], 3, axis=2).repeat(8, 0),
                 grayscale=True)
    assert pillow_heif.open_heif(io.BytesIO(encode_image(grey, ".heic"))).mode == "L"


def test_damaged_and_foreign_iso_files_fail_in_one_line():
    data = bytearray(_heic(_gradient()))
    data[40:80] = bytes(40)  # inside the 'meta' box, which says where everything is
    with pytest.raises(JDNetError, match=r"^bad\.heic: corrupt HEIC data \(Invalid input: No 'iinf' box\)$"):
        decode_image(bytes(data), "bad.heic")
    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(16)
    with pytest.raises(JDNetError, match=r"^x\.heic: corrupt AVIF header$"):  # the bytes, not the name, decide
        decode_image(avif, "x.heic")
    mp4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(16)
    with pytest.raises(JDNetError, match=r"^x\.heic: unsupported format \(ISO media, brand 'isom': a video\? "):
        decode_image(mp4, "x.heic")


def test_max_pixels_is_checked_before_decoding(monkeypatch):
    data = _heic(_gradient())
    monkeypatch.setattr(heif_module, "decode_heif", lambda _: pytest.fail("decoded a refused image"))
    with pytest.raises(JDNetError, match=r"^big\.heic: 64x48 exceeds --max-pixels 1000 \(possible decompression bomb\)$"):
        decode_image(data, "big.heic", max_pixels=1000)


def test_without_the_backend_heic_fails_by_name_with_the_install_hint(monkeypatch, tmp_path):
    def missing():
        raise JDNetError(f"HEIC support is not installed ({heif_module.INSTALL_HINT})")

    monkeypatch.setattr(heif_module, "_backend", missing)
    photo = tmp_path / "IMG_0001.HEIC"
    photo.write_bytes(_heic(_gradient()))
    with pytest.raises(JDNetError) as err:
        read_image(photo)
    assert str(err.value) == f"{photo}: HEIC support is not installed (pip install pillow-heif)"
    with pytest.raises(JDNetError, match=r"^--ext heic: HEIC support is not installed"):
        normalize_ext("heic")
    # Still planned as a photo of the batch (it fails by name, it does not vanish).
    [job] = plan_jobs([str(tmp_path)], str(tmp_path / "out"))
    assert job.input == photo and job.output == tmp_path / "out" / "IMG_0001.HEIC" and job.error is None


def test_derain_a_folder_of_heic_photos_keeps_format_and_exif(tmp_path, tiny_weights):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "IMG_0001.HEIC").write_bytes(_heic(_gradient(), exif=EXIF_HEADER + _exif(orientation=6)))
    out = tmp_path / "out"
    res = run_cli("derain", str(photos), str(out), "--weights", str(tiny_weights), "--device", "cpu")
    assert res.returncode == 0, res.stderr.decode()
    written = pillow_heif.open_heif(io.BytesIO((out / "IMG_0001.HEIC").read_bytes()))
    assert written.size == (48, 64)  # upright, as the input displays
    assert exif_orientation(written.info["exif"].removeprefix(EXIF_HEADER)) == 1
    assert b"RainCam" in written.info["exif"]
    res = run_cli("derain", str(photos / "IMG_0001.HEIC"), str(tmp_path / "as.jpg"), "--weights", str(tiny_weights),
                  "--device", "cpu")
    assert res.returncode == 0, res.stderr.decode()
    jpg = read_image(tmp_path / "as.jpg")
    assert jpg.rgb.shape == (64, 48, 3) and b"RainCam" in jpg.metadata.exif


def test_a_truncated_heic_fails_even_where_libheif_would_drop_an_item_quietly():
    data = _heic(_gradient(), xmp=b"<x:xmpmeta>after the image data</x:xmpmeta>")
    for cut in (1, 20, len(data) // 20):
        with pytest.raises(JDNetError, match=r"^cut\.heic: truncated HEIC file \(box 'mdat' cut off: \d+ of \d+ bytes\)$"):
            decode_image(data[:-cut], "cut.heic")


def test_a_display_p3_heic_keeps_its_colour_space_to_heic_and_says_it_is_dropped_elsewhere():
    p3 = {"color_primaries": 12, "transfer_characteristics": 13, "matrix_coefficients": 6, "full_range_flag": 1}
    img = decode_image(_heic(_gradient(), nclx_profile=p3), "p3.heic")
    assert img.metadata.nclx == (12, 13, 6, 1)
    written = pillow_heif.open_heif(io.BytesIO(encode_image(img, ".heic"))).info["nclx_profile"]
    assert {k: written[k] for k in p3} == p3  # was 1 (BT.709): the encoder's default
    assert conversion_losses(img, ".heic") is None
    assert conversion_losses(img, ".jpg") == ("drops the input's colour space (Display P3 primaries): jdnet does not "
                                              "write it into jpg files")
    # PNG has the same description in its own chunk (cICP: primaries, transfer, matrix 0 for RGB, full range).
    assert conversion_losses(img, ".png") is None
    assert png_chunks(encode_image(img, ".png"))[b"cICP"] == bytes((12, 13, 0, 1))
    # An sRGB-like description (what pillow-heif writes by default) costs nothing anywhere.
    plain = decode_image(_heic(_gradient()), "plain.heic")
    assert plain.metadata.nclx is not None and conversion_losses(plain, ".jpg") is None
    assert b"cICP" not in png_chunks(encode_image(plain, ".png"))


def png_chunks(data: bytes) -> dict[bytes, bytes]:
    """A PNG's chunks by type (the last of each), bodies only."""
    found, pos = {}, 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        found[kind] = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return found
