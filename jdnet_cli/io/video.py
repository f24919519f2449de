"""Frame sources (ffmpeg decode, image sequences), the ffmpeg encoder and the final remux.

Every ffmpeg call gets an argument list (never a shell) and runs in its own process group, so a
Ctrl-C on the terminal reaches only Python, which then shuts the children down in order.
"""
from __future__ import annotations

import collections
import os
import queue
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import JDNetError
from .images import read_image
from .matroska_raw import RawMatroskaWriter
from .video_probe import VideoInfo, ffmpeg_exe, ffmpeg_url

_SHOWINFO = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+)\s+pts_time:\S+\s+duration:\s*(-?\d+)")
_TIMEBASE = re.compile(r"config in time_base:\s*(\d+)/(\d+)")
# ffmpeg's "-loglevel level+..." tag after the context, e.g. "[h264 @ 0x55d5] [error] Invalid NAL unit size".
_LEVEL = re.compile(r"\[(trace|debug|verbose|info|warning|error|fatal|panic)\] ")
# Names ffmpeg's scale filter uses for the YUV matrices of the colorspace tags.
_SCALE_MATRIX = {"bt709": "bt709", "bt470bg": "bt601", "smpte170m": "bt601", "bt2020nc": "bt2020", "bt2020c": "bt2020",
                 "smpte240m": "smpte240m", "fcc": "fcc"}


@dataclass
class Frame:
    """One decoded picture: H x W x 3 uint8 (or uint16) RGB, shown at ``pts_us`` for ``duration_us``."""

    index: int
    rgb: np.ndarray
    pts_us: int
    duration_us: int


@dataclass(frozen=True)
class Colour:
    """Colour tags written to the output, and the YUV matrix/range used to convert to and from RGB."""

    space: str
    primaries: str
    trc: str
    range: str  # tv or pc

    @property
    def scale_matrix(self) -> str:
        """The matrix name ffmpeg's scale filter understands."""
        return _SCALE_MATRIX.get(self.space, "bt709")


def colour_for(info: VideoInfo | None, height: int) -> Colour:
    """The input's tags where it has them; else BT.709 for HD (>= 720 lines) and BT.601 (smpte170m) for SD."""
    default = "bt709" if height >= 720 else "smpte170m"
    space = info.color_space if info and info.color_space in _SCALE_MATRIX else default
    prim = info.color_primaries if info and info.color_primaries and info.color_primaries != "unknown" else default
    trc = info.color_trc if info and info.color_trc and info.color_trc != "unknown" else default
    rng = info.color_range if info and info.color_range in ("tv", "pc") else "tv"
    return Colour(space, prim, trc, rng)


def _popen(cmd: list[str], **kw) -> subprocess.Popen:
    # Own process group: the terminal's SIGINT must not kill the encoder before we finalize it.
    return subprocess.Popen(cmd, process_group=0, **kw)


class _StderrTail:
    """Drain a child's stderr in a thread, keep its last lines, and hand showinfo timings to a queue."""

    def __init__(self, stream, timings: "queue.Queue | None" = None):
        self.lines: collections.deque[str] = collections.deque(maxlen=30)
        self.errors: list[str] = []  # the first error-level messages, where the child tags levels
        self.time_base: Fraction | None = None
        self.timings = timings
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            level = _LEVEL.search(line)
            if level:
                line = line[:level.start()] + line[level.end():]
                if level.group(1) in ("error", "fatal", "panic") and len(self.errors) < 5:
                    self.errors.append(re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip())
            if self.timings is not None:
                m = _SHOWINFO.search(line)
                if m:
                    self.timings.put((int(m.group(2)), int(m.group(3))))
                    continue
                m = _TIMEBASE.search(line)
                if m:
                    self.time_base = Fraction(int(m.group(1)), int(m.group(2)))
                    continue
                if "color_range:" in line and "color_space:" in line:
                    continue
            self.lines.append(line)
        if self.timings is not None:
            self.timings.put(None)

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the child's stderr to close."""
        self._thread.join(timeout)

    def last_error(self) -> str:
        """The most informative last line ffmpeg printed."""
        for line in reversed(self.lines):
            text = re.sub(r"^\[[^\]]*\]\s*", "", line).strip()
            if text and not text.startswith(("frame=", "Press [q]", "Stream mapping", "  ")):
                return text
        return "ffmpeg failed"


class FfmpegFrameReader:
    """Decode the video stream of a file to RGB frames with their real timestamps, as a stream."""

    def __init__(self, info: VideoInfo, video_index: int, start: float | None, duration: float | None, colour: Colour):
        self.info = info
        self.sample_aspect = info.sample_aspect
        self.high = info.high_bit_depth
        self.pix_fmt = "rgb48le" if self.high else "rgb24"
        self.width, self.height = info.width, info.height
        # level+: errors are told apart from information, so a damaged file can be recognised.
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+info"]
        if start:
            cmd += ["-ss", f"{start:.6f}"]
        if duration:
            cmd += ["-t", f"{duration:.6f}"]
        rng = {"tv": "limited", "pc": "full"}[colour.range]
        # ffmpeg's default YUV->RGB conversion (what `ffmpeg -i x.mp4 frame%d.png` gives), with the
        # matrix and range made explicit so untagged HD is read as BT.709.
        vf = f"showinfo=checksum=0,scale=in_color_matrix={colour.scale_matrix}:in_range={rng},format={self.pix_fmt}"
        cmd += ["-i", ffmpeg_url(info.path), "-map", f"0:v:{video_index}", "-an", "-sn", "-dn", "-vf", vf,
                "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", self.pix_fmt, "pipe:1", *_timeline_anchor(0)]
        self.timings: queue.Queue = queue.Queue()
        self.proc = _popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.stderr = _StderrTail(self.proc.stderr, self.timings)
        self.first_pts_s: Fraction | None = None
        self.time_base: Fraction | None = None

    def _read_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.proc.stdout.read(n - len(buf))
            if not chunk:
                break
            buf += chunk
        if not buf:
            return None
        if len(buf) < n:
            raise JDNetError(f"{self.info.path}: truncated frame from the decoder")
        return bytes(buf)

    def frames(self) -> Iterator[Frame]:
        """Yield frames in presentation order; timestamps in microseconds from the first frame."""
        channels, dtype = 3, (np.uint16 if self.high else np.uint8)
        nbytes = self.width * self.height * channels * (2 if self.high else 1)
        pending: tuple[bytes, int, int] | None = None  # (data, pts, duration) in stream time base
        prev_dur, index = 0, 0
        while True:
            data = self._read_exact(nbytes)
            timing = self.timings.get(timeout=600) if data is not None else None
            if data is not None and timing is None:
                raise JDNetError(f"{self.info.path}: decoder gave a frame without a timestamp")
            if pending is not None:
                p_data, p_pts, p_dur = pending
                if p_dur <= 0:  # unknown duration: the gap to the next frame, or the last gap
                    p_dur = (timing[0] - p_pts) if timing else prev_dur
                prev_dur = p_dur
                yield self._frame(index, p_data, p_pts, p_dur, dtype)
                index += 1
            if data is None:
                break
            pending = (data, timing[0], timing[1])
        self.proc.wait()
        self.stderr.join()
        if self.proc.returncode != 0 and index == 0:
            raise JDNetError(f"{self.info.path}: cannot decode ({self.stderr.last_error()})")
        if index == 0:
            raise JDNetError(f"{self.info.path}: no frames in the selected range")

    def _frame(self, index: int, data: bytes, pts: int, dur: int, dtype) -> Frame:
        tb = self.stderr.time_base or Fraction(1, 1_000_000)
        self.time_base = tb
        pts_s = pts * tb
        if self.first_pts_s is None:
            self.first_pts_s = pts_s
        rgb = np.frombuffer(data, dtype=dtype).reshape(self.height, self.width, 3)
        return Frame(index, rgb, round((pts_s - self.first_pts_s) * 1_000_000), max(1, round(dur * tb * 1_000_000)))

    @property
    def decode_errors(self) -> list[str]:
        """The first errors the decoder reported (damaged or truncated input), empty for a clean decode."""
        return self.stderr.errors

    def close(self) -> None:
        """Stop the decoder (used when the run is aborted)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


_PRINTF = re.compile(r"%(0?\d*)d")


def sequence_files(spec: str | Path) -> list[Path]:
    """Frames of an image sequence: a directory of images (natural order) or a printf pattern."""
    from .images import is_image_path

    spec = Path(spec)
    if spec.is_dir():
        files = [p for p in spec.iterdir() if p.is_file() and is_image_path(p)]

        def natural(p: Path):
            return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]

        return sorted(files, key=natural)
    m = _PRINTF.search(spec.name)
    if m is None or not spec.parent.is_dir():
        return []
    width = m.group(1)
    digits = r"\d{%d}" % int(width) if width.startswith("0") and width != "0" else r"\d+"
    rx = re.compile(re.escape(spec.name[: m.start()]) + f"({digits})" + re.escape(spec.name[m.end():]) + "$")
    found = [(int(mm.group(1)), p) for p in spec.parent.iterdir() if (mm := rx.match(p.name))]
    return [p for _, p in sorted(found)]


class ImageSequenceReader:
    """Frames from image files at a fixed rate."""

    def __init__(self, files: list[Path], fps: Fraction):
        if not files:
            raise JDNetError("image sequence has no frames")
        self.files = files
        self.fps = fps
        first = read_image(files[0])
        self.height, self.width = first.rgb.shape[:2]
        self.high = first.bit_depth > 8
        self.pix_fmt = "rgb48le" if self.high else "rgb24"
        self.time_base = 1 / fps
        self.first_pts_s = Fraction(0)
        self.sample_aspect = None

    def frames(self) -> Iterator[Frame]:
        """Yield each image as a frame; raise JDNetError naming a file whose size differs."""
        scale, dtype = (65535.0, np.uint16) if self.high else (255.0, np.uint8)
        for i, path in enumerate(self.files):
            img = read_image(path)
            if img.rgb.shape[:2] != (self.height, self.width):
                raise JDNetError(f"{path}: {img.rgb.shape[1]}x{img.rgb.shape[0]} differs from the first frame's {self.width}x{self.height}")
            rgb = np.round(np.clip(img.rgb, 0, 1) * scale).astype(dtype)
            pts = round(Fraction(i) / self.fps * 1_000_000)
            nxt = round(Fraction(i + 1) / self.fps * 1_000_000)
            yield Frame(i, rgb, pts, nxt - pts)

    def close(self) -> None:
        """Nothing to stop."""


@dataclass(frozen=True)
class EncodeSettings:
    """Output video codec and quality."""

    codec: str = "auto"  # libx264, or libvpx-vp9 for .webm (see settings_for_output)
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    # A source's HDR10 metadata, in x265's syntax: mastering display ('G(..)B(..)R(..)WP(..)L(..)') and light
    # level ('MaxCLL,MaxFALL'); written by libx264 and libx265 (others cannot be told it).
    hdr10: tuple[str | None, str | None] | None = None


CODECS = {"libx264": "libx264", "libx265": "libx265", "libvpx-vp9": "libvpx-vp9", "ffv1": "ffv1", "prores": "prores_ks"}
# Lower than the usual "visually lossless" 18: on grainy rain footage x264 needs crf 12 to stay
# >= 40 dB PSNR from the model output (crf 18 gives 37-39 dB on the shared clip).
_DEFAULT_CRF = {"libx264": 12, "libx265": 14, "libvpx-vp9": 18}


def default_pix_fmt(codec: str, high: bool) -> str:
    """Pixel format for a codec when --pix-fmt is not given (10-bit sources stay 10-bit)."""
    if codec == "ffv1":
        return "gbrp16le" if high else "gbrp"  # lossless codec: keep the model's RGB exactly
    if codec == "prores":
        return "yuv422p10le"
    return "yuv420p10le" if high else "yuv420p"


_NO_CODEC_FITS = {".ogv": "Theora or VP8", ".gif": "the GIF codec"}


def container_refusal(suffix: str) -> str | None:
    """Why jdnet cannot write a video with this suffix (no codec of its own fits the container), or None."""
    suffix = suffix.lower()
    # ffmpeg would say only "Unsupported codec id" at the first frame.
    if suffix in _NO_CODEC_FITS:
        return (f"a {suffix} output needs {_NO_CODEC_FITS[suffix]}, which jdnet does not encode; "
                "name the output .mkv, .webm or .mp4")
    return None


def settings_for_output(settings: EncodeSettings, suffix: str, width: int, height: int, high: bool) -> EncodeSettings:
    """The codec and pixel format one output gets: 'auto' picks by container, odd sizes get full chroma."""
    suffix = suffix.lower()
    refusal = container_refusal(suffix)
    if refusal:
        raise JDNetError(refusal)
    codec = settings.codec
    if codec == "auto":
        codec = "libvpx-vp9" if suffix == ".webm" else "libx264"  # WebM takes only VP8/VP9/AV1
    pix_fmt = settings.pix_fmt or default_pix_fmt(codec, high)
    if settings.pix_fmt is None and (width % 2 or height % 2) and pix_fmt.startswith(("yuv420p", "yuv422p")):
        # Subsampled chroma needs even sides; full chroma keeps the frame size, which padding or cropping would not.
        pix_fmt = "yuv444p" + pix_fmt[7:]
    return replace(settings, codec=codec, pix_fmt=pix_fmt)


def encoder_args(settings: EncodeSettings, high: bool) -> list[str]:
    """ffmpeg arguments selecting and tuning the encoder."""
    codec = settings.codec
    if codec not in CODECS:
        raise JDNetError(f"unsupported --codec {codec!r} (use {', '.join(CODECS)})")
    args = ["-c:v", CODECS[codec]]
    crf = settings.crf if settings.crf is not None else _DEFAULT_CRF.get(codec)
    if settings.crf is not None and codec not in _DEFAULT_CRF:
        raise JDNetError(f"--crf does not apply to {codec}")
    if codec in ("libx264", "libx265"):
        args += ["-crf", str(crf), "-preset", settings.preset or "medium"]
        display, light = settings.hdr10 or (None, None)
        if codec == "libx265":
            hdr = (":hdr10=1" + (f":master-display={display}" if display else "") + (f":max-cll={light}" if light else "")
                   if display or light else "")
            args += ["-x265-params", "log-level=error" + hdr, "-tag:v", "hvc1"]
        elif display or light:
            params = [f"mastering-display={display}"] if display else []
            args += ["-x264-params", ":".join(params + ([f"cll={light}"] if light else []))]
    elif codec == "libvpx-vp9":
        args += ["-crf", str(crf), "-b:v", "0", "-row-mt", "1"]
        if settings.preset:
            args += ["-deadline", settings.preset]
    elif codec == "ffv1":
        args += ["-level", "3", "-slicecrc", "1"]
    pix_fmt = settings.pix_fmt or default_pix_fmt(codec, high)
    if codec == "prores":
        # 422 HQ, or 4444 for full chroma (odd frame sizes): the profile is what players read, not the samples.
        args += ["-profile:v", "4" if pix_fmt.startswith("yuv444") else "3"]
    args += ["-pix_fmt", pix_fmt]
    return args


def check_encoder(settings: EncodeSettings, suffix: str, asked: EncodeSettings | None = None) -> None:
    """Raise JDNetError with ffmpeg's reason when ``settings`` (codec, --crf, --preset, --pix-fmt) cannot encode
    into a ``suffix`` container; ``asked``: the options as the user gave them, for the message.

    One black 16x16 frame, encoded into a throw-away file of that container in a few hundredths of a
    second: a bad preset or pixel format, or a codec the container cannot hold (ProRes in .mp4, H.264 in
    .webm), is then a usage error before the model loads, not a failure of every file at its first frame.
    """
    fd, trial = tempfile.mkstemp(prefix="jdnet-encoder-check.", suffix=suffix)
    os.close(fd)
    try:
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-f", "lavfi", "-i",
               "color=black:size=16x16:rate=25", "-frames:v", "1", *encoder_args(settings, False), "-y",
               ffmpeg_url(trial)]
        proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, process_group=0)
    finally:
        Path(trial).unlink(missing_ok=True)
    if proc.returncode != 0:
        asked = asked or settings
        given = [f"--{name} {value}" for name, value in (("codec", asked.codec if asked.codec != "auto" else None),
                                                          ("crf", asked.crf), ("preset", asked.preset),
                                                          ("pix-fmt", asked.pix_fmt)) if value is not None]
        raise JDNetError(f"{settings.codec} cannot encode a {suffix} output with {' '.join(given) or 'these settings'} "
                         f"({ffmpeg_failure(proc.stderr, proc.returncode)})")


# What ffmpeg puts before a message: "[vost#0:0/libx264 @ 0x55d5] [enc:libx264 @ 0x55d5] " contexts, or
# a library's own "x264 [error]: ".
_FFMPEG_MESSAGE_PREFIX = re.compile(r"^(?:\[[^\]]*\]\s*)+|^\w+ \[\w+\]:\s*")


def ffmpeg_failure(stderr: bytes, returncode: int | None) -> str:
    """Why an ffmpeg run at ``-loglevel error`` failed: its first message, without context tags."""
    # The first message is the cause ("invalid preset 'nope'", "Could not find tag for codec prores ...");
    # what follows are its echoes up the pipeline, ending in "Nothing was written into output file".
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.strip():
            return _FFMPEG_MESSAGE_PREFIX.sub("", line.strip()).strip()
    return f"exit code {returncode}"


class FfmpegEncoder:
    """An ffmpeg process that reads raw frames with timestamps (Matroska on stdin) and encodes a file."""

    def __init__(self, dest: Path, width: int, height: int, in_pix_fmt: str, settings: EncodeSettings,
                 colour: Colour, time_base: Fraction | None, sample_aspect: tuple[int, int] | None = None):
        high = in_pix_fmt == "rgb48le"
        out_pix_fmt = settings.pix_fmt or default_pix_fmt(settings.codec, high)
        rgb_out = out_pix_fmt.startswith(("gbr", "rgb", "bgr"))
        rng = "full" if rgb_out else {"tv": "limited", "pc": "full"}[colour.range]
        tags = f"color_primaries={colour.primaries}:color_trc={colour.trc}:range={rng}"
        if rgb_out:
            # RGB output needs no YUV matrix; encoders such as ffv1 reject an explicit 'gbr' colorspace tag.
            vf = f"setparams={tags}"
        else:
            vf = (f"scale=out_color_matrix={colour.scale_matrix}:out_range={rng}:flags=accurate_rnd+full_chroma_int,"
                  # Frame properties win over -color_* options in current ffmpeg, so tag the frames too.
                  f"setparams=colorspace={colour.space}:{tags}")
        if sample_aspect:
            # Anamorphic video (DV, broadcast SD) has non-square pixels: without this it plays stretched.
            vf += f",setsar={sample_aspect[0]}/{sample_aspect[1]}"
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-f", "matroska", "-i", "pipe:0",
               "-map", "0:v", "-map_metadata", "-1", "-vf", vf]
        cmd += encoder_args(settings, high)
        if not rgb_out:
            cmd += ["-colorspace", colour.space]
        cmd += ["-color_primaries", colour.primaries, "-color_trc", colour.trc,
                "-color_range", "pc" if rgb_out else colour.range, "-fps_mode", "passthrough"]
        if time_base is not None and time_base > 0:
            cmd += ["-enc_time_base:v", f"{time_base.numerator}/{time_base.denominator}"]
        cmd += ["-y", ffmpeg_url(dest)]
        self._err = tempfile.TemporaryFile()
        self.proc = _popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)
        self.writer = RawMatroskaWriter(self.proc.stdin, width, height, in_pix_fmt)
        self.frames_written = 0
        self.end_us = 0

    def write(self, frame: Frame) -> None:
        """Send one derained frame to the encoder."""
        try:
            self.writer.write(memoryview(np.ascontiguousarray(frame.rgb)).cast("B"), frame.pts_us, frame.duration_us)
        except (BrokenPipeError, OSError):
            self.proc.wait()
            raise JDNetError(f"encoder stopped ({self.error()})") from None
        self.frames_written += 1
        self.end_us = max(self.end_us, frame.pts_us + frame.duration_us)

    def error(self) -> str:
        """Why the encoder failed, from its error output."""
        self._err.seek(0)
        return ffmpeg_failure(self._err.read(), self.proc.returncode)

    def finish(self) -> None:
        """Close the input so ffmpeg writes a complete, valid file; raise if it failed."""
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self.proc.wait()
        if self.proc.returncode != 0:
            raise JDNetError(f"encoding failed ({self.error()})")

    def abort(self) -> None:
        """Kill the encoder (its file is then discarded)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _copied_streams(index: int, ext: str) -> list[str]:
    """ffmpeg -map options for the streams of input ``index`` that a derained video carries over unchanged."""
    maps = ["-map", f"{index}:a?", "-map", f"{index}:s?"]
    return maps + (["-map", f"{index}:t?"] if ext in ("mkv", "mka", "webm") else [])


@dataclass(frozen=True)
class StreamCopy:
    """How the source's audio and subtitles go into the output: extra ffmpeg codec options and a note."""

    codec_args: tuple[str, ...] = ()
    note: str | None = None  # what was converted, for the user; None when every stream is copied as it is


# What a container gets when it cannot take the source's audio or subtitles as they are: its own audio
# codec at a bit rate that is transparent for most listeners, and its own text subtitle format (bitmap
# subtitles cannot be converted to text, so those still fail). Matroska takes every audio codec.
_AAC = (("-c:a", "aac", "-b:a", "192k"), "AAC 192 kb/s")
_MP2 = (("-c:a", "mp2", "-b:a", "192k"), "MPEG audio layer 2 192 kb/s")
_TIMED_TEXT = (("-c:s", "mov_text"), "MP4 timed text")
_AUDIO_CONVERSIONS = {
    "webm": (("-c:a", "libopus", "-b:a", "160k"), "Opus 160 kb/s"),
    "mp4": _AAC, "m4v": _AAC, "mov": _AAC, "3gp": _AAC,
    "avi": (("-c:a", "libmp3lame", "-b:a", "192k"), "MP3 192 kb/s"),
    "mpg": _MP2, "mpeg": _MP2,
}
_SUBTITLE_CONVERSIONS = {
    "webm": (("-c:s", "webvtt"), "WebVTT"),
    "mp4": _TIMED_TEXT, "m4v": _TIMED_TEXT, "mov": _TIMED_TEXT,
    "mkv": (("-c:s", "srt"), "SubRip"),
}


def _trial_mux(source: Path, dest: Path, codec_args: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Write only the header of ``dest``'s container with ``source``'s copied streams (to a deleted temp file)."""
    trial = temp_path_beside(dest, "check")
    try:
        # -t 0 writes no packet: the muxer takes or refuses each stream as it writes the header.
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-i", ffmpeg_url(source),
               *_copied_streams(0, dest.suffix.lower().lstrip(".")), "-c", "copy", *codec_args, "-t", "0", "-y",
               ffmpeg_url(trial)]
        return subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, process_group=0)
    finally:
        trial.unlink(missing_ok=True)


def plan_stream_copy(source: Path, dest: Path, audio_tracks: int = 0, subtitle_tracks: int = 0) -> StreamCopy:
    """How ``source``'s audio and subtitles go into ``dest``: copied, else converted to what its container takes.

    Decided before any frame is derained: the final remux would otherwise fail after all the work (AAC in
    WebM, mov_text subtitles in Matroska, ASS in MP4). Streams are converted only when copying fails, and
    audio before subtitles, so nothing is re-encoded that could have been kept; given the track counts, each
    track the container takes as it is (an Opus track beside an AAC one, for WebM) stays copied.
    """
    first = _trial_mux(source, dest, ())
    if first.returncode == 0:
        return StreamCopy()
    ext = dest.suffix.lower().lstrip(".")
    audio, subtitles = _AUDIO_CONVERSIONS.get(ext), _SUBTITLE_CONVERSIONS.get(ext)
    options = []
    if audio:
        options.append((audio[0], f"its audio re-encoded as {audio[1]}", "audio"))
    if subtitles:
        options.append((subtitles[0], f"its subtitles converted to {subtitles[1]}", "subtitles"))
    if audio and subtitles:
        options.append((audio[0] + subtitles[0], f"its audio re-encoded as {audio[1]} and its subtitles converted "
                        f"to {subtitles[1]}", "audio and subtitles"))
    for codec_args, change, what in options:
        if _trial_mux(source, dest, codec_args).returncode == 0:
            return _copy_what_fits(source, dest, codec_args, {"a": audio_tracks, "s": subtitle_tracks}) or \
                StreamCopy(codec_args, f"has {change}: a {dest.suffix.lower()} file cannot hold the input's {what} unchanged")
    raise JDNetError(f"a {dest.suffix} file cannot hold this video's audio or subtitles "
                     f"({ffmpeg_failure(first.stderr, first.returncode)}); an output named {source.suffix.lower()} keeps them")


def _per_track(codec_args: tuple[str, ...], kind: str, tracks: list[int]) -> tuple[str, ...]:
    """``codec_args``' options for stream kind ``kind`` ('a' or 's') applied to ``tracks`` only, the rest copied."""
    pairs = [(codec_args[i], codec_args[i + 1]) for i in range(0, len(codec_args), 2) if codec_args[i].endswith(f":{kind}")]
    if not pairs:
        return ()
    out = [f"-c:{kind}", "copy"]
    for track in tracks:
        for option, value in pairs:
            out += [f"{option}:{track}", value]
    return tuple(out)


def _copy_what_fits(source: Path, dest: Path, codec_args: tuple[str, ...], counts: dict[str, int]) -> StreamCopy | None:
    """``codec_args`` (which convert every audio and/or subtitle track) narrowed to the tracks that cannot be
    copied, found by one header trial per track; None when every track needs it (or the counts are unknown)."""
    converted = {kind: list(range(n)) for kind, n in counts.items() if n and _per_track(codec_args, kind, [0])}
    if not converted or all(len(tracks) <= 1 for tracks in converted.values()):
        return None

    def args(plan: dict[str, list[int]]) -> tuple[str, ...]:
        return tuple(a for kind, tracks in plan.items() for a in _per_track(codec_args, kind, tracks))

    for kind in converted:
        for track in list(converted[kind]):
            trial = {**converted, kind: [t for t in converted[kind] if t != track]}
            if _trial_mux(source, dest, args(trial)).returncode == 0:
                converted = trial
    if all(len(converted[kind]) == counts[kind] for kind in converted):
        return None
    changes = []
    for kind, tracks in converted.items():
        if tracks:
            noun = "audio track" if kind == "a" else "subtitle track"
            verb = f"re-encoded as {_describe(codec_args, 'a')}" if kind == "a" else f"converted to {_describe(codec_args, 's')}"
            changes.append(f"{len(tracks)} of its {counts[kind]} {noun}s {verb}")
    return StreamCopy(args(converted), f"has {' and '.join(changes)}: a {dest.suffix.lower()} file cannot hold "
                                       "them unchanged (the others are copied)")


def _describe(codec_args: tuple[str, ...], kind: str) -> str:
    """The words the conversion tables give the codec of ``kind`` in ``codec_args``."""
    table = _AUDIO_CONVERSIONS if kind == "a" else _SUBTITLE_CONVERSIONS
    codec = codec_args[codec_args.index(f"-c:{kind}") + 1]
    return next(words for args, words in table.values() if args[1] == codec)


@dataclass(frozen=True)
class SourceTags:
    """What of the source's metadata needs asking for: the derained stream's own tags, and QuickTime keys."""

    video: tuple[tuple[str, str], ...] = ()  # (key, value) of the processed video stream: language, title
    vendor_keys: bool = False  # com.apple.quicktime.* / com.android.* keys, written by mov/mp4 only on request
    covers: tuple[int, ...] = ()  # JPEG/PNG cover pictures, by index among the source's video streams


def remux(video: Path, source: Path | None, dest: Path, video_offset: float, start: float | None,
          duration: float | None, limit: float | None, streams: StreamCopy = StreamCopy(),
          copies_streams: bool = True, tags: SourceTags = SourceTags()) -> None:
    """Put the encoded video together with the source's audio, subtitles, attachments and metadata (copied).

    ``video_offset``: where the first encoded frame sits on the source's timeline (seconds, including
    ``start``); ``limit``: end of the kept part relative to ``start`` (for a partial file); ``streams``: the
    conversions ``plan_stream_copy`` chose; ``copies_streams``: whether the source has audio, subtitles or
    attachments to copy; ``tags``: source metadata that stream copying does not carry by itself.
    """
    if not start or source is None:
        _mux(video, source, dest, video_offset, duration, limit, streams, tags=tags)
        return
    # ffmpeg's output-side -ss drops stream-copied packets whose decoding time is before the cut, and a
    # video with B-frames decodes its first frame before it shows it: the derained video (already just the
    # kept part) would lose its first keyframe and then every frame up to the next. So only the source's
    # other streams are cut, in a pass of their own, to the output's container type (which holds them:
    # plan_stream_copy checked), and the video joins them uncut.
    if not copies_streams:
        # Nothing to cut but the chapters and tags: ffmpeg moves the chapters by -ss (and drops those that
        # end before it) when it writes them out as an FFMETADATA file, which the mux then takes them from.
        chapters = temp_path_beside(dest, "chapters")
        try:
            cmd = [*_FFMPEG, "-i", ffmpeg_url(source), "-vn", "-an", "-sn", "-dn", "-map_metadata", "0",
                   "-map_chapters", "0", "-ss", f"{start:.6f}", *(["-t", f"{duration:.6f}"] if duration else []),
                   "-f", "ffmetadata", "-y", ffmpeg_url(chapters)]
            _run_ffmpeg(cmd)
            _mux(video, chapters, dest, video_offset - start, None, limit, streams, tags=tags, anchor=False)
        finally:
            chapters.unlink(missing_ok=True)
        return
    cut = temp_path_beside(dest, "cut")
    try:
        ext = dest.suffix.lower().lstrip(".")
        cmd = [*_FFMPEG, "-i", ffmpeg_url(source), *_copied_streams(0, ext), "-c", "copy", *streams.codec_args,
               "-map_metadata", "0", "-map_chapters", "0", "-ss", f"{start:.6f}", *_movflags(ext, tags, faststart=False)]
        if duration:
            cmd += ["-t", f"{duration:.6f}"]
        _run_ffmpeg([*cmd, "-y", ffmpeg_url(cut), *_timeline_anchor(0)])
        _mux(video, cut, dest, video_offset - start, None, limit, StreamCopy(), tags=tags)
    finally:
        cut.unlink(missing_ok=True)


_FFMPEG = ("-hide_banner", "-nostdin", "-nostats", "-loglevel", "error")
# In formats with timestamp discontinuities (MPEG-TS, MPEG-PS, FLV) ffmpeg starts an input's clock at the
# first packet of the streams it reads, not of the file: decoding the video alone would put a video that
# starts 1 s after the audio at 0, and the remux (audio and subtitles alone) would put the audio at 0 too,
# a 1 s lip-sync error. Every ffmpeg run that reads the source also stream-copies its other streams to a
# null output, so all of them agree on where the file starts.
def _timeline_anchor(source_index: int) -> list[str]:
    return ["-map", f"{source_index}:v?", "-map", f"{source_index}:a?", "-map", f"{source_index}:s?", "-c", "copy",
            "-f", "null", "-"]


def _run_ffmpeg(args: list[str]) -> None:
    proc = subprocess.run([ffmpeg_exe(), *args], capture_output=True, stdin=subprocess.DEVNULL, process_group=0)
    if proc.returncode != 0:
        raise JDNetError(f"cannot write the output container ({ffmpeg_failure(proc.stderr, proc.returncode)})")


def _mux(video: Path, source: Path | None, dest: Path, video_offset: float, duration: float | None,
         limit: float | None, streams: StreamCopy, chapters: bool = True, tags: SourceTags = SourceTags(),
         anchor: bool = True) -> None:
    """The encoded video (moved to ``video_offset``) plus ``source``'s other streams and metadata, all copied.

    ``anchor``: whether ``source`` has streams whose clock the null output must pin (not an FFMETADATA file).
    """
    ext = dest.suffix.lower().lstrip(".")
    cmd = list(_FFMPEG)
    if video_offset:
        # The encoded video starts at 0; this puts its first frame back where it was in the source.
        cmd += ["-itsoffset", f"{video_offset:.6f}"]
    cmd += ["-i", ffmpeg_url(video), *(["-i", ffmpeg_url(source)] if source is not None else []), "-map", "0:v",
            "-c", "copy"]
    if source is not None:
        cmd += [*_copied_streams(1, ext), *streams.codec_args, "-map_metadata", "1",
                "-map_chapters", "1" if chapters else "-1"]
        for key, value in tags.video:
            cmd += ["-metadata:s:v:0", f"{key}={value}"]
            if key == "title" and ext in ("mp4", "m4v", "mov"):
                cmd += ["-metadata:s:v:0", f"handler_name={value}"]  # where MP4/QuickTime keep a track's name
        if ext in ("mp4", "m4v") and anchor:
            # Cover art (a picture stream) is mapped only on request; MP4 holds JPEG and PNG covers (its covr atom).
            for n, picture in enumerate(tags.covers, start=1):
                cmd += ["-map", f"1:v:{picture}", f"-disposition:v:{n}", "attached_pic"]
    if limit is not None or duration:
        cmd += ["-t", f"{min(limit or duration, duration or limit):.6f}"]
    cmd += _movflags(ext, tags if source is not None else SourceTags())
    _run_ffmpeg([*cmd, "-y", ffmpeg_url(dest), *(_timeline_anchor(1) if source is not None and anchor else [])])


def _movflags(ext: str, tags: SourceTags, faststart: bool = True) -> list[str]:
    """MP4/QuickTime muxer flags: the index first (playback starts before the download ends), and phones' keys
    (location, make, model, creation date), which are written only with use_metadata_tags."""
    if ext not in ("mp4", "m4v", "mov"):
        return []
    flags = ("+faststart" if faststart else "") + ("+use_metadata_tags" if tags.vendor_keys else "")
    return ["-movflags", flags] if flags else []


def temp_path_beside(dest: Path, tag: str) -> Path:
    """An empty hidden temp file in dest's directory with dest's suffix (so ffmpeg picks the format)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".{tag}{dest.suffix}", dir=dest.parent)
    os.close(fd)
    return Path(tmp)
