"""Image decoding/encoding at the library level: header checks, bad inputs, orientation, metadata,
alpha, bit depth, grayscale."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
import torch

from jdnet_cli.errors import JDNetError
from jdnet_cli.inference.derainer import Derainer
from jdnet_cli.io.image_headers import frame_count, header_size, sniff_format, tiff_ifd0
from jdnet_cli.io.image_metadata import XMP_PNG_KEYWORD, Metadata, embed_metadata, exif_orientation, read_metadata
from jdnet_cli.io.images import Image, conversion_losses, decode_image, encode_image, read_image
from jdnet_cli.pipelines.images import derain_image

from ..conftest import make_tiny_model, shared_path


def _encode(arr: np.ndarray, ext: str, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, arr, list(params))
    assert ok
    return buf.tobytes()


def _exif(orientation: int, little_endian: bool = False) -> bytes:
    """A minimal TIFF/EXIF block: IFD0 with an orientation entry and a Software string."""
    o = "<" if little_endian else ">"
    head = (b"II*\x00" if little_endian else b"MM\x00*") + struct.pack(o + "I", 8)
    software = b"jdnet-test\x00\x00"
    entries = struct.pack(o + "HHIHH", 0x0112, 3, 1, orientation, 0)
    entries += struct.pack(o + "HHII", 0x0131, 2, len(software), 8 + 2 + 24 + 4)
    return head + struct.pack(o + "H", 2) + entries + struct.pack(o + "I", 0) + software


def _icc(size: int = 70_000, space: bytes = b"RGB ") -> bytes:
    """Profile-shaped bytes (size field, 'acsp' signature) larger than one JPEG APP2 segment."""
    body = bytearray(np.random.default_rng(5).integers(0, 256, size, dtype=np.uint8).tobytes())
    body[0:4] = struct.pack(">I", size)
    body[16:20] = space  # the colour space: the pixels' own
    body[36:40] = b"acsp"
    return bytes(body)


@pytest.fixture(scope="module")
def tiny() -> Derainer:
    return Derainer(model=make_tiny_model(), device="cpu")


@pytest.fixture(scope="module")
def identity() -> Derainer:
    """A model whose rain layer is exactly zero: output == input (exercises the float path)."""
    model = make_tiny_model()
    with torch.no_grad():
        model.exitBlock[0].weight.zero_()
        model.exitBlock[0].bias.zero_()
    return Derainer(model=model, device="cpu")


# --- formats and headers ----------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif", ".webp"])
def test_sniff_and_header_size_without_decoding(ext):
    data = _encode(np.zeros((37, 53, 3), np.uint8), ext)
    fmt = sniff_format(data)
    assert fmt == ext
    assert header_size(data, fmt) == (53, 37)


def test_header_size_of_lossless_webp_with_alpha():
    data = _encode(np.zeros((5, 300, 4), np.uint8), ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert data[12:16] == b"VP8L" and header_size(data, ".webp") == (300, 5)


def _png_bomb(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_from_header_before_decoding(monkeypatch):
    def no_decode(*_a, **_k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(JDNetError, match=r"^bomb.png: 60000x60000 exceeds --max-pixels 100000000 \(possible decompression bomb\)$"):
        decode_image(_png_bomb(60000, 60000), "bomb.png")
    # A JPEG whose SOF claims 60000x60000.
    jpg = bytearray(_encode(np.zeros((16, 16, 3), np.uint8), ".jpg"))
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    with pytest.raises(JDNetError, match="60000x60000 exceeds --max-pixels"):
        decode_image(bytes(jpg), "bomb.jpg")
    with pytest.raises(JDNetError, match="16x16 exceeds --max-pixels 100"):
        decode_image(_encode(np.zeros((16, 16), np.uint8), ".png"), "small.png", max_pixels=100)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not an image (unknown format)"),
        (b"GIF89a" + bytes(20), "unsupported format (GIF)"),
        (b"\x00\x00\x00\x18ftypqt  " + bytes(20), "unsupported format (ISO media, brand 'qt': a video? jdnet video reads those)"),
    ],
)
def test_non_images_have_one_line_reasons(data, reason):
    with pytest.raises(JDNetError) as info:
        decode_image(data, "x.jpg")
    assert str(info.value) == f"x.jpg: {reason}"


def test_truncated_and_corrupt_files_are_errors():
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png, jpg = _encode(arr, ".png"), _encode(arr, ".jpg")
    with pytest.raises(JDNetError, match=r"^t.png: truncated PNG file \(chunk 'IDAT' cut off\)$"):
        decode_image(png[: len(png) // 2], "t.png")
    with pytest.raises(JDNetError, match=r"^t.jpg: truncated JPEG file \(no end-of-image marker\)$"):
        decode_image(jpg[: len(jpg) // 2], "t.jpg")
    flipped = bytearray(png)
    flipped[100] ^= 0xFF
    with pytest.raises(JDNetError, match=r"^c.png: corrupt or unsupported PNG data \(libpng error: IDAT: CRC error\)$"):
        decode_image(bytes(flipped), "c.png")
    damaged = bytearray(jpg)
    damaged[len(jpg) // 2 : len(jpg) // 2 + 300] = b"\x55" * 300
    with pytest.raises(JDNetError, match=r"^c.jpg: corrupt JPEG data \(Corrupt JPEG data: "):
        decode_image(bytes(damaged), "c.jpg")


@pytest.mark.parametrize(
    "compression, reason",
    [
        (5, r"corrupt TIFF data \(TIFF_Error LZWDecode: "),  # libtiff's error, which OpenCV only logs
        (8, r"corrupt TIFF data \(deflate: Error -3 while decompressing data"),  # libtiff says nothing
        (7, r"corrupt TIFF data \(TIFF_Warning JPEGLib: Corrupt JPEG data"),
    ],
)
def test_damaged_tiff_data_is_an_error_not_a_garbage_image(compression, reason):
    y, x = np.mgrid[0:48, 0:48]
    arr = np.dstack([x * 5, y * 5, (x + y) * 2]).astype(np.uint8)
    tif = bytearray(_encode(arr, ".tif", [cv2.IMWRITE_TIFF_COMPRESSION, compression]))
    order, _, entries = tiff_ifd0(bytes(tif))
    fields = {tag: (typ, n, field) for tag, typ, n, field in entries}
    assert fields[273][:2] == fields[279][:2] == (4, 1)  # one strip: its offset and size held inline as LONGs
    start, size = (struct.unpack(order + "I", fields[tag][2])[0] for tag in (273, 279))
    tif[start + size // 2 : start + size // 2 + 32] = bytes(32)  # damage the middle of the pixel data
    with pytest.raises(JDNetError, match=r"^d.tif: " + reason) as err:
        decode_image(bytes(tif), "d.tif")
    assert "\n" not in str(err.value) and "grfmt_tiff" not in str(err.value)  # OpenCV's log prefix is cut
    decode_image(_encode(arr, ".tif", [cv2.IMWRITE_TIFF_COMPRESSION, compression]), "whole.tif")


def test_a_tiff_cut_off_inside_its_image_data_is_truncated():
    arr = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    tif = _encode(arr, ".tif", [cv2.IMWRITE_TIFF_COMPRESSION, 1])
    with pytest.raises(JDNetError, match=r"^t.tif: truncated TIFF file \(image data runs to byte \d+ of \d+\)$"):
        decode_image(_cut_strips(tif, 3000), "t.tif")


def _cut_strips(tif: bytes, keep: int) -> bytes:
    """The TIFF with its last strip bytes removed from ``keep`` on and the directory moved up to stay whole."""
    order, ifd, _ = tiff_ifd0(tif)
    assert ifd > keep  # OpenCV writes pixel data first and the directory after it
    tail = tif[ifd:]
    # IFD entries with values outside (offsets > ifd) must shift back by the removed bytes.
    shift = ifd - keep
    count = struct.unpack(order + "H", tail[:2])[0]
    out = bytearray(tail)
    for i in range(count):
        entry = 2 + 12 * i
        tag, typ, n = struct.unpack(order + "HHI", tail[entry : entry + 8])
        size = {3: 2, 4: 4, 5: 8}.get(typ, 1) * n
        if size > 4:
            value = struct.unpack(order + "I", tail[entry + 8 : entry + 12])[0]
            if value >= ifd:
                out[entry + 8 : entry + 12] = struct.pack(order + "I", value - shift)
    header = bytearray(tif[:8])
    header[4:8] = struct.pack(order + "I", keep)
    return bytes(header) + tif[8:keep] + bytes(out)


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(JDNetError, match="nope.png: no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(JDNetError, match="is a directory"):
        read_image(tmp_path)


# --- orientation ------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_opencv_and_is_reset(orientation):
    """Our rotation/flip for each of the 8 EXIF orientations equals what OpenCV's reader displays."""
    arr = np.random.default_rng(orientation).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    data = embed_metadata(_encode(arr, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 100]), ".jpg", Metadata(exif=_exif(orientation)))
    img = decode_image(data, "o.jpg")
    upright = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # OpenCV applies the tag
    assert np.array_equal(np.round(img.rgb[..., ::-1] * 255).astype(np.uint8), upright)
    assert exif_orientation(img.metadata.exif) == 1
    out = encode_image(img, ".jpg")
    assert exif_orientation(read_metadata(out, ".jpg").exif) == 1
    assert b"jdnet-test" in read_metadata(out, ".jpg").exif  # the rest of the EXIF is carried


def test_shared_orientation_samples_come_out_upright():
    base = shared_path("data", "exif-orientation")
    reference = read_image(base / "Landscape_1.jpg").rgb
    for k in (0, 1, 3, 6, 8):
        img = read_image(base / f"Landscape_{k}.jpg")
        assert img.rgb.shape == (1200, 1800, 3), k
        # Same picture up to JPEG re-compression of the rotated originals.
        assert np.abs(img.rgb - reference).mean() < 0.02, k
        out = encode_image(img, ".jpg")
        assert exif_orientation(read_metadata(out, ".jpg").exif) == 1
        assert cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_COLOR).shape == (1200, 1800, 3)


# --- metadata carried -------------------------------------------------------------------------


@pytest.mark.parametrize("src_ext", [".jpg", ".png", ".webp"])
@pytest.mark.parametrize("dst_ext", [".jpg", ".png", ".webp"])
def test_exif_and_icc_are_carried_across_formats(src_ext, dst_ext, tiny):
    meta = Metadata(exif=_exif(1, little_endian=True), icc=_icc())
    arr = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    data = embed_metadata(_encode(arr, src_ext), src_ext, meta)
    img = decode_image(data, "m" + src_ext)
    assert img.metadata == meta
    out = encode_image(derain_image(tiny, img), dst_ext)
    assert read_metadata(out, dst_ext) == meta
    decoded = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded is not None and decoded.shape == (20, 30, 3)


_XMP = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:Rating="4" '
        b'tiff:Orientation="{o}"><dc:subject><rdf:Bag><rdf:li>rain</rdf:li><rdf:li>street</rdf:li></rdf:Bag></dc:subject>'
        b'</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')
_IPTC = b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x0c\x1c\x02\x19\x00\x07holiday\x00"


def _pillow_xmp(data: bytes) -> bytes:
    """The XMP packet as Pillow (an independent reader) finds it in JPEG, PNG or WebP bytes."""
    from PIL import Image as PILImage
    import io

    info = PILImage.open(io.BytesIO(data)).info
    xmp = info.get("xmp", info.get("XML:com.adobe.xmp"))
    return xmp.encode() if isinstance(xmp, str) else xmp


@pytest.mark.parametrize("src_ext", [".jpg", ".png", ".webp"])
@pytest.mark.parametrize("dst_ext", [".jpg", ".png", ".webp"])
def test_xmp_keywords_and_rating_are_carried_across_formats(src_ext, dst_ext, tiny):
    xmp = _XMP.replace(b"{o}", b"1")
    arr = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    img = decode_image(embed_metadata(_encode(arr, src_ext), src_ext, Metadata(exif=_exif(1), xmp=xmp)), "x" + src_ext)
    out = encode_image(derain_image(tiny, img), dst_ext)
    assert read_metadata(out, dst_ext).xmp == xmp == _pillow_xmp(out)
    assert exif_orientation(read_metadata(out, dst_ext).exif) == 1 and conversion_losses(img, dst_ext) is None
    assert cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED).shape == (20, 30, 3)


def test_a_malformed_xmp_chunk_costs_only_the_xmp():
    arr = np.random.default_rng(13).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    from jdnet_cli.io.images import png_chunk

    good = embed_metadata(_encode(arr, ".png"), ".png", Metadata(exif=_exif(1), icc=_icc(500)))
    broken = png_chunk(b"iTXt", XMP_PNG_KEYWORD + b"\x00\x01\x00no-terminators")  # "compressed", then cut short
    data = good[:33] + broken + good[33:]  # after IHDR
    assert read_metadata(data, ".png") == Metadata(exif=_exif(1), icc=_icc(500))


def test_xmp_orientation_is_reset_with_the_exif_one_and_iptc_goes_jpeg_to_jpeg(tiny):
    arr = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    element = _XMP.replace(b' tiff:Orientation="{o}"', b"").replace(b"</rdf:Description>",
                                                                   b"<tiff:Orientation>6</tiff:Orientation></rdf:Description>")
    for xmp in (_XMP.replace(b"{o}", b"6"), element):
        data = embed_metadata(_encode(arr, ".jpg"), ".jpg", Metadata(exif=_exif(6), xmp=xmp, iptc=_IPTC))
        img = decode_image(data, "r.jpg")
        assert img.rgb.shape == (30, 20, 3)  # rotated upright, so both tags must now say 1
        jpg = read_metadata(encode_image(derain_image(tiny, img), ".jpg"), ".jpg")
        assert jpg.xmp == xmp.replace(b'Orientation="6"', b'Orientation="1"').replace(b">6<", b">1<") != xmp
        assert jpg.iptc == _IPTC and exif_orientation(jpg.exif) == 1
        assert read_metadata(encode_image(img, ".png"), ".png").iptc is None  # PNG has no place for it


def test_xmp_about_data_after_the_main_image_is_dropped_with_a_note():
    # An Ultra HDR photo's XMP points at its gain map, which is not written: carrying it would mislead viewers.
    arr = np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    xmp = _XMP.replace(b"{o}", b"1").replace(b'xmp:Rating="4"', b'xmp:Rating="4" hdrgm:Version="1.0"')
    img = decode_image(embed_metadata(_encode(arr, ".jpg"), ".jpg", Metadata(exif=_exif(1), xmp=xmp)), "hdr.jpg")
    assert img.metadata.xmp is None and img.metadata.exif is not None
    assert read_metadata(encode_image(img, ".jpg"), ".jpg").xmp is None
    assert conversion_losses(img, ".jpg") == (
        "drops the input's XMP metadata, which describes data stored after the main image (an HDR gain map or a "
        "motion photo's video) that jdnet does not keep")


def _pillow_tiff(arr: np.ndarray, **tags) -> bytes:
    """An RGB TIFF written by Pillow with the given IFD0 tags (tag number -> value) and keyword options."""
    from PIL import Image as PILImage, TiffImagePlugin
    import io

    info = TiffImagePlugin.ImageFileDirectory_v2()
    for tag, value in tags.pop("ifd", {}).items():
        info[tag] = value
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, "TIFF", tiffinfo=info, **tags)
    return buf.getvalue()


def test_tiff_keeps_icc_and_xmp_and_says_what_a_format_drops(tiny):
    from PIL import Image as PILImage
    import io

    arr = np.random.default_rng(6).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    xmp = _XMP.replace(b"{o}", b"1")
    # Model in IFD0 and DateTimeOriginal in an EXIF sub-IFD (tag 34665), as a camera or scanner writes them.
    data = _pillow_tiff(arr, ifd={272: "jdnet-camera", 700: xmp, 34665: {0x9003: "2026:12:07 10:00:00"}},
                        icc_profile=_icc(3000))
    img = decode_image(data, "scan.tif")
    assert (img.metadata.icc, img.metadata.xmp, img.metadata.exif_damaged) == (_icc(3000), xmp, 0)
    out = encode_image(derain_image(tiny, img), ".tif")
    written = PILImage.open(io.BytesIO(out))  # an independent reader finds all three in the new IFD0
    assert written.info["icc_profile"] == _icc(3000) and bytes(written.tag_v2[700]) == xmp
    assert written.getexif()[272] == "jdnet-camera"
    assert written.getexif().get_ifd(34665) == {0x9003: "2026:12:07 10:00:00"}
    assert cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED).shape == (12, 16, 3)
    again = read_metadata(out, ".tif")
    assert (again.icc, again.xmp, again.exif) == (_icc(3000), xmp, img.metadata.exif)
    assert conversion_losses(img, ".tif") is None
    # The TIFF's EXIF (IFD0's descriptive tags and the EXIF sub-IFD) goes into other formats as an EXIF block.
    as_jpeg = PILImage.open(io.BytesIO(encode_image(img, ".jpg"))).getexif()
    assert as_jpeg[272] == "jdnet-camera" and as_jpeg.get_ifd(34665) == {0x9003: "2026:12:07 10:00:00"}
    jpeg = decode_image(embed_metadata(_encode(arr, ".jpg"), ".jpg", Metadata(exif=_exif(1), icc=_icc(), xmp=xmp)), "p.jpg")
    assert conversion_losses(jpeg, ".tiff") is None
    assert conversion_losses(jpeg, ".bmp") == (
        "drops the input's EXIF and XMP and ICC profile: jdnet does not write them into bmp files")
    assert conversion_losses(jpeg, ".png") is None


def _big_endian_gps_exif() -> bytes:
    """A big-endian EXIF block (as many cameras write): IFD0 = Make + GPS pointer; GPS = 'N', 52/1 30/1 155/10."""
    make = b"BigCam\x00\x00"
    ifd0 = struct.pack(">H", 2) + struct.pack(">HHII", 271, 2, 7, 38) + struct.pack(">HHII", 0x8825, 4, 1, 46)
    gps = struct.pack(">H", 2) + struct.pack(">HHI2s2x", 1, 2, 2, b"N\x00") + struct.pack(">HHII", 2, 5, 3, 46 + 30)
    gps += struct.pack(">I", 0) + struct.pack(">6I", 52, 1, 30, 1, 155, 10)
    return b"MM\x00*" + struct.pack(">I", 8) + ifd0 + struct.pack(">I", 0) + make + gps


def test_a_cameras_exif_with_gps_moves_between_jpeg_and_tiff_in_either_byte_order():
    from PIL import Image as PILImage
    import io

    arr = np.random.default_rng(9).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    exif = PILImage.Exif()
    exif[271], exif[274] = "RainCam", 6  # Make; the orientation is applied on read, so it must not travel
    exif[0x8825] = {1: "N", 2: (52.0, 30.0, 15.5), 6: 12.25}  # GPS: latitude ref, latitude, altitude (rationals)
    exif[0x8769] = {0x9003: "2025:01:01 00:00:00", 0x920A: 4.5}  # DateTimeOriginal, FocalLength
    out = io.BytesIO()
    PILImage.fromarray(arr).save(out, "JPEG", exif=exif.tobytes())
    img = decode_image(out.getvalue(), "p.jpg")
    tif = encode_image(img, ".tif")
    written = PILImage.open(io.BytesIO(tif)).getexif()
    assert written[271] == "RainCam" and 274 not in written  # the pixels are upright: no orientation tag
    assert written.get_ifd(0x8825) == {1: "N", 2: (52.0, 30.0, 15.5), 6: 12.25}
    assert written.get_ifd(0x8769) == {0x9003: "2025:01:01 00:00:00", 0x920A: 4.5}
    assert PILImage.open(io.BytesIO(tif)).size == (12, 16)  # turned upright once
    back = decode_image(tif, "p.tif")  # and from the TIFF into a JPEG again
    again = PILImage.open(io.BytesIO(encode_image(back, ".jpg"))).getexif()
    assert again[271] == "RainCam" and again.get_ifd(0x8825)[2] == (52.0, 30.0, 15.5)
    # Big-endian into the little-endian TIFF OpenCV writes: each value is re-encoded, not copied.
    big = decode_image(embed_metadata(_encode(arr, ".jpg"), ".jpg", Metadata(exif=_big_endian_gps_exif())), "b.jpg")
    written = PILImage.open(io.BytesIO(encode_image(big, ".tif"))).getexif()
    assert written[271] == "BigCam" and written.get_ifd(0x8825) == {1: "N", 2: (52.0, 30.0, 15.5)}


def test_a_tiff_whose_exif_directory_is_damaged_is_written_without_it_and_says_so():
    from PIL import Image as PILImage
    import io

    arr = np.random.default_rng(10).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, "TIFF", tiffinfo={34665: 10_000_000})  # points far past the end
    img = decode_image(buf.getvalue(), "bad-exif.tif")
    assert img.metadata.exif is None and img.metadata.exif_damaged == 1
    assert conversion_losses(img, ".tif") == "drops 1 damaged part of the input's EXIF (a sub-directory that cannot be read)"


def test_xmp_orientation_is_reset_when_a_tiff_orientation_tag_is_applied():
    arr = np.random.default_rng(7).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    img = decode_image(_pillow_tiff(arr, ifd={274: 6, 700: _XMP.replace(b"{o}", b"6")}), "r.tif")
    assert img.rgb.shape == (16, 12, 3)  # OpenCV applied the tag
    assert img.metadata.xmp == _XMP.replace(b"{o}", b"1")


@pytest.mark.parametrize("name, orientation, expected", [("444", 1, "444"), ("422", 1, "422"), ("420", 1, "420"),
                                                          ("422", 6, "440")])  # turned upright: 4:2:2 becomes 4:4:0
def test_jpeg_output_keeps_a_jpeg_inputs_chroma_subsampling(name, orientation, expected, tiny):
    from jdnet_cli.io.image_headers import jpeg_sampling

    factor = lambda n: getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{n}")
    arr = np.random.default_rng(8).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    data = embed_metadata(_encode(arr, ".jpg", [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor(name)]), ".jpg",
                          Metadata(exif=_exif(orientation)))
    assert jpeg_sampling(data) == factor(name)
    img = derain_image(tiny, decode_image(data, "s.jpg"))
    assert jpeg_sampling(encode_image(img, ".jpg")) == factor(expected)  # was always 4:2:0
    png = decode_image(_encode(arr, ".png"), "p.png")
    assert png.jpeg_sampling is None and jpeg_sampling(encode_image(png, ".jpg")) == factor("420")  # OpenCV's default
    gray = decode_image(_encode(arr[..., 0], ".jpg"), "g.jpg")
    assert gray.jpeg_sampling is None and jpeg_sampling(encode_image(gray, ".jpg")) is None  # one component


def test_png_text_dpi_and_gamma_are_carried_to_png_outputs(tiny):
    from PIL import Image as PILImage, PngImagePlugin
    import io

    arr = np.random.default_rng(9).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "J. Photographer")
    info.add_text("Description", "rainy street " * 40, zip=True)  # zTXt
    info.add(b"gAMA", struct.pack(">I", 45455))
    info.add(b"tIME", bytes(7))  # "last modified": not true of the output, so not carried
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, "PNG", pnginfo=info, dpi=(300, 300))
    img = decode_image(buf.getvalue(), "scan.png")
    out = encode_image(derain_image(tiny, img), ".png")
    written = PILImage.open(io.BytesIO(out))
    assert written.info["dpi"] == pytest.approx((300, 300), abs=0.01) and written.info["gamma"] == pytest.approx(0.45455)
    assert written.text == {"Author": "J. Photographer", "Description": "rainy street " * 40}
    chunks = [out[i + 4 : i + 8] for i in range(8, len(out) - 4) if out[i + 4 : i + 8] in (b"tIME", b"IDAT", b"pHYs", b"gAMA")]
    assert chunks.index(b"pHYs") < chunks.index(b"IDAT") and chunks.index(b"gAMA") < chunks.index(b"IDAT")
    assert b"tIME" not in chunks and cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED).shape == (12, 16, 3)
    assert b"Author" not in encode_image(img, ".jpg")  # PNG chunks go to PNG outputs only


@pytest.mark.parametrize("orientation, expected", [(1, (300, 150)), (6, (150, 300))])  # 6: turned, so X and Y swap
@pytest.mark.parametrize("src_ext", [".jpg", ".png", ".tif"])
@pytest.mark.parametrize("dst_ext", [".jpg", ".png", ".tif"])
def test_resolution_is_carried_between_jpeg_png_and_tiff(src_ext, dst_ext, orientation, expected, tiny):
    from PIL import Image as PILImage
    import io

    arr = np.random.default_rng(10).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    if src_ext == ".tif":  # the TIFF's own Orientation tag, which OpenCV applies
        PILImage.fromarray(arr).save(buf, "TIFF", dpi=(300, 150), tiffinfo={274: orientation})
    else:
        PILImage.fromarray(arr).save(buf, "JPEG" if src_ext == ".jpg" else "PNG", dpi=(300, 150),
                                     exif=b"Exif\x00\x00" + _exif(orientation))
    img = decode_image(buf.getvalue(), "scan" + src_ext)
    assert img.metadata.dpi == pytest.approx(expected, abs=0.02)  # PNG stores whole dots per metre
    out = encode_image(derain_image(tiny, img), dst_ext)
    assert PILImage.open(io.BytesIO(out)).info["dpi"] == pytest.approx(expected, abs=0.02)  # OpenCV alone states none
    assert read_metadata(encode_image(decode_image(_encode(arr, ".bmp"), "b.bmp"), dst_ext), dst_ext).dpi is None


def test_a_lossless_webp_stays_lossless_unless_a_quality_is_given(tiny):
    from jdnet_cli.io.image_headers import webp_is_lossless

    arr = np.random.default_rng(11).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    lossless = decode_image(_encode(arr, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), "l.webp")
    lossy = decode_image(_encode(arr, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 90]), "y.webp")
    assert (lossless.webp_lossless, lossy.webp_lossless) == (True, False)
    derained = derain_image(tiny, lossless)
    out = encode_image(derained, ".webp")
    assert webp_is_lossless(out)  # was lossy at quality 95
    expected = np.round(np.clip(derained.rgb, 0, 1) * 255).astype(np.uint8)[..., ::-1]
    assert np.array_equal(cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED), expected)
    assert not webp_is_lossless(encode_image(derained, ".webp", quality=80))  # asked for: as asked
    assert not webp_is_lossless(encode_image(lossy, ".webp")) and webp_is_lossless(encode_image(lossy, ".webp", 100))
    png = decode_image(_encode(arr, ".png"), "p.png")
    assert not webp_is_lossless(encode_image(png, ".webp"))  # --ext webp from PNG: lossy at 95, for size


def _exif_with_thumbnail(thumbnail: bytes) -> bytes:
    """Big-endian EXIF: IFD0 with Make, then IFD1 pointing at a JPEG thumbnail, as cameras write it."""
    make = b"jdnet-camera\x00"
    ifd0 = 8
    ifd1 = ifd0 + 2 + 12 + 4
    make_at = ifd1 + 2 + 24 + 4
    thumb_at = make_at + len(make)
    out = b"MM\x00*" + struct.pack(">I", ifd0)
    out += struct.pack(">H", 1) + struct.pack(">HHII", 0x010F, 2, len(make), make_at) + struct.pack(">I", ifd1)
    out += struct.pack(">H", 2) + struct.pack(">HHII", 0x0201, 4, 1, thumb_at) + struct.pack(">HHII", 0x0202, 4, 1, len(thumbnail))
    return out + struct.pack(">I", 0) + make + thumbnail


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp"])
def test_the_exif_thumbnail_of_the_rainy_input_is_not_carried(ext, tiny):
    from PIL import Image as PILImage, ExifTags
    import io

    arr = np.random.default_rng(12).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    exif = _exif_with_thumbnail(_encode(arr[::4, ::4], ".jpg"))
    data = embed_metadata(_encode(arr, ".jpg"), ".jpg", Metadata(exif=exif))
    assert PILImage.open(io.BytesIO(data)).getexif().get_ifd(ExifTags.IFD.IFD1)  # a viewer would show the rainy one
    out = encode_image(derain_image(tiny, decode_image(data, "t.jpg")), ext)
    written = PILImage.open(io.BytesIO(out)).getexif()
    assert written[ExifTags.Base.Make] == "jdnet-camera" and written.get_ifd(ExifTags.IFD.IFD1) == {}
    assert read_metadata(out, ext).exif == exif[:22] + bytes(4) + exif[26:]  # only the link to IFD1 changed


def test_webp_with_alpha_keeps_alpha_when_metadata_is_added():
    arr = np.random.default_rng(2).integers(0, 256, (10, 12, 4), dtype=np.uint8)
    out = embed_metadata(_encode(arr, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), ".webp", Metadata(exif=_exif(1)))
    assert out[12:16] == b"VP8X" and out[20] & 0x10  # alpha flag set
    assert np.array_equal(cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED), arr)


# --- pixels: alpha, bit depth, grayscale, tiny ------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_alpha_passes_through_bit_for_bit(dtype, tiny):
    hi = np.iinfo(dtype).max
    bgra = np.random.default_rng(3).integers(0, hi + 1, (19, 23, 4)).astype(dtype)
    img = decode_image(_encode(bgra, ".png"), "a.png")
    out_img = derain_image(tiny, img)
    out = cv2.imdecode(np.frombuffer(encode_image(out_img, ".png"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.dtype == dtype and out.shape == (19, 23, 4)
    assert np.array_equal(out[..., 3], bgra[..., 3])
    expected = np.round(tiny(bgra[..., 2::-1].astype(np.float32) / hi) * hi).astype(dtype)[..., ::-1]
    assert np.array_equal(out[..., :3], expected)
    assert not np.array_equal(out[..., :3], bgra[..., :3])  # the colour channels were derained


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16_bit_round_trip_has_no_8_bit_detour(ext, identity, tiny):
    bgr = np.random.default_rng(4).integers(0, 65536, (21, 17, 3)).astype(np.uint16)
    img = decode_image(_encode(bgr, ext), "d" + ext)
    assert img.bit_depth == 16
    same = cv2.imdecode(np.frombuffer(encode_image(derain_image(identity, img), ext), np.uint8), cv2.IMREAD_UNCHANGED)
    assert same.dtype == np.uint16 and np.array_equal(same, bgr)
    out = cv2.imdecode(np.frombuffer(encode_image(derain_image(tiny, img), ext), np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16
    assert np.count_nonzero(out % 257) > out.size // 2  # not 8-bit values scaled up


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (30, 41)])
def test_grayscale_in_grayscale_out_any_size(dtype, shape, tiny):
    gray = np.random.default_rng(6).integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    img = decode_image(_encode(gray, ".png"), "g.png")
    assert img.grayscale
    out = cv2.imdecode(np.frombuffer(encode_image(derain_image(tiny, img), ".png"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.dtype == dtype and out.shape == shape


def _png_gray_alpha(arr: np.ndarray) -> bytes:
    """PNG colour type 4 written by hand (OpenCV cannot write it), 8 or 16 bit."""
    h, w, _ = arr.shape
    bits = 16 if arr.dtype == np.uint16 else 8
    raw = b"".join(b"\0" + arr[y].astype(">u2" if bits == 16 else np.uint8).tobytes() for y in range(h))

    def chunk(ctype: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, 4, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gray_alpha_png_comes_out_gray_alpha_with_alpha_bit_exact(dtype, tiny):
    hi = np.iinfo(dtype).max
    ga = np.random.default_rng(8).integers(0, hi + 1, (13, 18, 2)).astype(dtype)
    img = decode_image(_png_gray_alpha(ga), "ga.png")
    assert img.grayscale and img.alpha is not None
    meta = Metadata(exif=_exif(1), icc=_icc(space=b"GRAY"))
    img.metadata = meta
    data = encode_image(derain_image(tiny, img), ".png")
    assert data[25] == 4 and data[24] == (16 if dtype == np.uint16 else 8)  # IHDR: grey+alpha, same depth
    assert read_metadata(data, ".png") == meta
    out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # OpenCV expands it to BGRA
    assert out.dtype == dtype and out.shape == (13, 18, 4)
    assert np.array_equal(out[..., 3], ga[..., 1])
    rgb = np.repeat(ga[..., :1].astype(np.float32) / hi, 3, axis=2)
    expected = np.round(np.clip(tiny(rgb).mean(axis=2), 0, 1) * hi).astype(dtype)
    assert np.array_equal(out[..., 0], expected) and np.array_equal(out[..., 1], expected)
    assert not np.array_equal(expected, ga[..., 0])
    as_tiff = cv2.imdecode(np.frombuffer(encode_image(img, ".tif"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert as_tiff.shape == (13, 18, 4) and np.array_equal(as_tiff[..., 3], ga[..., 1])  # RGBA where grey+alpha can't go


def _tiff_gray(arr: np.ndarray, orientation: int, big_endian: bool) -> bytes:
    """An uncompressed 8-bit greyscale TIFF with an Orientation tag, written by hand."""
    o = ">" if big_endian else "<"
    h, w = arr.shape
    entries = [(256, w), (257, h), (258, 8), (259, 1), (262, 1), (273, None), (274, orientation), (277, 1), (278, h),
               (279, w * h)]
    pixels_at = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack(o + "H", len(entries))
    for tag, value in entries:
        if tag in (273, 279):
            ifd += struct.pack(o + "HHII", tag, 4, 1, pixels_at if value is None else value)
        else:
            ifd += struct.pack(o + "HHIHH", tag, 3, 1, value, 0)
    return (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(o + "I", 8) + ifd + struct.pack(o + "I", 0) + arr.tobytes()


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("orientation,upright", [(1, lambda a: a), (3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)),
                                                 (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_tiff_orientation_tag_is_applied(orientation, upright, big_endian):
    stored = np.arange(4 * 7, dtype=np.uint8).reshape(4, 7) * 9
    img = decode_image(_tiff_gray(stored, orientation, big_endian), "o.tif")
    assert img.grayscale
    assert np.array_equal(np.round(img.rgb[..., 0] * 255).astype(np.uint8), upright(stored))


def test_conversion_losses_name_what_the_target_format_cannot_hold():
    rgb = np.zeros((2, 2, 3), np.float32)
    alpha16 = np.zeros((2, 2), np.uint16)
    assert conversion_losses(Image(rgb=rgb, bit_depth=16, alpha=alpha16), ".png") is None
    assert conversion_losses(Image(rgb=rgb, bit_depth=16, alpha=alpha16), "tif") is None
    assert conversion_losses(Image(rgb=rgb, bit_depth=16, alpha=alpha16), ".webp") == (
        "drops 16-bit depth (written as 8-bit): webp cannot hold it; --ext png keeps everything")
    assert conversion_losses(Image(rgb=rgb, bit_depth=16, alpha=alpha16), ".JPG") == (
        "drops the alpha channel and 16-bit depth (written as 8-bit): jpg cannot hold them; --ext png keeps everything")
    assert conversion_losses(Image(rgb=rgb, bit_depth=32), ".png") == (
        "drops 32-bit depth (written as 16-bit): png cannot hold it; --ext tif keeps everything")
    ramp = np.repeat(np.linspace(0, 1, 1000, dtype=np.float32)[None, :, None], 3, axis=2)
    png = encode_image(Image(rgb=ramp, bit_depth=32), ".png")
    assert png[24] == 16  # IHDR bit depth: a float TIFF's fine steps are not cut to 256 levels
    assert len(np.unique(decode_image(png, "f.png").rgb)) == 1000
    assert conversion_losses(Image(rgb=rgb), ".bmp") is None
    assert conversion_losses(Image(rgb=rgb, alpha=alpha16, frames=3, format=".webp"), ".jpg") == (
        "drops the alpha channel: jpg cannot hold it; --ext png keeps everything; "
        "holds only the first of the input's 3 frames (jdnet derains still images)")
    assert conversion_losses(Image(rgb=rgb, frames=2, format=".tif"), ".tif") == (
        "holds only the first of the input's 2 pages (jdnet derains still images)")


def _tiff_pages(*subfile_types: int | None, big_endian: bool = False) -> bytes:
    """A TIFF whose IFD chain has one 1x1 IFD per entry: NewSubfileType given (LONG), or none."""
    o = ">" if big_endian else "<"
    out = bytearray((b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(o + "I", 8))
    for i, kind in enumerate(subfile_types):
        entries = [struct.pack(o + "HHII", 256, 4, 1, 1), struct.pack(o + "HHII", 257, 4, 1, 1)]
        if kind is not None:
            entries.insert(0, struct.pack(o + "HHII", 254, 4, 1, kind))
        start = len(out)
        nxt = 0 if i == len(subfile_types) - 1 else start + 2 + 12 * len(entries) + 4
        out += struct.pack(o + "H", len(entries)) + b"".join(entries) + struct.pack(o + "I", nxt)
    return bytes(out)


def test_frame_count_finds_animations_and_pages_but_not_thumbnails():
    from PIL import Image as PILImage  # imageio's dependency: writes APNG and animated WebP
    import io

    frames = [PILImage.fromarray(np.full((6, 8, 3), v, np.uint8)) for v in (10, 200, 90)]

    def saved(fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        frames[0].save(buf, fmt, **kw)
        return buf.getvalue()

    assert frame_count(saved("PNG", save_all=True, append_images=frames[1:]), ".png") == 3
    assert frame_count(saved("PNG"), ".png") == 1
    assert frame_count(saved("WEBP", save_all=True, append_images=frames[1:], lossless=True), ".webp") == 3
    assert frame_count(saved("WEBP", lossless=True), ".webp") == 1
    assert frame_count(saved("TIFF", save_all=True, append_images=frames[1:2]), ".tif") == 2
    assert frame_count(saved("TIFF"), ".tif") == 1
    # A page plus its reduced-resolution preview (NewSubfileType bit 0) is one page; bit 1 marks pages.
    assert frame_count(_tiff_pages(0, 1), ".tif") == 1
    assert frame_count(_tiff_pages(2, 2, 2, big_endian=True), ".tif") == 3
    assert frame_count(_tiff_pages(None, None), ".tif") == 2
    # A loop in the IFD chain or a cut-off file ends the count; it never raises.
    looped = bytearray(_tiff_pages(None))
    looped[-4:] = struct.pack("<I", 8)
    assert frame_count(bytes(looped), ".tif") == 1
    assert frame_count(_tiff_pages(None, None)[:30], ".tif") == 1
    # JPEG: the MPF index's NumberOfImages (Pillow writes it little-endian; cameras also big-endian).
    assert frame_count(saved("MPO", save_all=True, append_images=frames[1:]), ".jpg") == 3
    assert frame_count(saved("JPEG"), ".jpg") == 1
    ifd = struct.pack(">H", 2) + struct.pack(">HHII", 0xB000, 7, 4, 0x30313030) + struct.pack(">HHII", 0xB001, 4, 1, 2)
    mpf = b"MPF\x00" + b"MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0)
    plain = saved("JPEG")
    big = plain[:2] + b"\xff\xe2" + struct.pack(">H", len(mpf) + 2) + mpf + plain[2:]
    assert frame_count(big, ".jpg") == 2
    assert frame_count(big[: 2 + 4 + 12], ".jpg") == 1  # index cut off: cannot tell, never raises
    mpo = decode_image(saved("MPO", save_all=True, append_images=frames[1:]))
    assert mpo.frames == 3 and mpo.format == ".jpg" and np.allclose(mpo.rgb, 10 / 255, atol=2 / 255)
    assert conversion_losses(mpo, ".jpg") == (
        "holds only the first of the input's 3 images (the others, such as an HDR gain map, depth map or second "
        "view, are dropped)")
    # decode_image reads the first frame and remembers how many there were.
    img = decode_image(saved("WEBP", save_all=True, append_images=frames[1:], lossless=True))
    assert img.frames == 3 and img.format == ".webp" and np.allclose(img.rgb, 10 / 255)


def _icc_for(space: bytes) -> bytes:
    """A 128-byte ICC header claiming ``space`` (bytes 16-20), enough for jdnet's colour-space check."""
    header = bytearray(128)
    header[0:4] = (128).to_bytes(4, "big")
    header[12:16], header[16:20], header[20:24], header[36:40] = b"mntr", space, b"XYZ ", b"acsp"
    return bytes(header)


def test_an_icc_profile_for_other_colours_than_the_output_holds_is_dropped_with_a_note():
    rgb = np.random.default_rng(2).random((16, 16, 3), dtype=np.float32)
    # OpenCV hands a CMYK JPEG over as RGB: its CMYK profile would make viewers misread the output.
    cmyk = Image(rgb=rgb, metadata=Metadata(icc=_icc_for(b"CMYK"), xmp=b"<x/>"))
    for ext in (".jpg", ".png", ".webp", ".tif"):
        out = read_metadata(encode_image(cmyk, ext), ext if ext != ".tif" else ".tif")
        assert out.icc is None and out.xmp == b"<x/>", ext
        assert conversion_losses(cmyk, ext) == "drops the input's ICC profile: it describes CMYK colours and the output is RGB"
    # A grey profile stays with grey pixels and goes where they are written as colour (WebP has no grey).
    grey = Image(rgb=np.repeat(rgb[..., :1], 3, axis=2), grayscale=True, metadata=Metadata(icc=_icc_for(b"GRAY")))
    assert read_metadata(encode_image(grey, ".png"), ".png").icc == _icc_for(b"GRAY")
    assert read_metadata(encode_image(grey, ".jpg"), ".jpg").icc == _icc_for(b"GRAY")
    assert conversion_losses(grey, ".png") is None
    assert read_metadata(encode_image(grey, ".webp"), ".webp").icc is None
    assert conversion_losses(grey, ".webp") == "drops the input's ICC profile: it describes GRAY colours and the output is RGB"
    # The usual case is untouched.
    srgb = Image(rgb=rgb, metadata=Metadata(icc=_icc_for(b"RGB ")))
    assert read_metadata(encode_image(srgb, ".jpg"), ".jpg").icc == _icc_for(b"RGB ")
    assert conversion_losses(srgb, ".jpg") is None


def test_a_side_longer_than_opencv_reads_fails_in_one_line_and_formats_limits_are_named():
    from PIL import Image as PILImage
    import io

    buf = io.BytesIO()
    PILImage.fromarray(np.full((1, (1 << 20) + 1), 128, np.uint8)).save(buf, "TIFF")
    with pytest.raises(JDNetError, match=r"^wide\.tif: 1048577x1 has a side over 1,048,576 px, more than OpenCV's decoder reads$"):
        decode_image(buf.getvalue(), "wide.tif")  # was a cv2.error traceback that ended the whole batch
    wide = Image(rgb=np.zeros((2, 16384, 3), np.float32))
    with pytest.raises(JDNetError, match=r"^a webp image holds at most 16383 px a side, this one is 16384x2; "):
        encode_image(wide, ".webp")
    assert decode_image(encode_image(wide, ".png"), "wide.png").rgb.shape == (2, 16384, 3)


def test_grey_transparency_is_kept_from_a_png_trns_chunk_and_a_grey_alpha_tiff():
    from PIL import Image as PILImage
    import io

    grey = np.full((8, 8), 200, np.uint8)
    grey[:4] = 0
    buf = io.BytesIO()
    PILImage.fromarray(grey, "L").save(buf, "PNG", transparency=0)  # grey level 0 is transparent
    img = decode_image(buf.getvalue(), "trns.png")
    assert img.grayscale and img.alpha is not None
    assert (img.alpha[:4] == 0).all() and (img.alpha[4:] == 255).all()  # was opaque everywhere
    back = PILImage.open(io.BytesIO(encode_image(img, ".png")))
    assert back.mode == "LA" and np.array_equal(np.asarray(back.getchannel("A")), img.alpha)
    bits = io.BytesIO()  # a 1-bit grey PNG: OpenCV widens the levels, so the transparent level must follow
    PILImage.fromarray(grey > 0).save(bits, "PNG", transparency=0)
    assert (decode_image(bits.getvalue(), "bits.png").alpha[:4] == 0).all()
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 0], la[4:, :, 1] = 200, 255
    tif = io.BytesIO()
    PILImage.fromarray(la, "LA").save(tif, "TIFF")
    img = decode_image(tif.getvalue(), "la.tif")
    assert img.grayscale and np.array_equal(img.alpha, la[..., 1])
    assert np.asarray(PILImage.open(io.BytesIO(encode_image(img, ".tif"))))[..., 3].tolist() == la[..., 1].tolist()


def test_png_text_and_jpeg_iptc_dropped_by_another_format_are_named_in_a_note():
    from PIL import Image as PILImage, PngImagePlugin
    import io

    arr = np.random.default_rng(11).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    text = PngImagePlugin.PngInfo()
    text.add_text("Title", "Rain on the river")
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, "PNG", pnginfo=text)
    img = decode_image(buf.getvalue(), "t.png")
    assert conversion_losses(img, ".png") is None
    assert conversion_losses(img, ".jpg") == ("drops the input's PNG text (title, author, copyright, ...): jdnet does "
                                              "not write it into jpg files")
    jpeg = decode_image(embed_metadata(_encode(arr, ".jpg"), ".jpg", Metadata(iptc=_IPTC)), "i.jpg")
    assert jpeg.metadata.iptc is not None and conversion_losses(jpeg, ".jpg") is None
    assert conversion_losses(jpeg, ".png") == ("drops the input's IPTC block (caption, keywords, credit): jdnet does "
                                               "not write it into png files")


def test_exif_into_tiff_keeps_every_descriptive_tag_and_the_interop_directory_and_names_damage():
    from PIL import Image as PILImage
    import io

    arr = np.random.default_rng(12).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    exif = PILImage.Exif()
    exif[271], exif[0x4746], exif[0x9C9B] = "QACam", 5, "Rainy day".encode("utf-16-le") + b"\0\0"  # Make, Rating, XPTitle
    exif.get_ifd(0x8769)[0x829A] = 0.004
    exif.get_ifd(0x8769)[0xA005] = {1: "R98"}  # the Interoperability directory under EXIF
    out = io.BytesIO()
    PILImage.fromarray(arr).save(out, "JPEG", exif=exif)
    img = decode_image(out.getvalue(), "rich.jpg")
    written = PILImage.open(io.BytesIO(encode_image(img, ".tif"))).getexif()
    assert (written[271], written[0x4746], written[0x9C9B]) == ("QACam", 5, exif[0x9C9B])  # were: Make only
    assert dict(written.get_ifd(0xA005)) == {1: "R98"}
    assert conversion_losses(img, ".tif") is None
    # An EXIF pointer past the end: the rest still goes into the TIFF, and a note names what does not.
    block = bytearray(exif.tobytes()[6:])
    order = "<" if block[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", block[4:8])[0]
    for i in range(struct.unpack(order + "H", block[ifd : ifd + 2])[0]):
        at = ifd + 2 + 12 * i
        if struct.unpack(order + "H", block[at : at + 2])[0] == 0x8769:
            block[at + 8 : at + 12] = struct.pack(order + "I", 0xFFFFFF)
    damaged = decode_image(embed_metadata(_encode(arr, ".jpg"), ".jpg", Metadata(exif=bytes(block))), "dmg.jpg")
    written = PILImage.open(io.BytesIO(encode_image(damaged, ".tif"))).getexif()
    assert written[271] == "QACam" and 0x8769 not in written  # was: no EXIF at all, and no note
    assert conversion_losses(damaged, ".tif") == ("drops 1 damaged part of the input's EXIF (a sub-directory that "
                                                  "cannot be read)")
    assert conversion_losses(damaged, ".jpg") is None  # copied as it is into a JPEG


def test_a_sixteen_bit_grey_alpha_tiff_is_derained_and_its_unread_alpha_noted():
    h, w = 12, 16
    pixels = np.dstack([np.full((h, w), 30000), np.full((h, w), 65535)]).astype("<u2").tobytes()
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 2, None), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, None),
            (277, 3, 1, 2), (278, 4, 1, h), (279, 4, 1, len(pixels)), (338, 3, 1, 2)]
    start = 8 + 2 + 12 * len(tags) + 4
    data = b"II*\x00" + struct.pack("<IH", 8, len(tags))
    for tag, typ, n, value in tags:
        field = (struct.pack("<HH", 16, 16) if tag == 258 else struct.pack("<I", start) if tag == 273
                 else struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
        data += struct.pack("<HHI", tag, typ, n) + field
    img = decode_image(data + struct.pack("<I", 0) + pixels, "la16.tif")  # was a failure: Pillow cannot open it
    assert img.rgb.shape == (12, 16, 3) and img.alpha is None
    assert conversion_losses(img, ".png") == ("drops the input's alpha channel: jdnet reads the alpha of 8-bit grey + "
                                              "alpha TIFFs only")
