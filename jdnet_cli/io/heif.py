"""HEIC/HEIF photos (what phones shoot) through the optional pillow-heif back end (the ``heif`` extra).

An HEVC decoder and encoder is far beyond what this project should write, and OpenCV's wheel has none,
so this one format leans on libheif (libde265 to read, x265 to write) as packaged by pillow-heif. It is
imported only when a HEIF file is met, so the rest of jdnet works without it.

Arrays go in and out in OpenCV's layout (B, G, R[, A]; uint8, or uint16 on the full 16-bit scale) so
that images.py treats every format alike.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import JDNetError, failure_reason, first_line
from .image_metadata import Metadata, exif_body, finish_metadata, pillow_save_options, turned_upright

HEIF_EXTENSIONS = (".heic", ".heif")
INSTALL_HINT = "pip install pillow-heif"  # what the 'heif' extra adds; right for a checkout and an installed copy
_NCLX_KEYS = ("color_primaries", "transfer_characteristics", "matrix_coefficients", "full_range_flag")


def _backend() -> Any:
    try:
        import pillow_heif
    except ImportError:
        raise JDNetError(f"HEIC support is not installed ({INSTALL_HINT})") from None
    return pillow_heif


def heif_support_missing() -> str | None:
    """Why HEIC files cannot be read or written here, or None when they can."""
    return failure_reason(_backend)


@dataclass
class HeifPicture:
    """A decoded HEIF primary image in OpenCV's layout, with what is needed to write it back."""

    pixels: np.ndarray  # H x W x 3|4 (B, G, R[, A]) or H x W grey; uint8, or uint16 on the full 16-bit scale
    bit_depth: int  # as stored: 8, 10 or 12
    metadata: Metadata
    chroma: int | None  # 420, 422 or 444
    images: int  # top-level images plus the primary's depth and auxiliary images (e.g. an HDR gain map)


def heif_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the primary image, as displayed, without decoding it."""
    return _open(data).size


def _open(data: bytes) -> Any:
    heif = _backend()
    try:
        return heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
    except (ValueError, RuntimeError, OSError, SyntaxError) as err:
        raise JDNetError(f"corrupt HEIC data ({first_line(err)})") from None



def decode_heif(data: bytes) -> HeifPicture:
    """Decode the primary image, turned upright by the file's own transforms (its EXIF orientation is not applied)."""
    heif = _open(data)
    try:
        rgb = np.asarray(heif)
    except (ValueError, RuntimeError, OSError) as err:
        raise JDNetError(f"corrupt HEIC data ({first_line(err)})") from None
    depth = int(heif.info.get("bit_depth") or 8)
    if rgb.dtype == np.uint16 and depth < 16:
        # libheif puts 10/12-bit samples in the high bits; rescale so that full white is 65535, not 65472.
        rgb = np.round((rgb >> (16 - depth)).astype(np.float32) * (65535.0 / ((1 << depth) - 1))).astype(np.uint16)
    if rgb.ndim == 3:
        rgb = rgb[..., [2, 1, 0, 3][: rgb.shape[2]]]
    info = heif.info
    meta = Metadata(exif=exif_body(info.get("exif")), icc=info.get("icc_profile") or None,
                    xmp=info.get("xmp") or None)
    nclx = info.get("nclx_profile")
    if nclx and not meta.icc:
        meta.nclx = tuple(int(nclx[k]) for k in _NCLX_KEYS)
    meta = finish_metadata(meta)
    # HEIF readers must ignore EXIF orientation (the irot/imir transforms, already applied, rule), so
    # the carried tags must say upright, or viewers of the output would turn it a second time.
    turned_upright(meta, 1)
    images = len(heif) + len(info.get("depth_images") or []) + sum(len(ids) for ids in (info.get("aux") or {}).values())
    chroma = info.get("chroma")
    return HeifPicture(np.ascontiguousarray(rgb), depth, meta, int(chroma) if chroma else None, max(images, 1))



def encode_heif(pixels: np.ndarray, metadata: Metadata, quality: int, chroma: int | None = None) -> bytes:
    """HEIC bytes of an OpenCV-layout array (uint8, or uint16 written as 10-bit), carrying EXIF, XMP and ICC."""
    heif = _backend()
    if pixels.ndim == 3:
        pixels = pixels[..., [2, 1, 0, 3][: pixels.shape[2]]]
    high = pixels.dtype == np.uint16
    if high:
        # The encoder takes 10-bit samples in the high bits of 16.
        pixels = (np.round(pixels.astype(np.float32) * (1023.0 / 65535.0)).astype(np.uint16) << 6)
    if pixels.ndim == 2 and high:
        pixels = np.repeat(pixels[..., None], 3, axis=2)  # no 16-bit grey mode: store as RGB
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels] + (";16" if high else "")
    pixels = np.ascontiguousarray(pixels)
    image = heif.from_bytes(mode=mode, size=(pixels.shape[1], pixels.shape[0]), data=pixels.tobytes())
    extra: dict[str, Any] = pillow_save_options(metadata)
    if not metadata.icc and metadata.nclx:
        # Without it the encoder writes its sRGB default, and a Display P3 or BT.2020 photo is read as sRGB.
        extra["nclx_profile"] = dict(zip(_NCLX_KEYS, metadata.nclx))
    if chroma in (420, 422, 444):
        extra["chroma"] = chroma
    out = io.BytesIO()
    try:
        image.save(out, quality=quality, **extra)
    except (ValueError, RuntimeError, OSError) as err:
        raise JDNetError(f"could not encode image as HEIC ({first_line(err)})") from None
    return out.getvalue()
