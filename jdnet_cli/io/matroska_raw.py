"""A minimal streaming Matroska writer for raw RGB frames with exact per-frame timestamps.

ffmpeg's rawvideo pipe input can only assign a constant frame rate, which would destroy variable
frame rate timing. Matroska carries a timestamp and a duration per frame, ffmpeg reads it from a
pipe, and the subset needed here (one uncompressed video track, one frame per cluster,
unknown-size segment) is a few dozen lines.
"""
from __future__ import annotations

import struct
from typing import BinaryIO

TIMESTAMP_SCALE_NS = 1000  # timestamps are in microseconds
_UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"
# Matroska ColourSpace FourCCs that ffmpeg's rawvideo decoder maps to rgb24 / rgb48le.
_COLOUR_SPACE = {"rgb24": b"RGB\x18", "rgb48le": b"RGB\x30"}


def _size(n: int) -> bytes:
    """EBML variable-length size."""
    for length in range(1, 9):
        if n < (1 << (7 * length)) - 1:
            return ((1 << (7 * length)) | n).to_bytes(length, "big")
    raise ValueError(f"element too large: {n}")


def _uint(v: int) -> bytes:
    return v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")


def _el(element_id: bytes, data: bytes) -> bytes:
    return element_id + _size(len(data)) + data


class RawMatroskaWriter:
    """Write W x H RGB frames (rgb24 or rgb48le bytes) with microsecond timestamps to a stream."""

    def __init__(self, stream: BinaryIO, width: int, height: int, pix_fmt: str = "rgb24"):
        if pix_fmt not in _COLOUR_SPACE:
            raise ValueError(f"unsupported pixel format {pix_fmt}")
        self.stream = stream
        self.frame_bytes = width * height * (3 if pix_fmt == "rgb24" else 6)
        self._last_ts = -1
        ebml = _el(
            b"\x1a\x45\xdf\xa3",
            _el(b"\x42\x86", _uint(1)) + _el(b"\x42\xf7", _uint(1)) + _el(b"\x42\xf2", _uint(4))
            + _el(b"\x42\xf3", _uint(8)) + _el(b"\x42\x82", b"matroska") + _el(b"\x42\x87", _uint(4))
            + _el(b"\x42\x85", _uint(2)),
        )
        info = _el(b"\x15\x49\xa9\x66", _el(b"\x2a\xd7\xb1", _uint(TIMESTAMP_SCALE_NS)))
        video = _el(
            b"\xe0",
            _el(b"\xb0", _uint(width)) + _el(b"\xba", _uint(height)) + _el(b"\x2e\xb5\x24", _COLOUR_SPACE[pix_fmt]),
        )
        track = _el(
            b"\xae",
            _el(b"\xd7", _uint(1)) + _el(b"\x73\xc5", _uint(1)) + _el(b"\x83", _uint(1))
            + _el(b"\x86", b"V_UNCOMPRESSED") + _el(b"\x9c", _uint(0)) + video,
        )
        # Segment of unknown size: the writer never seeks, so it works on a pipe.
        self.stream.write(ebml + b"\x18\x53\x80\x67" + _UNKNOWN_SIZE + info + _el(b"\x16\x54\xae\x6b", track))

    def write(self, frame: bytes | memoryview, timestamp_us: int, duration_us: int) -> None:
        """Append one frame shown at ``timestamp_us`` for ``duration_us`` (timestamps must increase)."""
        if len(frame) != self.frame_bytes:
            raise ValueError(f"frame has {len(frame)} bytes, expected {self.frame_bytes}")
        # Matroska cluster timestamps are unsigned and ffmpeg wants strictly increasing ones.
        timestamp_us = max(int(timestamp_us), self._last_ts + 1, 0)
        self._last_ts = timestamp_us
        # SimpleBlock-style header inside a Block: track 1, relative timestamp 0, no flags.
        block_header = b"\x81" + struct.pack(">h", 0) + b"\x00"
        block_size = len(block_header) + len(frame)
        group_tail = _el(b"\x9b", _uint(max(1, int(duration_us))))
        group_size = 1 + len(_size(block_size)) + block_size + len(group_tail)
        cluster_head = _el(b"\xe7", _uint(timestamp_us))
        cluster_size = len(cluster_head) + 1 + len(_size(group_size)) + group_size
        self.stream.write(
            b"\x1f\x43\xb6\x75" + _size(cluster_size) + cluster_head
            + b"\xa0" + _size(group_size) + b"\xa1" + _size(block_size) + block_header
        )
        self.stream.write(frame)
        self.stream.write(group_tail)
