"""AVIF photos (what browsers save and some phones shoot) through Pillow's AVIF plugin (libavif: dav1d, aom).

OpenCV's wheel reads no AVIF, and an AV1 codec is far beyond what this project should write. Pillow is
already installed with imageio, and from 11.3 its wheels carry libavif, so this costs no new package.
Pillow's plugin reads and writes 8 bits per sample only: a 10- or 12-bit AVIF is read at 8 bits (the
caller is told, so a note can say so).

Arrays go in and out in OpenCV's layout (B, G, R[, A] or grey; uint8) so that images.py treats every
format alike. Colour facts Pillow does not hand over (the nclx colour description, bit depth, chroma
layout) are read from the container's item properties.
"""
from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import JDNetError, failure_reason, first_line
from .image_headers import avif_properties
from .image_metadata import Metadata, exif_body, finish_metadata, pillow_save_options

AVIF_EXTENSIONS = (".avif",)
INSTALL_HINT = "pip install 'pillow>=11.3'"  # the first Pillow whose wheels read and write AVIF
_NCLX_FIELDS = ">HHHB"  # colour primaries, transfer characteristics, matrix coefficients, full-range flag (top bit)
_SUBSAMPLING = {420: "4:2:0", 422: "4:2:2", 444: "4:4:4"}


def _backend() -> Any:
    try:
        from PIL import AvifImagePlugin, Image
    except ImportError:
        raise JDNetError(f"AVIF support is not installed ({INSTALL_HINT})") from None
    if not AvifImagePlugin.SUPPORTED:
        raise JDNetError(f"AVIF support is not installed ({INSTALL_HINT})")
    # jdnet checks the header's size against --max-pixels before decoding; Pillow's own, lower guard
    # would refuse (or warn about) images the user allowed.
    Image.MAX_IMAGE_PIXELS = None
    return Image


def avif_support_missing() -> str | None:
    """Why AVIF files cannot be read or written here, or None when they can."""
    return failure_reason(_backend)


@dataclass
class AvifPicture:
    """A decoded AVIF primary image in OpenCV's layout, with what is needed to write it back."""

    pixels: np.ndarray  # H x W x 3|4 (B, G, R[, A]) or H x W grey; uint8
    stored_bit_depth: int  # bits per sample in the file: 8, 10 or 12 (decoded at 8)
    metadata: Metadata  # EXIF orientation from the file's rotate/mirror properties, not yet applied
    chroma: int | None  # 420, 422 or 444; None for grey or when the file does not say
    frames: int  # 1, or the frames of an image sequence (animated AVIF)
    grey: bool  # monochrome (with or without alpha; grey + alpha comes as B = G = R plus A)


@dataclass
class _Coding:
    bit_depth: int = 8
    chroma: int | None = None
    nclx: tuple[int, int, int, int] | None = None


def _coding(data: bytes) -> _Coding:
    """Bit depth and chroma layout (from 'av1C') and the nclx colour description (from 'colr') of an AVIF."""
    coding = _Coding()
    try:
        props = avif_properties(data)
    except (struct.error, ValueError, IndexError):
        return coding
    for av1c in props.get(b"av1C", []):
        if len(av1c) < 3:
            continue
        flags = av1c[2]  # tier, high_bitdepth, twelve_bit, monochrome, subsampling x, subsampling y, position (2)
        depth = (12 if flags & 0x20 else 10) if flags & 0x40 else 8
        coding.bit_depth = max(coding.bit_depth, depth)
        if not flags & 0x10 and coding.chroma is None:  # the first colour plane's layout, not the alpha plane's
            coding.chroma = {(1, 1): 420, (1, 0): 422, (0, 0): 444}.get((flags >> 3 & 1, flags >> 2 & 1))
    for colr in props.get(b"colr", []):
        if colr[:4] == b"nclx" and len(colr) >= 11:
            primaries, transfer, matrix, full = struct.unpack(_NCLX_FIELDS, colr[4:11])
            coding.nclx = (primaries, transfer, matrix, full >> 7)
            break
    return coding



def decode_avif(data: bytes) -> AvifPicture:
    """Decode the primary image (the first frame of a sequence); its rotation is left to the EXIF orientation."""
    pil = _backend()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            picture = pil.open(io.BytesIO(data), formats=["AVIF"])
            picture.load()
        arr = np.asarray(picture)
    except (ValueError, RuntimeError, OSError, SyntaxError, EOFError) as err:
        raise JDNetError(f"corrupt AVIF data ({first_line(err)})") from None
    if arr.dtype != np.uint8:
        raise JDNetError(f"unsupported AVIF sample type {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha: OpenCV's layout has no such thing
        arr = np.dstack([arr[..., 0], arr[..., 0], arr[..., 0], arr[..., 1]])
    elif arr.ndim == 3:
        arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]]
    info = picture.info
    coding = _coding(data)
    # Pillow turns the file's rotate/mirror properties (which HEIF readers must apply and whose EXIF
    # orientation they must ignore) into the EXIF orientation it hands over, so applying that is right.
    meta = Metadata(exif=exif_body(info.get("exif")), icc=info.get("icc_profile") or None,
                    xmp=_bytes(info.get("xmp")))
    if coding.nclx and not meta.icc:
        meta.nclx = coding.nclx
    chroma = None if arr.ndim == 2 else coding.chroma
    frames = int(getattr(picture, "n_frames", 1) or 1)
    return AvifPicture(np.ascontiguousarray(arr), coding.bit_depth, finish_metadata(meta), chroma, frames,
                       picture.mode in ("L", "LA"))


def _bytes(value: Any) -> bytes | None:
    if not value:
        return None
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)



def encode_avif(pixels: np.ndarray, metadata: Metadata, quality: int, chroma: int | None = None) -> bytes:
    """AVIF bytes (8-bit) of an OpenCV-layout uint8 array, carrying EXIF, XMP and ICC; ``chroma`` 420/422/444."""
    pil = _backend()
    if pixels.dtype != np.uint8:
        raise JDNetError(f"AVIF output takes 8-bit samples, not {pixels.dtype}")
    if pixels.ndim == 3:
        pixels = pixels[..., [2, 1, 0, 3][: pixels.shape[2]]]
    mode = "L" if pixels.ndim == 2 else {3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    image = pil.fromarray(np.ascontiguousarray(pixels), mode)
    options: dict[str, Any] = {"quality": quality, **pillow_save_options(metadata)}
    if mode != "L":
        options["subsampling"] = _SUBSAMPLING.get(chroma or 420, "4:2:0")
    out = io.BytesIO()
    try:
        image.save(out, format="AVIF", **options)
    except (ValueError, RuntimeError, OSError) as err:
        raise JDNetError(f"could not encode image as AVIF ({first_line(err)})") from None
    return out.getvalue()
