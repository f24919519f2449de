"""EXIF between TIFF files and the stand-alone EXIF block that JPEG, PNG, WebP, HEIC and AVIF carry.

A TIFF keeps its EXIF in the file's own structure: descriptive tags (Make, Model, Artist, ...) in IFD0
next to the image's layout tags, and the camera's tags in sub-IFDs that IFD0 points at (EXIF, GPS). So
the EXIF of a TIFF input is rebuilt here as a stand-alone block, and a block is spliced into a TIFF
output as sub-IFDs plus the descriptive IFD0 tags. Values are decoded by type, so the block and the
TIFF may have different byte orders.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

EXIF_IFD, GPS_IFD, INTEROP_IFD = 34665, 34853, 40965
# IFD0 tags that describe the photo rather than how its pixels are stored: what moves between the two.
DESCRIPTIVE_TAGS = frozenset({270, 271, 272, 305, 306, 315, 316, 33432})
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


def _child(data: bytes, order: str, entries: list[Entry], tag: int) -> list[Entry] | None:
    pointer = next((e for e in entries if e.tag == tag and e.typ in (4, 13) and e.count == 1), None)
    if pointer is None:
        return None
    return [e for e in read_ifd(data, order, pointer.values[0]) if e.tag != INTEROP_IFD]


def exif_from_tiff(data: bytes) -> bytes | None:
    """A TIFF's EXIF as a stand-alone block (descriptive IFD0 tags, EXIF and GPS sub-IFDs); None without any."""
    order = "<" if data[:2] == b"II" else ">"
    ifd0 = read_ifd(data, order, struct.unpack(order + "I", data[4:8])[0])
    children = {tag: _child(data, order, ifd0, tag) for tag in (EXIF_IFD, GPS_IFD)}
    children = {tag: entries for tag, entries in children.items() if entries}
    top = [e for e in ifd0 if e.tag in DESCRIPTIVE_TAGS]
    if not children and not top:
        return None
    block = bytearray(b"II*\x00" + struct.pack("<I", 8))
    block += serialize_ifd(top, children, "<", 8)
    return bytes(block)


def exif_for_tiff(exif: bytes) -> tuple[list[Entry], dict[int, list[Entry]]]:
    """From a stand-alone EXIF block: its descriptive IFD0 entries and its EXIF and GPS sub-IFDs by pointer tag."""
    if exif[:2] not in (b"II", b"MM"):
        raise ValueError("not a TIFF-structured EXIF block")
    order = "<" if exif[:2] == b"II" else ">"
    ifd0 = read_ifd(exif, order, struct.unpack(order + "I", exif[4:8])[0])
    children = {tag: _child(exif, order, ifd0, tag) for tag in (EXIF_IFD, GPS_IFD)}
    return [e for e in ifd0 if e.tag in DESCRIPTIVE_TAGS], {t: c for t, c in children.items() if c}


def entry_bytes(entry: Entry, order: str) -> bytes:
    """The entry's values encoded in ``order`` (as they go in the 4-byte field or at the offset it holds)."""
    code = _TYPE_CODES[entry.typ]
    return entry.values if code is None else struct.pack(order + code * entry.count, *entry.values)


def serialize_ifd(entries: list[Entry], children: dict[int, list[Entry]], order: str, offset: int,
                  next_ifd: int = 0) -> bytes:
    """An IFD placed at ``offset`` of the file with its values after it, then each child IFD that
    ``children`` names by pointer tag (pointer entries are added); values start on even offsets."""
    pointers = [Entry(tag, 4, 1, (0,)) for tag in sorted(children)]
    listed = sorted([e for e in entries if e.tag not in children] + pointers, key=lambda e: e.tag)
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
        if entry.tag in children:
            tail += b"\x00" * ((offset + head + len(values) + len(tail)) & 1)
            at = offset + head + len(values) + len(tail)
            fields[i] = struct.pack(order + "I", at)
            tail += serialize_ifd(children[entry.tag], {}, order, at)
    out = bytearray(struct.pack(order + "H", len(listed)))
    for entry, field in zip(listed, fields):
        out += struct.pack(order + "HHI", entry.tag, entry.typ, entry.count) + field
    out += struct.pack(order + "I", next_ifd)
    return bytes(out + values + tail)
