"""Container-level checks on encoded image bytes, done before any pixel is decoded.

Sniffing the format from magic bytes, reading the dimensions a header claims (so a decompression
bomb is refused without allocating its pixels), and spotting truncated files that some decoders
would otherwise pad with grey.
"""
from __future__ import annotations

import struct
import zlib

from ..errors import JDNetError

# Formats we can decode, by the extension we write them with.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)
# Formats people feed us by mistake: named in the error instead of 'unknown format'.
_UNSUPPORTED_MAGIC = (
    (b"GIF8", "GIF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
)


def sniff_format(data: bytes) -> str | None:
    """The extension ('.png', '.jpg', '.bmp', '.tif', '.webp', '.heic', '.avif') the bytes are encoded in, or None."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    brands = set(ftyp_brands(data))
    if brands & _AVIF_BRANDS:
        return ".avif"
    if brands & (_HEVC_BRANDS | _GENERIC_HEIF_BRANDS):
        return ".heic"
    return None


# ftyp brands of HEIF still images coded with HEVC (ISO/IEC 23008-12). 'mif1'/'msf1' are generic HEIF
# brands that AVIF files carry too, so an 'avif'/'avis' brand anywhere in the box makes it AVIF.
_HEVC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_GENERIC_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"mif2"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


def ftyp_brands(data: bytes) -> list[bytes]:
    """The major and compatible brands of an ISO media file's leading ftyp box; [] when there is none."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return []
    size = struct.unpack(">I", data[:4])[0]
    end = min(size, len(data)) if size >= 16 else 16
    # The major brand, a 4-byte minor version, then the compatible brands.
    return [data[8:12]] + [data[i : i + 4] for i in range(16, end - 3, 4)]


def describe_unsupported(data: bytes) -> str:
    """A one-phrase reason for bytes that :func:`sniff_format` does not recognise."""
    for magic, name in _UNSUPPORTED_MAGIC:
        if data.startswith(magic):
            return f"unsupported format ({name})"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        brand = data[8:12].decode("ascii", "replace").strip()
        return f"unsupported format (ISO media, brand {brand!r}: a video? jdnet video reads those)"
    return "not an image (unknown format)"


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) claimed by the header, or None when the header cannot be parsed."""
    return _parse(_SIZE_READERS, data, fmt, None)


def frame_count(data: bytes, fmt: str) -> int:
    """Frames, pages or images the file holds (APNG, animated WebP, multi-page TIFF, JPEG with an MPF
    index); 1 when single or unsure."""
    return _parse(_FRAME_COUNTERS, data, fmt, 1)


def _parse(readers: dict, data: bytes, fmt: str, fallback):
    # A header cut short or malformed reads as "cannot tell", never as an exception.
    reader = readers.get(fmt)
    try:
        return reader(data) if reader else fallback
    except (struct.error, IndexError, ValueError):
        return fallback


def _apng_frames(data: bytes) -> int:
    # acTL, which makes a PNG animated, must come before the first IDAT.
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if ctype == b"acTL":
            return max(1, struct.unpack(">I", data[pos + 8 : pos + 12])[0])
        if ctype == b"IDAT":
            break
        pos += 12 + length
    return 1


def _webp_frames(data: bytes) -> int:
    if data[12:16] != b"VP8X" or not data[20] & 0x02:  # the extended header's animation flag
        return 1
    frames, pos = 0, 12
    while pos + 8 <= len(data):
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        frames += data[pos : pos + 4] == b"ANMF"
        pos += 8 + size + (size & 1)
    return max(1, frames)


def _tiff_pages(data: bytes) -> int:
    order = "<" if data[:2] == b"II" else ">"
    ifd, pages, seen = struct.unpack(order + "I", data[4:8])[0], 0, set()
    while ifd and ifd not in seen and ifd + 2 <= len(data):
        seen.add(ifd)
        count = struct.unpack(order + "H", data[ifd : ifd + 2])[0]
        reduced = False  # a thumbnail or preview of another page (NewSubfileType bit 0), not a page
        for i in range(count):
            tag, typ, _n, value = struct.unpack(order + "HHII", data[ifd + 2 + 12 * i : ifd + 14 + 12 * i])
            if tag == 254:
                reduced = bool((value if typ == 4 else value >> 16 if order == ">" else value & 0xFFFF) & 1)
        pages += not reduced
        ifd = struct.unpack(order + "I", data[ifd + 2 + 12 * count : ifd + 6 + 12 * count])[0]
    return max(1, pages)


def _jpeg_images(data: bytes) -> int:
    # An MPF index (APP2 "MPF\0", a TIFF structure) lists the images stored one after another in the
    # file: stereo views (MPO), or an HDR gain map or depth map after the main photo. Decoders read the first.
    for marker, start, end in jpeg_segments(data):
        if marker == 0xE2 and data[start : start + 4] == b"MPF\x00":
            tiff = data[start + 4 : end]
            order = "<" if tiff[:2] == b"II" else ">"
            ifd = struct.unpack(order + "I", tiff[4:8])[0]
            count = struct.unpack(order + "H", tiff[ifd : ifd + 2])[0]
            for i in range(count):
                tag, _typ, _n, value = struct.unpack(order + "HHII", tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i])
                if tag == 0xB001:  # NumberOfImages
                    return max(1, value)
    return 1


def check_complete(data: bytes, fmt: str) -> None:
    """Raise JDNetError (reason only) if the container is visibly truncated or malformed."""
    if fmt == ".png":
        _check_png(data)
    elif fmt == ".jpg":
        _check_jpeg(data)
    elif fmt == ".webp":
        size = struct.unpack("<I", data[4:8])[0] + 8
        if len(data) < size:
            raise JDNetError(f"truncated WebP file ({len(data)} of {size} bytes)")
    elif fmt == ".tif":
        _check_tiff(data)
    elif fmt in (".heic", ".avif"):
        _check_iso_boxes(data, fmt[1:].upper())


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def png_trns(data: bytes) -> bytes | None:
    """The body of a PNG's tRNS chunk (transparency without an alpha channel), or None; it precedes IDAT."""
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if ctype == b"tRNS":
            return data[pos + 8 : pos + 8 + length]
        if ctype == b"IDAT":
            return None
        pos += 12 + length
    return None


def _check_png(data: bytes) -> None:
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise JDNetError(f"truncated PNG file (chunk {ctype.decode('latin-1')!r} cut off)")
        if ctype == b"IEND":
            return
        pos = end
    raise JDNetError("truncated PNG file (no IEND chunk)")


# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_segments(data: bytes):
    """Yield (marker, payload_start, payload_end) for each header segment up to and including SOS."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("bad JPEG marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if length < 2:
            raise ValueError("bad JPEG segment length")
        yield marker, pos + 4, pos + 2 + length
        if marker == 0xDA:
            return
        pos += 2 + length


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    for marker, start, end in jpeg_segments(data):
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[start + 1 : start + 5])
            return width, height
    return None


def jpeg_sampling(data: bytes) -> int | None:
    """A 3-component JPEG's sampling factors packed as OpenCV's IMWRITE_JPEG_SAMPLING_FACTOR wants them
    (0x221111 for 4:2:0: Y's h, v, then Cb's, then Cr's, a nibble each); None for other JPEGs or bad headers."""
    try:
        for marker, start, _end in jpeg_segments(data):
            if marker in _SOF_MARKERS:
                if data[start + 5] != 3:
                    return None
                factors = [data[start + 7 + 3 * i] for i in range(3)]  # per component: id, h<<4|v, table
                return (factors[0] << 16) | (factors[1] << 8) | factors[2]
    except (ValueError, IndexError, struct.error):
        pass
    return None


def webp_is_lossless(data: bytes) -> bool:
    """True when a WebP's (first) image is VP8L, the lossless coding."""
    pos, end = 12, len(data)
    while pos + 8 <= end:
        ctype, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if ctype in (b"VP8 ", b"VP8L"):
            return ctype == b"VP8L"
        if ctype == b"ANMF":  # the first animation frame: its image chunks follow a 16-byte frame header
            pos, end = pos + 24, min(end, pos + 8 + size)
            continue
        pos += 8 + size + (size & 1)
    return False


def _check_jpeg(data: bytes) -> None:
    sos_end = None
    try:
        for marker, _start, end in jpeg_segments(data):
            if end > len(data):
                raise JDNetError("truncated JPEG file (header cut off)")
            if marker == 0xDA:
                sos_end = end
    except ValueError as err:
        raise JDNetError(f"corrupt JPEG file ({err})") from None
    if sos_end is None:
        raise JDNetError("truncated JPEG file (no image data)")
    # Progressive files hold several scans; the last one is followed by EOI. Anything may trail EOI.
    if data.find(b"\xff\xd9", sos_end) < 0:
        raise JDNetError("truncated JPEG file (no end-of-image marker)")


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    dib = struct.unpack("<I", data[14:18])[0]
    if dib == 12:
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


# Bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ..., DOUBLE).
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}


def tiff_ifd0(data: bytes) -> tuple[str, int, list[tuple[int, int, int, bytes]]]:
    """A classic TIFF's byte order, IFD0 offset, and IFD0's entries as (tag, type, count, 4-byte value field)."""
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[ifd : ifd + 2])[0]
    entries = []
    for i in range(count):
        entry = data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        tag, typ, n = struct.unpack(order + "HHI", entry[:8])
        entries.append((tag, typ, n, entry[8:12]))
    return order, ifd, entries


def tiff_value(data: bytes, order: str, typ: int, count: int, field: bytes) -> bytes:
    """The raw bytes of an entry's value: inside its 4-byte field when they fit, else at the offset it holds."""
    size = _TIFF_TYPE_SIZES.get(typ, 1) * count
    if size <= 4:
        return field[:size]
    start = struct.unpack(order + "I", field)[0]
    if start + size > len(data):
        raise ValueError("TIFF value past the end of the file")
    return data[start : start + size]


def _check_iso_boxes(data: bytes, kind_name: str) -> None:
    """Refuse an ISO media file (HEIC, AVIF) whose top-level boxes run past its end: libheif decodes what is
    there and drops an item it cannot reach (the XMP after the image data, say) without a word."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:  # a 64-bit size follows the type
            if pos + 16 > len(data):
                break
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:  # the last box, to the end of the file
            return
        if size < 8:
            raise JDNetError(f"corrupt {kind_name} file (box {kind.decode('latin-1')!r} has size {size})")
        if pos + size > len(data):
            raise JDNetError(f"truncated {kind_name} file (box {kind.decode('latin-1')!r} cut off: {len(data) - pos} of {size} bytes)")
        pos += size
    if pos != len(data):
        raise JDNetError(f"truncated {kind_name} file (a box header cut off at byte {pos})")


# Deflate-compressed TIFF (Adobe's code and the old one): libtiff decodes a damaged stream into garbage
# rows without a word, but zlib's own checks (and the Adler-32 at the end) catch it.
_TIFF_DEFLATE = (8, 32946)


def _check_tiff(data: bytes) -> None:
    """Refuse a TIFF whose first image's strips or tiles run past the end, or whose deflate data is damaged."""
    try:
        order, _ifd, entries = tiff_ifd0(data)
        fields = {tag: (typ, n, field) for tag, typ, n, field in entries}
        offsets_tag, counts_tag = (324, 325) if 324 in fields else (273, 279)
        if offsets_tag not in fields or counts_tag not in fields:
            return  # not ours to judge: the decoder says what is missing
        offsets, counts = (_tiff_numbers(data, order, *fields[tag]) for tag in (offsets_tag, counts_tag))
        compression = _tiff_numbers(data, order, *fields[259])[0] if 259 in fields else 1
    except (struct.error, ValueError, IndexError):
        raise JDNetError("truncated or corrupt TIFF file (its image directory is damaged)") from None
    for start, size in zip(offsets, counts):
        if start + size > len(data):
            raise JDNetError(f"truncated TIFF file (image data runs to byte {start + size} of {len(data)})")
    if compression in _TIFF_DEFLATE:
        for start, size in zip(offsets, counts):
            stream = zlib.decompressobj()
            try:
                stream.decompress(data[start : start + size])
            except zlib.error as err:
                raise JDNetError(f"corrupt TIFF data (deflate: {err})") from None
            if not stream.eof:
                raise JDNetError("corrupt TIFF data (a deflate stream ends early)")


def _tiff_numbers(data: bytes, order: str, typ: int, count: int, field: bytes) -> tuple[int, ...]:
    if typ not in (3, 4):
        raise ValueError("TIFF offsets or counts of an unexpected type")
    return struct.unpack(f"{order}{count}{'H' if typ == 3 else 'I'}", tiff_value(data, order, typ, count, field))


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order, _ifd, entries = tiff_ifd0(data)
    dims = {tag: struct.unpack(order + ("H" if typ == 3 else "I"), field[: 2 if typ == 3 else 4])[0]
            for tag, typ, _n, field in entries if tag in (256, 257)}
    if 256 in dims and 257 in dims:
        return dims[256], dims[257]
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if kind == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def iso_boxes(data: bytes, start: int = 0, end: int | None = None):
    """Yield (type, payload_start, payload_end) for the ISO media boxes laid one after another in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def avif_properties(data: bytes) -> dict[bytes, list[bytes]]:
    """The payloads of an AVIF's item properties (meta/iprp/ipco: 'ispe', 'av1C', 'colr', 'pixi', ...) by type."""
    found: dict[bytes, list[bytes]] = {}
    for kind, start, end in iso_boxes(data):
        if kind != b"meta":
            continue
        for kind2, start2, end2 in iso_boxes(data, start + 4, end):  # 'meta' is a full box: version and flags first
            if kind2 != b"iprp":
                continue
            for kind3, start3, end3 in iso_boxes(data, start2, end2):
                if kind3 == b"ipco":
                    for prop, pstart, pend in iso_boxes(data, start3, end3):
                        found.setdefault(prop, []).append(data[pstart:pend])
    return found


def _avif_size(data: bytes) -> tuple[int, int] | None:
    # Every image item (the primary, its alpha plane, a thumbnail or a grid's tiles) has an 'ispe': the
    # largest is what a decoder may have to allocate, so that is the size checked against --max-pixels.
    sizes = [struct.unpack(">II", ispe[4:12]) for ispe in avif_properties(data).get(b"ispe", []) if len(ispe) >= 12]
    return max(sizes, key=lambda wh: wh[0] * wh[1]) if sizes else None


# Read by header_size and frame_count at call time (the parsers are defined above).
_SIZE_READERS = {".png": _png_size, ".jpg": _jpeg_size, ".bmp": _bmp_size, ".tif": _tiff_size, ".webp": _webp_size,
                 ".avif": _avif_size}
_FRAME_COUNTERS = {".png": _apng_frames, ".jpg": _jpeg_images, ".webp": _webp_frames, ".tif": _tiff_pages}
