"""EXIF, XMP and ICC profiles: read them from encoded JPEG/PNG/WebP bytes, apply EXIF orientation, and
splice them into the bytes OpenCV encodes (OpenCV itself drops all metadata).

Byte-level segment copying is a few dozen lines per format, so it is done here instead of adding
Pillow as a dependency. EXIF is kept as the raw TIFF structure, XMP as its XML packet and the ICC
profile as raw bytes, so metadata moves between formats (e.g. JPEG in, PNG out). A JPEG's IPTC block
(APP13) goes only to JPEG outputs. TIFF files give and take ICC, XMP and EXIF (rebuilt from and into
the TIFF's own directories by tiff_exif.py); BMP outputs carry none.
"""
from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .image_headers import header_size, jpeg_segments, tiff_ifd0, tiff_value
from .tiff_exif import entry_bytes, exif_for_tiff, exif_from_tiff, serialize_ifd

EXIF_HEADER = b"Exif\x00\x00"
ICC_HEADER = b"ICC_PROFILE\x00"
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
IPTC_HEADER = b"Photoshop 3.0\x00"
XMP_PNG_KEYWORD = b"XML:com.adobe.xmp"
# XMP that describes data stored after the main image (Ultra HDR gain maps, Google and Samsung motion
# photos' video). jdnet writes the main image only, so such XMP would point viewers at data that is gone.
_TRAILER_XMP = re.compile(rb"Container:Directory|GCamera:MicroVideo|GCamera:MotionPhoto|hdrgm:Version")
ORIENTATION_TAG = 0x0112
_MAX_ICC = 16 * 1024 * 1024  # inflating a compressed iCCP must not become a zip bomb
_JPEG_SEGMENT_MAX = 65533  # payload bytes after the 2-byte length


@dataclass
class Metadata:
    """Raw EXIF (TIFF structure, no 'Exif' prefix), XMP packet, IPTC (JPEG APP13) and ICC bytes; any may be None."""

    exif: bytes | None = None
    icc: bytes | None = None
    xmp: bytes | None = None
    iptc: bytes | None = None
    xmp_dropped: bool = False  # the input's XMP described data after the main image, so it is not carried
    exif_damaged: int = 0  # sub-directories of a TIFF input's EXIF too damaged to read (left out)
    png_chunks: tuple[bytes, ...] = ()  # a PNG input's other chunks worth keeping (text, DPI, colour), raw
    dpi: tuple[float, float] | None = None  # resolution (X, Y dots per inch) when the input states one
    # A HEIC's colour description without an ICC profile (its nclx box): primaries, transfer, matrix, full range.
    nclx: tuple[int, int, int, int] | None = None


# Which outputs take which metadata (the rest is dropped, with a note).
WRITES_EXIF = (".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif", ".tif", ".tiff")
WRITES_ICC_XMP = WRITES_EXIF


def read_metadata(data: bytes, fmt: str) -> Metadata:
    """Extract EXIF, XMP, IPTC and ICC from JPEG/PNG/WebP bytes; malformed metadata is ignored, not fatal."""
    readers = {".jpg": _read_jpeg, ".png": _read_png, ".webp": _read_webp, ".tif": _read_tiff}
    try:
        meta = readers[fmt](data) if fmt in readers else Metadata()
    except (struct.error, ValueError, IndexError, zlib.error):
        return Metadata()
    return finish_metadata(meta)


def exif_body(exif: bytes | None) -> bytes | None:
    """An EXIF block without the 'Exif\\0\\0' prefix some containers store it with; None for none."""
    if not exif:
        return None
    return exif[len(EXIF_HEADER):] if exif.startswith(EXIF_HEADER) else exif


def pillow_save_options(meta: Metadata) -> dict[str, bytes]:
    """EXIF, XMP and ICC as the keyword options of Pillow's and pillow-heif's ``save``."""
    options = {"exif": EXIF_HEADER + meta.exif if meta.exif else None, "xmp": meta.xmp, "icc_profile": meta.icc}
    return {key: value for key, value in options.items() if value}


def finish_metadata(meta: Metadata) -> Metadata:
    """Drop what must not travel with derained pixels: XMP about data after the image, the EXIF thumbnail."""
    if meta.xmp is not None and _TRAILER_XMP.search(meta.xmp):
        meta.xmp, meta.xmp_dropped = None, True
    if meta.exif is not None:
        meta.exif = drop_thumbnail(meta.exif)
    return meta


def drop_thumbnail(exif: bytes) -> bytes:
    """EXIF without its thumbnail (IFD1): it shows the rainy input, and file browsers would display it."""
    # Unlinking IFD1 from IFD0 is enough; its bytes stay as unreferenced padding.
    try:
        order = "<" if exif[:2] == b"II" else ">"
        ifd = struct.unpack(order + "I", exif[4:8])[0]
        count = struct.unpack(order + "H", exif[ifd : ifd + 2])[0]
        link = ifd + 2 + 12 * count
        if exif[:2] not in (b"II", b"MM") or link + 4 > len(exif) or exif[link : link + 4] == b"\x00" * 4:
            return exif
    except (struct.error, IndexError):
        return exif
    return exif[:link] + b"\x00" * 4 + exif[link + 4 :]


def reset_xmp_orientation(xmp: bytes) -> bytes:
    """XMP with tiff:Orientation set to 1 (pixels already upright), as attribute or element."""
    xmp = re.sub(rb'(tiff:Orientation\s*=\s*["\'])\d(["\'])', rb"\g<1>1\g<2>", xmp)
    return re.sub(rb"(<tiff:Orientation>\s*)\d(\s*</tiff:Orientation>)", rb"\g<1>1\g<2>", xmp)


def embed_metadata(data: bytes, fmt: str, meta: Metadata) -> bytes:
    """Return encoded bytes with ``meta`` spliced in where the format has a place for it."""
    if not (meta.exif or meta.icc or meta.xmp or meta.iptc or meta.png_chunks or meta.dpi or meta.nclx):
        return data
    if fmt in (".jpg", ".jpeg"):
        return _embed_jpeg(data, meta)
    if fmt == ".png":
        return _embed_png(data, meta)
    if fmt == ".webp":
        return _embed_webp(data, meta)
    if fmt in (".tif", ".tiff") and (meta.icc or meta.xmp or meta.dpi or meta.exif):
        return _embed_tiff(data, meta)
    return data


def icc_colour_space(icc: bytes | None) -> str | None:
    """The colour space an ICC profile describes ('RGB', 'GRAY', 'CMYK', ...), from its header; None without one."""
    if not icc or len(icc) < 20:
        return None
    return icc[16:20].decode("latin-1").strip() or None


# nclx codes (ITU-T H.273) that mean sRGB-like colours, which is how every output without a profile is read.
_SRGB_PRIMARIES, _SRGB_TRANSFERS = {1, 2}, {1, 2, 6, 13}  # BT.709 or unspecified; BT.709, BT.601 or sRGB curves
_PRIMARY_NAMES = {5: "BT.601 PAL", 6: "BT.601 NTSC", 9: "BT.2020", 11: "DCI-P3", 12: "Display P3"}
_TRANSFER_NAMES = {8: "linear", 16: "PQ (HDR)", 18: "HLG (HDR)"}


def nclx_colour_space(nclx: tuple[int, int, int, int] | None) -> str | None:
    """In words, a colour description that is not sRGB-like (e.g. 'Display P3 primaries'); None for sRGB or none."""
    if nclx is None:
        return None
    primaries, transfer = nclx[0], nclx[1]
    parts = []
    if primaries not in _SRGB_PRIMARIES:
        parts.append(f"{_PRIMARY_NAMES.get(primaries, f'code {primaries}')} primaries")
    if transfer not in _SRGB_TRANSFERS:
        parts.append(f"{_TRANSFER_NAMES.get(transfer, f'code {transfer}')} transfer")
    return ", ".join(parts) or None


def unwritten_metadata(meta: Metadata, ext: str) -> list[str]:
    """The kinds of the input's metadata that an ``ext`` output will not carry, e.g. ['EXIF', 'ICC profile']."""
    lost = []
    colours = nclx_colour_space(meta.nclx) if meta.icc is None else None
    if colours and ext not in (".heic", ".heif", ".png"):
        lost.append(f"colour space ({colours})")
    if meta.exif is not None and ext not in WRITES_EXIF:
        lost.append("EXIF")
    if meta.xmp is not None and ext not in WRITES_ICC_XMP:
        lost.append("XMP")
    if meta.icc is not None and ext not in WRITES_ICC_XMP:
        lost.append("ICC profile")
    if meta.iptc is not None and ext not in (".jpg", ".jpeg"):
        lost.append("IPTC block (caption, keywords, credit)")
    if ext != ".png" and any(raw[4:8] in _PNG_TEXT for raw in meta.png_chunks):
        lost.append("PNG text (title, author, copyright, ...)")
    return lost


_PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt")


# --- EXIF orientation -------------------------------------------------------------------------


def _orientation_entry(exif: bytes) -> tuple[str, int] | None:
    """(byte order, offset of the SHORT value) of the IFD0 orientation entry, if any."""
    if len(exif) < 8 or exif[:2] not in (b"II", b"MM"):
        return None
    order = "<" if exif[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", exif[4:8])[0]
    count = struct.unpack(order + "H", exif[ifd : ifd + 2])[0]
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, typ = struct.unpack(order + "HH", exif[entry : entry + 4])
        if tag == ORIENTATION_TAG and typ == 3:
            return order, entry + 8
    return None


def exif_orientation(exif: bytes | None) -> int:
    """The EXIF orientation (1..8); 1 when absent, unreadable or out of range."""
    if not exif:
        return 1
    try:
        found = _orientation_entry(exif)
        if found is None:
            return 1
        order, offset = found
        value = struct.unpack(order + "H", exif[offset : offset + 2])[0]
    except (struct.error, IndexError):
        return 1
    return value if 1 <= value <= 8 else 1


def reset_orientation(exif: bytes) -> bytes:
    """EXIF with the orientation set to 1 (pixels already upright), everything else byte-identical."""
    try:
        found = _orientation_entry(exif)
    except (struct.error, IndexError):
        return exif
    if found is None:
        return exif
    order, offset = found
    out = bytearray(exif)
    out[offset : offset + 2] = struct.pack(order + "H", 1)
    return bytes(out)


def turned_upright(meta: Metadata, orientation: int) -> None:
    """Update ``meta`` for pixels turned upright from EXIF ``orientation``: both orientation tags say 1, and
    a quarter turn (5-8) swaps the resolution's X and Y."""
    if meta.exif is not None:
        meta.exif = reset_orientation(meta.exif)
    if meta.xmp is not None:
        meta.xmp = reset_xmp_orientation(meta.xmp)
    if meta.dpi and orientation >= 5:
        meta.dpi = meta.dpi[::-1]


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip an H x W (x C) array so that it displays upright for an EXIF orientation."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = arr.swapaxes(0, 1)
    elif orientation == 6:
        arr = arr.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:
        arr = arr.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        arr = arr.swapaxes(0, 1)[::-1]
    return np.ascontiguousarray(arr)


# --- JPEG -------------------------------------------------------------------------------------


_JFIF = b"JFIF\x00"


def _read_jpeg(data: bytes) -> Metadata:
    exif = xmp = iptc = dpi = None
    icc_parts: dict[int, bytes] = {}
    for marker, start, end in jpeg_segments(data):
        payload = data[start:end]
        if marker == 0xE0 and payload.startswith(_JFIF) and len(payload) >= 12 and payload[7] in (1, 2):
            # Units 1: per inch, 2: per cm; 0 (what OpenCV writes) states an aspect ratio only.
            x, y = struct.unpack(">HH", payload[8:12])
            scale = 1.0 if payload[7] == 1 else 2.54
            dpi = (x * scale, y * scale) if x and y else None
        elif marker == 0xE1 and exif is None and payload.startswith(EXIF_HEADER):
            exif = payload[len(EXIF_HEADER) :]
        elif marker == 0xE1 and xmp is None and payload.startswith(XMP_HEADER):
            xmp = payload[len(XMP_HEADER) :]
        elif marker == 0xE2 and payload.startswith(ICC_HEADER) and len(payload) > 14:
            icc_parts[payload[12]] = payload[14:]
        elif marker == 0xED and iptc is None and payload.startswith(IPTC_HEADER):
            iptc = payload
    icc = b"".join(icc_parts[k] for k in sorted(icc_parts)) if icc_parts else None
    return Metadata(exif or None, icc or None, xmp or None, iptc, dpi=dpi)


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _embed_jpeg(data: bytes, meta: Metadata) -> bytes:
    # Keep SOI and a leading JFIF APP0 first, then our APP1/APP2, then the encoder's own segments.
    pos = 2
    if data[2:4] == b"\xff\xe0":
        pos = 4 + struct.unpack(">H", data[4:6])[0]
        if meta.dpi and data[6:11] == _JFIF and pos >= 18:  # the encoder wrote "no units, 1:1"
            density = (min(max(round(v), 1), 65535) for v in meta.dpi)
            data = data[:13] + struct.pack(">BHH", 1, *density) + data[18:]
    extra = b""
    if meta.exif and len(EXIF_HEADER) + len(meta.exif) <= _JPEG_SEGMENT_MAX:
        extra += _jpeg_segment(0xE1, EXIF_HEADER + meta.exif)
    if meta.xmp and len(XMP_HEADER) + len(meta.xmp) <= _JPEG_SEGMENT_MAX:
        extra += _jpeg_segment(0xE1, XMP_HEADER + meta.xmp)
    if meta.icc:
        chunk = _JPEG_SEGMENT_MAX - len(ICC_HEADER) - 2
        parts = [meta.icc[i : i + chunk] for i in range(0, len(meta.icc), chunk)]
        if len(parts) <= 255:
            for i, part in enumerate(parts, 1):
                extra += _jpeg_segment(0xE2, ICC_HEADER + bytes([i, len(parts)]) + part)
    if meta.iptc and len(meta.iptc) <= _JPEG_SEGMENT_MAX:
        extra += _jpeg_segment(0xED, meta.iptc)
    return data[:pos] + extra + data[pos:]


# --- PNG --------------------------------------------------------------------------------------


def _png_chunks(data: bytes):
    pos = 8
    while pos + 12 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        yield ctype, data[pos + 8 : pos + 8 + length], data[pos : pos + 12 + length]
        if ctype == b"IEND":
            return
        pos += 12 + length


def _inflate_bounded(blob: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(blob, _MAX_ICC)
    if inflater.unconsumed_tail:
        raise ValueError("ICC profile too large")
    return out


# PNG chunks describing the colour space: deraining keeps it, so they stay true of the output.
_PNG_COLOUR_CHUNKS = (b"gAMA", b"cHRM", b"sRGB", b"cICP", b"mDCV", b"cLLI")


def _png_chunk_kept(ctype: bytes) -> bool:
    # Ancillary chunks marked safe-to-copy (lowercase first and fourth letters: tEXt, zTXt, iTXt, ...) may be
    # copied into an edited file by the PNG rules; the colour-space chunks are kept because jdnet keeps it.
    safe_to_copy = ctype[:1].islower() and ctype[3:4].islower()
    return (safe_to_copy or ctype in _PNG_COLOUR_CHUNKS) and ctype not in (b"eXIf", b"iCCP")


def _read_png(data: bytes) -> Metadata:
    meta, kept = Metadata(), []
    for ctype, body, raw in _png_chunks(data):  # XMP and text may follow the image data: every chunk is looked at
        if ctype == b"eXIf" and meta.exif is None:
            meta.exif = body[len(EXIF_HEADER) :] if body.startswith(EXIF_HEADER) else body
        elif ctype == b"iCCP" and meta.icc is None:
            name_end = body.index(b"\x00")
            meta.icc = _inflate_bounded(body[name_end + 2 :])
        elif ctype == b"iTXt" and meta.xmp is None and body.startswith(XMP_PNG_KEYWORD + b"\x00"):
            try:  # a malformed XMP chunk is skipped; the EXIF and ICC beside it still count
                meta.xmp = _read_itxt_text(body[len(XMP_PNG_KEYWORD) + 1 :])
            except (ValueError, IndexError, zlib.error):
                pass
        elif ctype == b"pHYs" and len(body) == 9:  # written back from meta.dpi, which a rotation may have swapped
            x, y, unit = struct.unpack(">IIB", body)
            meta.dpi = (x * 0.0254, y * 0.0254) if unit == 1 and x and y else None  # unit 0: aspect ratio only
        elif _png_chunk_kept(ctype):
            kept.append(raw)
    meta.png_chunks = tuple(kept)
    return meta


def _read_itxt_text(rest: bytes) -> bytes:
    # iTXt after its keyword: compression flag, method, language tag\0, translated keyword\0, text.
    compressed = rest[0] == 1
    lang_end = rest.index(b"\x00", 2)
    text = rest[rest.index(b"\x00", lang_end + 1) + 1 :]
    return _inflate_bounded(text) if compressed else text


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body, CRC."""
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def _embed_png(data: bytes, meta: Metadata) -> bytes:
    out = [data[:8]]
    carried = {raw[4:8] for raw in meta.png_chunks}
    for ctype, _body, raw in _png_chunks(data):
        # An iCCP and an sRGB/iCCP of the encoder's own would contradict each other.
        if meta.icc and ctype in (b"sRGB", b"iCCP"):
            continue
        if (meta.exif and ctype == b"eXIf") or (meta.dpi and ctype == b"pHYs") or ctype in carried:
            continue
        out.append(raw)
        if ctype == b"IHDR":
            # Before PLTE and IDAT, where pHYs and the colour chunks must be; text may go anywhere.
            out.extend(raw for raw in meta.png_chunks if not (meta.icc and raw[4:8] == b"sRGB"))
            if meta.icc:
                out.append(png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(meta.icc, 9)))
            if meta.exif:
                out.append(png_chunk(b"eXIf", meta.exif))
            if meta.xmp:
                out.append(png_chunk(b"iTXt", XMP_PNG_KEYWORD + b"\x00\x00\x00\x00\x00" + meta.xmp))
            if meta.dpi:
                out.append(png_chunk(b"pHYs", struct.pack(">IIB", *(round(v / 0.0254) for v in meta.dpi), 1)))
            if meta.nclx and not meta.icc and nclx_colour_space(meta.nclx):
                # A HEIC's coded colour description as PNG's own (cICP): the same H.273 codes, for RGB samples
                # (matrix 0) at full range, which is what jdnet writes.
                out.append(png_chunk(b"cICP", bytes((meta.nclx[0], meta.nclx[1], 0, 1))))
    return b"".join(out)


# --- WebP -------------------------------------------------------------------------------------


def _webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 12
    end = min(len(data), struct.unpack("<I", data[4:8])[0] + 8)
    while pos + 8 <= end:
        ctype, length = struct.unpack("<4sI", data[pos : pos + 8])
        chunks.append((ctype, data[pos + 8 : pos + 8 + length]))
        pos += 8 + length + (length & 1)
    return chunks


def _read_webp(data: bytes) -> Metadata:
    meta = Metadata()
    for ctype, body in _webp_chunks(data):
        if ctype == b"EXIF":
            meta.exif = body[len(EXIF_HEADER) :] if body.startswith(EXIF_HEADER) else body
        elif ctype == b"ICCP":
            meta.icc = body
        elif ctype == b"XMP ":
            meta.xmp = body
    return meta


def _riff_chunk(ctype: bytes, body: bytes) -> bytes:
    return ctype + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")


def _embed_webp(data: bytes, meta: Metadata) -> bytes:
    size = header_size(data, ".webp")
    if size is None:
        return data
    chunks = [(t, b) for t, b in _webp_chunks(data) if t not in (b"VP8X", b"ICCP", b"EXIF", b"XMP ")]
    has_alpha = any(t == b"ALPH" for t, _ in chunks) or any(
        t == b"VP8L" and len(b) > 4 and (int.from_bytes(b[1:5], "little") >> 28) & 1 for t, b in chunks
    )
    flags = (0x20 if meta.icc else 0) | (0x10 if has_alpha else 0) | (0x08 if meta.exif else 0) | (0x04 if meta.xmp else 0)
    width, height = size
    vp8x = bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = _riff_chunk(b"VP8X", vp8x)
    if meta.icc:
        body += _riff_chunk(b"ICCP", meta.icc)
    body += b"".join(_riff_chunk(t, b) for t, b in chunks)
    if meta.exif:
        body += _riff_chunk(b"EXIF", meta.exif)
    if meta.xmp:
        body += _riff_chunk(b"XMP ", meta.xmp)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


# --- TIFF -------------------------------------------------------------------------------------

_TIFF_ICC, _TIFF_XMP, _TIFF_EXIF_IFD, _TIFF_GPS_IFD, _TIFF_ORIENTATION = 34675, 700, 34665, 34853, 274
_TIFF_XRES, _TIFF_YRES, _TIFF_RES_UNIT = 282, 283, 296


def _tiff_exif(exif: bytes | None):
    """What of an EXIF block a TIFF output takes (see tiff_exif.exif_for_tiff); None when it cannot be read."""
    if not exif:
        return None
    try:
        return exif_for_tiff(exif)
    except (struct.error, ValueError, IndexError):
        return None


def exif_damage(meta: Metadata, ext: str) -> str | None:
    """What of the input's EXIF an ``ext`` output loses to damage (a sub-directory that cannot be read), in words."""
    damaged = meta.exif_damaged
    if meta.exif and ext in (".tif", ".tiff"):
        tree = _tiff_exif(meta.exif)
        if tree is None:
            return "drops the input's EXIF: it is damaged (its first directory cannot be read)"
        damaged += tree.damaged
    if not damaged:
        return None
    return f"drops {damaged} damaged part{'s' * (damaged > 1)} of the input's EXIF (a sub-directory that cannot be read)"


def _read_tiff(data: bytes) -> Metadata:
    order, _ifd, entries = tiff_ifd0(data)
    meta, orientation, values, unit = Metadata(), 1, {}, 2
    for tag, typ, count, field in entries:
        if tag in (_TIFF_ICC, _TIFF_XMP, _TIFF_XRES, _TIFF_YRES):
            try:  # a value past the end of the file is skipped, not fatal to the other tags
                values[tag] = tiff_value(data, order, typ, count, field)
            except ValueError:
                continue
        elif tag == _TIFF_ORIENTATION and typ == 3:
            orientation = struct.unpack(order + "H", field[:2])[0]
        elif tag == _TIFF_RES_UNIT and typ == 3:
            unit = struct.unpack(order + "H", field[:2])[0]
    meta.icc, meta.xmp = values.get(_TIFF_ICC), values.get(_TIFF_XMP)
    meta.exif, meta.exif_damaged = exif_from_tiff(data)
    resolution = [values.get(t) for t in (_TIFF_XRES, _TIFF_YRES)]
    if unit in (2, 3) and all(r is not None and len(r) == 8 for r in resolution):
        ratios = [struct.unpack(order + "II", r) for r in resolution]
        if all(num and den for num, den in ratios):
            meta.dpi = tuple(num / den * (2.54 if unit == 3 else 1.0) for num, den in ratios)
    if 2 <= orientation <= 8:  # OpenCV applies a TIFF's Orientation tag when decoding
        turned_upright(meta, orientation)
    return meta


def _embed_tiff(data: bytes, meta: Metadata) -> bytes:
    # Blobs and a new IFD0 listing them go at the end; the header then points at the new IFD0. Offsets
    # in the old entries stay valid because nothing before the end moves.
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return data
    order, ifd, entries = tiff_ifd0(data)
    count = len(entries)
    next_ifd = data[ifd + 2 + 12 * count : ifd + 6 + 12 * count]
    tree = _tiff_exif(meta.exif)
    described, children = (tree.entries, tree.children) if tree else ([], {})
    replaced = {_TIFF_ICC, _TIFF_XMP, _TIFF_XRES, _TIFF_YRES, _TIFF_RES_UNIT, _TIFF_EXIF_IFD, _TIFF_GPS_IFD}
    replaced |= {e.tag for e in described}
    entries = [e for e in entries if e[0] not in replaced]
    out = bytearray(data)
    for entry in described:
        raw = entry_bytes(entry, order)
        if len(raw) > 4:
            out += b"\x00" * (len(out) & 1)
            raw, out = struct.pack(order + "I", len(out)), out + raw
        entries.append((entry.tag, entry.typ, entry.count, raw.ljust(4, b"\x00")))
    for tag, sub in sorted(children.items()):
        out += b"\x00" * (len(out) & 1)
        entries.append((tag, 4, 1, struct.pack(order + "I", len(out))))
        out += serialize_ifd(sub, order, len(out))
    rationals = [struct.pack(order + "II", round(v * 100), 100) for v in meta.dpi] if meta.dpi else [None, None]
    if meta.dpi:
        entries.append((_TIFF_RES_UNIT, 3, 1, struct.pack(order + "HH", 2, 0)))  # inches
    for tag, typ, blob in ((_TIFF_ICC, 7, meta.icc), (_TIFF_XMP, 1, meta.xmp), (_TIFF_XRES, 5, rationals[0]),
                           (_TIFF_YRES, 5, rationals[1])):
        if not blob:
            continue
        if len(blob) <= 4:
            field = blob.ljust(4, b"\x00")
        else:
            out += b"\x00" * (len(out) & 1)  # values start on a word boundary
            field = struct.pack(order + "I", len(out))
            out += blob
        entries.append((tag, typ, 1 if typ == 5 else len(blob), field))
    entries.sort(key=lambda e: e[0])  # TIFF requires ascending tags
    out += b"\x00" * (len(out) & 1)
    new_ifd = len(out)
    out += struct.pack(order + "H", len(entries))
    out += b"".join(struct.pack(order + "HHI", tag, typ, n) + field for tag, typ, n, field in entries)
    out += next_ifd
    out[4:8] = struct.pack(order + "I", new_ifd)
    return bytes(out)
