"""Reading and writing still images as float RGB arrays, with formats, bit depth and atomic writes."""
from __future__ import annotations

import io
import re
import stat
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from ..errors import JDNetError
from .atomic import atomic_path
from .avif import AVIF_EXTENSIONS, decode_avif, encode_avif
from .heif import HEIF_EXTENSIONS, decode_heif, encode_heif, heif_size
from .image_headers import (check_complete, describe_unsupported, frame_count, header_size, jpeg_sampling, png_trns,
                            sniff_format, tiff_ifd0, webp_is_lossless)
from .image_metadata import (Metadata, apply_orientation, embed_metadata, exif_damage, exif_orientation, icc_colour_space,
                             png_chunk, read_metadata, turned_upright, unwritten_metadata)
from .native_stderr import call_capturing

# OpenCV logs libtiff's errors and warnings (a damaged LZW strip, a cut-off JPEG-in-TIFF) and decodes
# on regardless. Decoding and encoding run with fd 2 captured, so that text becomes the reason in our one
# line per bad file instead of stray output.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING)
# What libjpeg and libtiff say about data they decode anyway (filling the rest with grey or garbage).
_DAMAGE_SIGNS = ("Corrupt JPEG", "Premature end", "TIFF_Error")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp") + HEIF_EXTENSIONS + AVIF_EXTENSIONS
DEFAULT_MAX_PIXELS = 100_000_000


@dataclass
class Image:
    """Decoded image: ``rgb`` float32 H x W x 3 in [0, 1] plus what is needed to write it back."""

    rgb: np.ndarray
    bit_depth: int = 8
    alpha: np.ndarray | None = None  # untouched original alpha channel (native dtype)
    grayscale: bool = False
    jpeg_sampling: int | None = None  # a JPEG input's chroma subsampling, kept when the output is JPEG too
    webp_lossless: bool = False  # a lossless WebP input, written losslessly to WebP unless a quality is given
    heif_chroma: int | None = None  # a HEIC or AVIF input's chroma subsampling (420, 422, 444), kept in the same format
    stored_bit_depth: int | None = None  # bits per sample in the file when more than were decoded (a 10-bit AVIF)
    alpha_unread: bool = False  # the file has an alpha channel that could not be read (16-bit grey + alpha TIFF)
    metadata: Metadata = field(default_factory=Metadata)  # EXIF and XMP (orientation already applied: 1), ICC, IPTC
    format: str | None = None  # extension of the format the bytes were in, e.g. '.jpg'
    frames: int = 1  # frames or pages in the file (animated WebP/PNG, multi-page TIFF); only the first is read


def is_image_path(path: Path) -> bool:
    """True if the file extension is one we read."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def decode_image(data: bytes, name: str = "<image>", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Decode encoded image bytes into an upright :class:`Image`; raise JDNetError with a one-line reason.

    The header's claimed size is checked against ``max_pixels`` before any pixel is decoded.
    """
    if not data:
        raise JDNetError(f"{name}: empty file")
    fmt = sniff_format(data)
    if fmt is None:
        raise JDNetError(f"{name}: {describe_unsupported(data)}")
    if fmt == ".heic":
        return _decode_heif(data, name, max_pixels)
    size = header_size(data, fmt)
    if fmt == ".avif" and size is not None:
        return _decode_avif(data, name, max_pixels, size)
    if size is None:
        raise JDNetError(f"{name}: corrupt {fmt[1:].upper()} header")
    if size[0] * size[1] > max_pixels:
        raise JDNetError(f"{name}: {size[0]}x{size[1]} exceeds --max-pixels {max_pixels} (possible decompression bomb)")
    if max(size) > _OPENCV_MAX_SIDE:
        raise JDNetError(f"{name}: {size[0]}x{size[1]} has a side over {_OPENCV_MAX_SIDE:,} px, more than OpenCV's "
                         "decoder reads")
    try:
        check_complete(data, fmt)
    except JDNetError as err:
        raise JDNetError(f"{name}: {err}") from None
    meta = read_metadata(data, fmt)
    buf = np.frombuffer(data, np.uint8)
    kind = {".jpg": "JPEG", ".tif": "TIFF"}.get(fmt, fmt[1:].upper())
    try:
        arr, said = call_capturing(lambda: cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION))
    except cv2.error as err:  # OpenCV's own checks (sizes, layouts) raise instead of returning None
        raise JDNetError(f"{name}: corrupt or unsupported {kind} data ({_opencv_reason(err)})") from None
    library_says = _first_line(said)
    if arr is None:
        raise JDNetError(f"{name}: corrupt or unsupported {kind} data" + (f" ({library_says})" if library_says else ""))
    # libjpeg only warns on damaged scan data and fills the rest with grey: treat it as the error it is.
    damage = next((line for line in said.splitlines() if any(sign in line for sign in _DAMAGE_SIGNS)), None)
    if fmt in (".jpg", ".tif") and damage:
        raise JDNetError(f"{name}: corrupt {kind} data ({_library_text(damage)})")
    orientation = exif_orientation(meta.exif)
    if orientation != 1:
        arr = apply_orientation(arr, orientation)
        turned_upright(meta, orientation)
    if arr.ndim == 2:
        # OpenCV hands over a grey PNG with a transparent grey level (tRNS), or a grey + alpha TIFF, as
        # grey alone: the transparency would go without a word.
        alpha = _grey_png_transparency(data, arr) if fmt == ".png" else _grey_tiff_alpha(data, arr) if fmt == ".tif" else None
        if alpha is not None:
            arr = np.dstack([arr, arr, arr, alpha])  # both already upright
        alpha_unread = alpha is None and fmt == ".tif" and _tiff_samples(data) == 2
    else:
        alpha_unread = False
    img = _from_array(arr, name, max_pixels)
    if arr.ndim == 3 and arr.shape[2] == 4 and fmt in (".png", ".tif") and _grey_with_alpha(data, fmt):
        img.grayscale = True  # grey + alpha came as BGRA (from OpenCV, or made above): write grey + alpha back
    img.alpha_unread = alpha_unread
    img.metadata, img.format, img.frames = meta, fmt, frame_count(data, fmt)
    sampling = jpeg_sampling(data) if fmt == ".jpg" and not img.grayscale else None
    if sampling is not None and orientation >= 5:
        # Rotated by 90 degrees: horizontal subsampling (4:2:2) became vertical (4:4:0).
        sampling = int.from_bytes(bytes((b & 0xF) << 4 | b >> 4 for b in sampling.to_bytes(3, "big")), "big")
    img.jpeg_sampling = sampling
    img.webp_lossless = fmt == ".webp" and webp_is_lossless(data)
    return img


def _decode_heif(data: bytes, name: str, max_pixels: int) -> Image:
    try:
        check_complete(data, ".heic")
        width, height = heif_size(data)
        if width * height > max_pixels:
            raise JDNetError(f"{width}x{height} exceeds --max-pixels {max_pixels} (possible decompression bomb)")
        picture = decode_heif(data)
    except JDNetError as err:
        raise JDNetError(f"{name}: {err}") from None
    img = _from_array(picture.pixels, name, max_pixels)
    img.bit_depth = picture.bit_depth  # 10 or 12 bits travel in uint16 but are not 16-bit precision
    img.metadata, img.format, img.frames, img.heif_chroma = picture.metadata, ".heic", picture.images, picture.chroma
    return img


def _decode_avif(data: bytes, name: str, max_pixels: int, size: tuple[int, int]) -> Image:
    try:
        if size[0] * size[1] > max_pixels:
            raise JDNetError(f"{size[0]}x{size[1]} exceeds --max-pixels {max_pixels} (possible decompression bomb)")
        check_complete(data, ".avif")
        picture = decode_avif(data)
    except JDNetError as err:
        raise JDNetError(f"{name}: {err}") from None
    arr, meta = picture.pixels, picture.metadata
    orientation = exif_orientation(meta.exif)
    if orientation != 1:
        arr = apply_orientation(arr, orientation)
        turned_upright(meta, orientation)
    img = _from_array(arr, name, max_pixels)
    if arr.ndim == 3 and arr.shape[2] == 4 and picture.grey:
        img.grayscale = True
    img.metadata, img.format, img.frames = meta, ".avif", picture.frames
    img.heif_chroma = picture.chroma if orientation < 5 or picture.chroma != 422 else None  # 4:2:2 turned is 4:4:0
    img.stored_bit_depth = picture.stored_bit_depth if picture.stored_bit_depth > 8 else None
    return img


# OpenCV's decoders refuse a side longer than this (CV_IO_MAX_IMAGE_WIDTH / HEIGHT) with an exception.
_OPENCV_MAX_SIDE = 1 << 20


def _opencv_reason(err: Exception) -> str:
    """The readable part of a cv2.error ('(-215:Assertion failed) size.height <= ... in function ...')."""
    text = str(err).strip().splitlines()
    line = next((ln for ln in text if "error:" in ln), text[0] if text else type(err).__name__)
    return line.split("error:", 1)[-1].strip()[:200]


def _grey_with_alpha(data: bytes, fmt: str) -> bool:
    """A grey image with transparency: a PNG of colour type 4 (grey + alpha) or 0 with tRNS, a 2-sample TIFF."""
    if fmt == ".png":
        # IHDR is always the first chunk: colour type at byte 25.
        return len(data) > 25 and data[12:16] == b"IHDR" and (data[25] == 4 or data[25] == 0 and png_trns(data) is not None)
    return _tiff_samples(data) == 2


def _grey_png_transparency(data: bytes, grey: np.ndarray) -> np.ndarray | None:
    """The alpha a grey PNG's tRNS chunk makes (its one grey level transparent), at ``grey``'s depth; else None."""
    if len(data) < 26 or data[25] != 0:
        return None
    trns = png_trns(data)
    if trns is None or len(trns) < 2:
        return None
    bits, level = data[24], int.from_bytes(trns[:2], "big")
    full = np.iinfo(grey.dtype).max
    if bits < 8:  # OpenCV scales 1, 2 and 4-bit grey to 0..255
        level = level * 255 // ((1 << bits) - 1)
    return np.where(grey == level, 0, full).astype(grey.dtype)


def _tiff_samples(data: bytes) -> int | None:
    try:
        order, _ifd, entries = tiff_ifd0(data)
        return next((struct.unpack(order + "H", field[:2])[0] for tag, typ, _n, field in entries if tag == 277 and typ == 3),
                    None)
    except (struct.error, ValueError, IndexError):
        return None


def _grey_tiff_alpha(data: bytes, grey: np.ndarray) -> np.ndarray | None:
    """The alpha of a grey + alpha TIFF, which OpenCV drops, read with Pillow (8-bit); None for other TIFFs and
    where Pillow cannot (16-bit, or turned by an Orientation tag): the caller then notes the alpha as dropped."""
    if _tiff_samples(data) != 2:
        return None
    try:
        from PIL import Image as PillowImage

        with PillowImage.open(io.BytesIO(data)) as picture:
            alpha = np.asarray(picture.getchannel(picture.getbands()[-1]))
    except Exception:  # Pillow's TIFF reader raises many kinds; the grey pixels are still good
        return None
    return _convert_alpha(alpha, grey.dtype) if alpha.shape == grey.shape else None


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return _library_text(lines[0]) if lines else ""


def _library_text(line: str) -> str:
    """A library's message without OpenCV's log prefix ('[ERROR:0@0.014] global grfmt_tiff.cpp:117 ')."""
    line = re.sub(r"^\[\s*\w+:[\d@.]+\]\s+global\s+\S+:\d+\s+", "", line.strip())
    return line[:200]


def _from_array(arr: np.ndarray, name: str, max_pixels: int) -> Image:
    if arr.size == 0:
        raise JDNetError(f"{name}: image has no pixels")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise JDNetError(f"{name}: {arr.shape[1]}x{arr.shape[0]} exceeds --max-pixels {max_pixels}")
    if arr.dtype == np.uint8:
        depth, scale = 8, 255.0
    elif arr.dtype == np.uint16:
        depth, scale = 16, 65535.0
    elif arr.dtype == np.float32:
        depth, scale = 32, 1.0
    else:
        raise JDNetError(f"{name}: unsupported sample type {arr.dtype}")
    alpha = None
    gray = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1)
    if gray:
        rgb = np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[..., 3].copy()
        rgb = arr[..., 2::-1]
    elif arr.shape[2] == 3:
        rgb = arr[..., ::-1]
    else:
        raise JDNetError(f"{name}: unsupported channel count {arr.shape[2]}")
    rgb = np.ascontiguousarray(rgb, dtype=np.float32) / np.float32(scale)
    return Image(rgb=rgb, bit_depth=depth, alpha=alpha, grayscale=gray)


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a file; raise JDNetError naming the file on any problem."""
    path = Path(path)
    try:
        # A FIFO or device with an image name would block or never end.
        if path.exists() and not path.is_dir() and not stat.S_ISREG(path.stat().st_mode):
            raise JDNetError(f"{path}: not a regular file")
        return path.read_bytes()
    except FileNotFoundError:
        raise JDNetError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise JDNetError(f"{path}: is a directory") from None
    except PermissionError:
        raise JDNetError(f"{path}: permission denied") from None
    except OSError as err:
        raise JDNetError(f"{path}: cannot read ({err.strerror or err})") from None


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Read an image file; raise JDNetError naming the file on any problem."""
    return decode_image(read_bytes(path), str(path), max_pixels)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as float32 RGB in [0, 1] (for datasets and metrics)."""
    return read_image(path).rgb


def _written_depth(img: Image, ext: str) -> int:
    """Bits per channel ``img`` is written with as ``ext``: its own where the format holds them, else 8."""
    if img.bit_depth == 8:
        return 8
    if ext in HEIF_EXTENSIONS:
        return 10  # what the HEIC encoder writes above 8 bits
    if ext in AVIF_EXTENSIONS:
        return 8  # Pillow's AVIF encoder writes 8 bits only
    if img.bit_depth == 32:  # float: TIFF holds it; PNG's 16 bits are the next best (65,536 levels, not 256)
        return 32 if ext in (".tif", ".tiff") else 16 if ext == ".png" else 8
    return 16 if ext in (".png", ".tif", ".tiff") else 8  # 10, 12 and 16 bits


def _keeps_alpha(ext: str) -> bool:
    return ext in (".png", ".tif", ".tiff", ".webp") + HEIF_EXTENSIONS + AVIF_EXTENSIONS


def _written_grey(img: Image, ext: str) -> bool:
    """Whether ``img`` is written as grey (with or without alpha) rather than colour in ``ext``; see _to_array."""
    if not img.grayscale or ext == ".webp":  # WebP has no grey: OpenCV stores it as colour
        return False
    if ext in HEIF_EXTENSIONS and _written_depth(img, ext) > 8:
        return False  # the encoder has no high-depth grey mode (encode_heif)
    return img.alpha is None or not _keeps_alpha(ext) or ext == ".png"


def _foreign_icc(img: Image, ext: str) -> str | None:
    """The colour space of an input ICC profile that does not describe the pixels written as ``ext`` (e.g.
    'CMYK': OpenCV hands a CMYK JPEG over as RGB), else None. Such a profile would make viewers misread them."""
    space = icc_colour_space(img.metadata.icc)
    if space is None:
        return None
    return None if space == ("GRAY" if _written_grey(img, ext) else "RGB") else space


def _carried_metadata(img: Image, ext: str) -> Metadata:
    return replace(img.metadata, icc=None) if _foreign_icc(img, ext) else img.metadata


def conversion_losses(img: Image, ext: str) -> str | None:
    """What writing ``img`` as ``ext`` cannot keep (alpha, bit depth, metadata, later frames), in words; None when nothing is lost."""
    ext = ext.lower() if ext.startswith(".") else "." + ext.lower()
    lost = []
    if img.alpha is not None and not _keeps_alpha(ext):
        lost.append("the alpha channel")
    depth = _written_depth(img, ext)
    if depth < img.bit_depth:
        lost.append(f"{img.bit_depth}-bit depth (written as {depth}-bit)")
    notes = []
    if img.alpha_unread:
        notes.append("drops the input's alpha channel: jdnet reads the alpha of 8-bit grey + alpha TIFFs only")
    if img.stored_bit_depth:
        notes.append(f"has 8 bits per sample: the input's {img.stored_bit_depth}-bit AVIF is read at 8 bits "
                     "(Pillow's AVIF decoder)")
    if lost:
        keeper = "tif" if img.bit_depth == 32 else "png"
        notes.append(f"drops {' and '.join(lost)}: {ext[1:]} cannot hold {'them' if len(lost) > 1 else 'it'}; "
                     f"--ext {keeper} keeps everything")
    foreign = _foreign_icc(img, ext)
    if foreign:
        written = "grey" if _written_grey(img, ext) else "RGB"
        notes.append(f"drops the input's ICC profile: it describes {foreign} colours and the output is {written}")
    damage = exif_damage(img.metadata, ext)
    if damage:
        notes.append(damage)
    unwritten = unwritten_metadata(_carried_metadata(img, ext), ext)
    if unwritten:
        notes.append(f"drops the input's {' and '.join(unwritten)}: jdnet does not write "
                     f"{'them' if len(unwritten) > 1 else 'it'} into {ext[1:]} files")
    if img.metadata.xmp_dropped:
        notes.append("drops the input's XMP metadata, which describes data stored after the main image (an HDR gain "
                     "map or a motion photo's video) that jdnet does not keep")
    if img.frames > 1 and img.format in (".jpg", ".heic"):
        notes.append(f"holds only the first of the input's {img.frames} images (the others, such as an HDR gain map, "
                     "depth map or second view, are dropped)")
    elif img.frames > 1:
        what = "pages" if img.format == ".tif" else "frames"
        notes.append(f"holds only the first of the input's {img.frames} {what} (jdnet derains still images)")
    return "; ".join(notes) or None


def _to_array(img: Image, ext: str) -> np.ndarray:
    ext = ext.lower()
    depth = _written_depth(img, ext)
    rgb = np.clip(img.rgb, 0.0, 1.0)
    if depth == 8:
        arr = np.round(rgb * 255.0).astype(np.uint8)
    elif depth in (10, 16):
        arr = np.round(rgb * 65535.0).astype(np.uint16)
    else:
        arr = rgb.astype(np.float32)
    keep_alpha = img.alpha is not None and _keeps_alpha(ext)
    if img.grayscale:
        gray = arr.mean(axis=2).round().astype(arr.dtype) if depth != 32 else arr.mean(axis=2)
        if not keep_alpha:
            return gray
        if ext == ".png":
            return np.dstack([gray, _convert_alpha(img.alpha, gray.dtype)])
        arr = np.repeat(gray[..., None], 3, axis=2)  # OpenCV writes no grey+alpha TIFF/WebP: store as RGBA
    bgr = arr[..., ::-1]
    if keep_alpha:
        bgr = np.dstack([bgr, _convert_alpha(img.alpha, bgr.dtype)])
    return np.ascontiguousarray(bgr)


def _convert_alpha(alpha: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if alpha.dtype == dtype:
        return alpha
    src = np.iinfo(alpha.dtype).max if alpha.dtype.kind == "u" else 1.0
    dst = np.iinfo(dtype).max if np.dtype(dtype).kind == "u" else 1.0
    return np.round(alpha.astype(np.float64) * dst / src).astype(dtype)


DEFAULT_QUALITY = 95
# What OpenCV's JPEG writer can do; other layouts (rare) get its default, 4:2:0.
_JPEG_SAMPLINGS = {cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
                   cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440,
                   cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}


def _encode_params(img: Image, ext: str, quality: int | None) -> list[int]:
    if ext in (".jpg", ".jpeg"):
        # A 4:4:4 input (high-quality exports) keeps its full-resolution colour instead of 4:2:0's quarter.
        sampling = [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, img.jpeg_sampling] if img.jpeg_sampling in _JPEG_SAMPLINGS else []
        return [cv2.IMWRITE_JPEG_QUALITY, quality or DEFAULT_QUALITY, *sampling]
    if ext == ".webp":
        # Unless a quality is asked for, a lossless WebP stays lossless (OpenCV's quality above 100).
        if quality is None:
            quality = 100 if img.webp_lossless else DEFAULT_QUALITY
        return [cv2.IMWRITE_WEBP_QUALITY, quality if quality < 100 else 101]
    return []


# What the formats themselves allow (OpenCV would say only "can't encode data").
_MAX_SIDES = {".webp": 16383, ".jpg": 65535, ".jpeg": 65535}


def encode_image(img: Image, ext: str, quality: int | None = None) -> bytes:
    """Encode to bytes in the format named by ``ext`` (e.g. '.png'); ``quality`` None: 95, or lossless for lossless WebP."""
    ext = ext.lower() if ext.startswith(".") else "." + ext.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise JDNetError(f"unsupported output format {ext!r} (use one of {', '.join(IMAGE_EXTENSIONS)})")
    arr = _to_array(img, ext)
    if ext in HEIF_EXTENSIONS:
        chroma = img.heif_chroma if img.format == ".heic" else None
        return encode_heif(arr, _carried_metadata(img, ext), quality or DEFAULT_QUALITY, chroma)
    if ext in AVIF_EXTENSIONS:
        chroma = img.heif_chroma if img.format == ".avif" else None
        return encode_avif(arr, _carried_metadata(img, ext), quality or DEFAULT_QUALITY, chroma)
    side = _MAX_SIDES.get(ext)
    if side is not None and max(arr.shape[:2]) > side:
        raise JDNetError(f"a {ext[1:]} image holds at most {side} px a side, this one is {arr.shape[1]}x{arr.shape[0]}; "
                         "--ext png or tif holds it")
    if arr.ndim == 3 and arr.shape[2] == 2:
        data = _encode_png_gray_alpha(arr)
    else:
        try:
            (ok, buf), said = call_capturing(lambda: cv2.imencode(ext, arr, _encode_params(img, ext, quality)))
        except cv2.error as err:
            raise JDNetError(f"could not encode image as {ext} ({_opencv_reason(err)})") from None
        if not ok:
            raise JDNetError(f"could not encode image as {ext}" + (f" ({_first_line(said)})" if said.strip() else ""))
        data = buf.tobytes()
    return embed_metadata(data, ".jpg" if ext == ".jpeg" else ext, _carried_metadata(img, ext))


def _encode_png_gray_alpha(arr: np.ndarray) -> bytes:
    """PNG colour type 4 (grey + alpha), 8 or 16 bit: OpenCV's encoder only writes 1, 3 or 4 channels."""
    h, w, _ = arr.shape
    bits = 16 if arr.dtype == np.uint16 else 8
    samples = arr.astype(">u2" if bits == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    rows = np.concatenate([np.zeros((h, 1), np.uint8), samples], axis=1)  # filter byte 0 (None) per row
    header = struct.pack(">IIBBBBB", w, h, bits, 4, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + png_chunk(b"IEND", b""))


def write_image(path: str | Path, img: Image, quality: int | None = None) -> str | None:
    """Encode and write atomically (temp file in the same directory, then rename); returns conversion_losses."""
    path = Path(path)
    data = encode_image(img, path.suffix, quality)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return conversion_losses(img, path.suffix)
