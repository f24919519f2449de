"""Derain an image file end to end: decode, run the Derainer, re-encode with the same depth and alpha."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..errors import JDNetError
from ..inference.derainer import Derainer
from ..io.atomic import atomic_write_bytes
from ..io.images import DEFAULT_MAX_PIXELS, Image, conversion_losses, decode_image, encode_image, read_bytes, read_image, write_image
from .planning import STDIO


def derain_image(derainer: Derainer, img: Image) -> Image:
    """Derain the colour channels; alpha, bit depth and grayscale-ness are carried over."""
    out = derainer(img.rgb)
    if img.grayscale:
        out = out.mean(axis=2, keepdims=True).repeat(3, axis=2)
    return replace(img, rgb=out)


def derain_file(derainer: Derainer, src: Path, dest: Path, max_pixels: int = DEFAULT_MAX_PIXELS, quality: int | None = None) -> str | None:
    """Read ``src``, derain it, and write ``dest`` atomically; returns what the output format could not keep."""
    return write_image(dest, derain_image(derainer, read_image(src, max_pixels)), quality)


def derain_bytes(
    derainer: Derainer, data: bytes, ext: str | None = None, name: str = "-", max_pixels: int = DEFAULT_MAX_PIXELS, quality: int | None = None
) -> tuple[bytes, str | None]:
    """Derain encoded image bytes (format sniffed), encoded as ``ext`` (default: the input's format), and what it lost."""
    img = derain_image(derainer, decode_image(data, name, max_pixels))
    ext = ext or img.format or ".png"
    return encode_image(img, ext, quality), conversion_losses(img, ext)


def image_processor(
    derainer: Derainer, ext: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, quality: int | None = None
) -> Callable[[Path, Path], str | None]:
    """A job function ``process(src, dest) -> losses`` for the runner: files, or ``STDIO`` for stdin/stdout."""

    def process(src: Path, dest: Path) -> str | None:
        if src != STDIO and dest != STDIO:
            return derain_file(derainer, src, dest, max_pixels=max_pixels, quality=quality)
        data = sys.stdin.buffer.read() if src == STDIO else read_bytes(src)
        target_ext = ext or (None if dest == STDIO else dest.suffix)
        encoded, losses = derain_bytes(derainer, data, target_ext, name=str(src), max_pixels=max_pixels, quality=quality)
        if dest == STDIO:
            try:
                sys.stdout.buffer.write(encoded)
                sys.stdout.buffer.flush()
            except OSError as err:  # a full disk, a closed pipe: say it was the write, not the input
                raise JDNetError(f"cannot write - (stdout): {err.strerror or err}") from None
        else:
            atomic_write_bytes(dest, encoded)
        return losses

    return process
