"""EXIF between TIFF files and the stand-alone EXIF block that JPEG, PNG, WebP, HEIC and AVIF carry.

A TIFF keeps its EXIF in the file's own structure: descriptive tags (Make, Model, Artist, Rating, ...)
in IFD0 next to the tags that lay out its pixels, and the camera's tags in sub-IFDs that IFD0 points at
(EXIF, GPS, and Interoperability under EXIF). So the EXIF of a TIFF input is rebuilt here as a
stand-alone block, and a block is spliced into a TIFF output as sub-IFDs plus IFD0's other tags. Values
are decoded by type, so the block and the TIFF may have different byte orders. A sub-IFD that cannot be
read is left out and counted, so the caller can say so.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

EXIF_IFD, GPS_IFD, INTEROP_IFD = 34665, 34853, 40965
_SUB_IFDS = {0: (EXIF_IFD, GPS_IFD), EXIF_IFD: (INTEROP_IFD,)}  # which pointers each level may hold
# IFD0 tags about the pixels' storage (size, samples, compression, strips, tiles, colour layout,
# orientation, resolution, thumbnails) or carried on their own (XMP, ICC, IPTC): the writer's business,
# never copied between a TIFF and an EXIF block. Everything else in IFD0 describes the photo.
_LAYOUT_TAGS = frozenset({254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 269, 273, 274, 277, 278, 279, 280,
                          281, 282, 283, 284, 285, 286, 287, 290, 291, 292, 293, 296, 297, 301, 317, 318, 319, 320,
                          321, 322, 323, 324, 325, 330, 332, 338, 339, 340, 341, 347, 513, 514, 529, 530, 531, 532,
                          700, 33723, 34377, 34675, EXIF_IFD, GPS_IFD})
# Per type: struct code of one value (a rational is two), or None for bytes kept as they are.
_TYPE_CODES = {1: None, 2: None, 3: "H", 4: "I", 5: "II", 6: None, 7: None, 8: "h", 9: "i", 10: "ii", 11: "f",
               12: "d", 13: "I"}
_MAX_ENTRIES = 1000  # an IFD claiming more is damage, not a camera


@dataclass(frozen=True)
class Entry:
    """One IFD entry with its values decoded: bytes for BYTE/ASCII/UNDEFINED, else a tuple of numbers."""

    tag: int
    typ: int
    count: int
    values: bytes | tuple


@dataclass
class Ifd:
    """An IFD's own entries and the sub-IFDs its pointer tags lead to."""

    entries: list[Entry]
    children: dict[int, "Ifd"] = field(default_factory=dict)
    damaged: int = 0  # sub-IFDs (at any depth below) that could not be read and are left out


def read_ifd(data: bytes, order: str, offset: int) -> list[Entry]:
    """The entries of the IFD at ``offset``; entries of unknown type or with values past the end are skipped."""
    count = struct.unpack(order + "H", data[offset : offset + 2])[0]
    if count > _MAX_ENTRIES:
        raise ValueError("implausible IFD")
    entries = []
    for i in range(count):
        at = offset + 2 + 12 * i
        tag, typ, n = struct.unpack(order + "HHI", data[at : at + 8])
        if typ not in _TYPE_CODES:
            continue
        code = _TYPE_CODES[typ]
        size = n * (struct.calcsize(code) if code else 1)
        start = at + 8 if size <= 4 else struct.unpack(order + "I", data[at + 8 : at + 12])[0]
        raw = data[start : start + size]
        if len(raw) != size:
            continue
        entries.append(Entry(tag, typ, n, raw if code is None else struct.unpack(order + code * n, raw)))
    return entries


def _read_tree(data: bytes, order: str, entries: list[Entry], level: int) -> Ifd:
    node = Ifd([e for e in entries if e.tag not in _SUB_IFDS.get(level, ())])
    for tag in _SUB_IFDS.get(level, ()):
        pointer = next((e for e in entries if e.tag == tag), None)
        if pointer is None:
            continue
        try:
            if pointer.typ not in (4, 13) or pointer.count != 1:
                raise ValueError("not a pointer")
            child = _read_tree(data, order, read_ifd(data, order, pointer.values[0]), tag)
        except (struct.error, ValueError, IndexError):
            node.damaged += 1
            continue
        node.damaged += child.damaged
        node.children[tag] = child
    return node


def exif_tree(exif: bytes) -> Ifd:
    """A stand-alone EXIF block as a tree; raises ValueError (or struct.error) when its IFD0 cannot be read."""
    if exif[:2] not in (b"II", b"MM"):
        raise ValueError("not a TIFF-structured EXIF block")
    order = "<" if exif[:2] == b"II" else ">"
    return _read_tree(exif, order, read_ifd(exif, order, struct.unpack(order + "I", exif[4:8])[0]), 0)


def exif_from_tiff(data: bytes) -> tuple[bytes | None, int]:
    """A TIFF's EXIF as a stand-alone block (IFD0's descriptive tags and its sub-IFDs), or None without any,
    and the number of sub-IFDs too damaged to read."""
    order = "<" if data[:2] == b"II" else ">"
    tree = _read_tree(data, order, read_ifd(data, order, struct.unpack(order + "I", data[4:8])[0]), 0)
    tree.entries = [e for e in tree.entries if e.tag not in _LAYOUT_TAGS]
    if not tree.entries and not tree.children:
        return None, tree.damaged
    return b"II*\x00" + struct.pack("<I", 8) + serialize_ifd(tree, "<", 8), tree.damaged


def exif_for_tiff(exif: bytes) -> Ifd:
    """What of a stand-alone EXIF block goes into a TIFF: IFD0's descriptive tags and the sub-IFDs."""
    tree = exif_tree(exif)
    tree.entries = [e for e in tree.entries if e.tag not in _LAYOUT_TAGS]
    return tree


def entry_bytes(entry: Entry, order: str) -> bytes:
    """The entry's values encoded in ``order`` (as they go in the 4-byte field or at the offset it holds)."""
    code = _TYPE_CODES[entry.typ]
    return entry.values if code is None else struct.pack(order + code * entry.count, *entry.values)


def serialize_ifd(ifd: Ifd, order: str, offset: int, next_ifd: int = 0) -> bytes:
    """``ifd`` placed at ``offset`` of the file with its values after it, then its sub-IFDs (pointer entries
    are added); values start on even offsets."""
    pointers = [Entry(tag, 4, 1, (0,)) for tag in sorted(ifd.children)]
    listed = sorted([e for e in ifd.entries if e.tag not in ifd.children] + pointers, key=lambda e: e.tag)
    head = 2 + 12 * len(listed) + 4
    values = bytearray()
    fields = []
    for entry in listed:
        raw = entry_bytes(entry, order)
        if len(raw) <= 4:
            fields.append(raw.ljust(4, b"\x00"))
            continue
        values += b"\x00" * ((offset + head + len(values)) & 1)
        fields.append(struct.pack(order + "I", offset + head + len(values)))
        values += raw
    tail = bytearray()
    for i, entry in enumerate(listed):
        if entry.tag in ifd.children:
            tail += b"\x00" * ((offset + head + len(values) + len(tail)) & 1)
            at = offset + head + len(values) + len(tail)
            fields[i] = struct.pack(order + "I", at)
            tail += serialize_ifd(ifd.children[entry.tag], order, at)
    out = bytearray(struct.pack(order + "H", len(listed)))
    for entry, field_ in zip(listed, fields):
        out += struct.pack(order + "HHI", entry.tag, entry.typ, entry.count) + field_
    out += struct.pack(order + "I", next_ifd)
    return bytes(out + values + tail)
