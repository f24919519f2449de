"""What is in a video file, read from ``ffmpeg -i`` (imageio-ffmpeg ships ffmpeg but not ffprobe)."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import JDNetError

# Containers whose index gives an exact frame count for a cheap packet pass (no decoding).
INDEXED_CONTAINERS = {".mp4", ".m4v", ".mov", ".3gp", ".avi"}


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped in the imageio-ffmpeg wheel."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as err:
        raise JDNetError(f"ffmpeg is not available ({err}); install imageio-ffmpeg") from None


def ffmpeg_url(path: str | Path) -> str:
    """A local path as ffmpeg must be given it: with 'file:' first, so that a name with a colon in it
    ('take1:2.mp4') is not taken for a protocol."""
    return "file:" + str(path)


@dataclass
class VideoInfo:
    """The first real video stream of a file and what the file holds besides it."""

    path: Path
    width: int
    height: int
    codec: str
    pix_fmt: str
    duration: float | None  # seconds, from the container; None when unknown
    start: float  # container start time in seconds
    fps: float | None  # nominal rate as ffmpeg reports it (display only; timing uses real timestamps)
    color_range: str | None = None
    color_space: str | None = None
    color_primaries: str | None = None
    color_trc: str | None = None
    stream_types: list[str] = field(default_factory=list)  # per input stream: video/audio/subtitle/...
    video_index: int = 0  # among the file's video streams (cover art skipped): the one we process
    attached_pics: int = 0  # video streams that are cover art (one picture), anywhere in the file
    cover_streams: tuple[int, ...] = ()  # those of them in JPEG or PNG, by their index among the video streams
    sample_aspect: tuple[int, int] | None = None  # the stream's pixel shape (SAR) when not square, as stored
    stream_tags: dict[str, str] = field(default_factory=dict)  # the processed stream's language and title
    vendor_tags: bool = False  # the file has QuickTime 'mdta' keys (com.apple.quicktime.*, com.android.*)
    field_order: str | None = None  # 'top' or 'bottom' for interlaced video; None for progressive or unknown

    @property
    def high_bit_depth(self) -> bool:
        """True for 9-16 bit sources, which are decoded as rgb48 so no precision is lost."""
        # ffmpeg names every >8-bit format with an endianness suffix (yuv420p10le, p010le, rgb48le).
        return self.pix_fmt.endswith(("le", "be")) and not re.match(r"^(rgb|bgr)(565|555|444)", self.pix_fmt)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _parse_colour(props: str, info: VideoInfo) -> None:
    """'tv, bt709/bt709/bt709, progressive' or 'tv, bt709, progressive' -> colour fields."""
    for item in (p.strip() for p in props.split(",")):
        if item in ("tv", "pc"):
            info.color_range = item
        elif "/" in item:
            space, prim, trc = (item.split("/") + ["", ""])[:3]
            info.color_space, info.color_primaries, info.color_trc = space or None, prim or None, trc or None
        elif item in ("top first", "bottom first", "top coded first (swapped)", "bottom coded first (swapped)"):
            info.field_order = item.split()[0]
        elif re.match(r"^(bt|smpte|gbr|fcc|ycgco|ictcp|chroma)", item):
            # One name means space, primaries and transfer are all that name.
            info.color_space = info.color_primaries = info.color_trc = item


def parse_ffmpeg_info(stderr: str, path: Path) -> VideoInfo:
    """Parse ``ffmpeg -i`` stderr of input #0; raise JDNetError naming ``path`` when it is not a video."""
    if "Input #0" not in stderr:
        lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else "ffmpeg could not open it"
        reason = re.sub(r"^\[[^\]]*\]\s*", "", reason)
        reason = re.sub(r"^Error opening input( files?)?:\s*", "", reason)
        reason = reason.replace(ffmpeg_url(path), "").replace(str(path), "").strip(" :") or "ffmpeg could not open it"
        raise JDNetError(f"{path}: not a readable video ({reason})")
    body = stderr.split("Input #0", 1)[1]
    body = re.split(r"\n(?:Input #1|Output #0|Stream mapping)", body)[0]
    duration, start = None, 0.0
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", body)
    if m:
        duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    m = re.search(r"start: (-?\d+(?:\.\d+)?)", body)
    if m:
        start = float(m.group(1))
    # ffmpeg lists streams that belong to a "Stream group" (a track reference) under it, out of index
    # order and sometimes more than once: take each index once, in index order.
    streams = {}
    headers = list(re.finditer(r"^\s*Stream #0:(\d+)([^:]*): (\w+): (.*)$", body, re.M))
    for m, after in zip(headers, headers[1:] + [None]):
        # A stream's own lines (its metadata, its side data such as rotation) run to the next stream's header.
        section = body[m.end() : after.start() if after else len(body)]
        section = re.split(r"\n\s*Stream group", section)[0]
        streams.setdefault(int(m.group(1)), (m.group(3).lower(), m.group(4), m.group(2), section))
    types, video, video_index, pictures, own, covers, nth_video = [], None, 0, 0, ("", ""), [], 0
    for _index, (kind, desc, label, section) in sorted(streams.items()):
        if kind == "data" and "(text / 0x74786574)" in desc:
            kind = "chapters"  # an mp4/mov chapter track: chapters travel as chapters, not as a stream
        pictures += kind == "video" and "(attached pic)" in desc
        if kind == "video" and "(attached pic)" in desc and desc.split()[0] in ("mjpeg", "png"):
            covers.append(nth_video)  # a JPEG or PNG picture, which mp4/mov outputs take as their cover
        nth_video += kind == "video"
        if kind == "video" and video is None:
            if "(attached pic)" in desc:
                video_index += 1
            else:
                video, own = desc, (label, section)
        types.append(kind)
    if video is None:
        raise JDNetError(f"{path}: no video stream")
    parts = _split_top_level(video)
    codec = parts[0].split()[0]
    pm = re.match(r"^(\w+)(?:\((.*)\))?$", parts[1]) if len(parts) > 1 else None
    size = next((re.match(r"^(\d+)x(\d+)", p) for p in parts if re.match(r"^\d+x\d+", p)), None)
    if pm is None or size is None:
        raise JDNetError(f"{path}: video stream without a decodable picture format ({codec})")
    fps_m = next((re.match(r"^(\d+(?:\.\d+)?)(k?) fps$", p) for p in parts if re.match(r"^\d+(?:\.\d+)?k? fps$", p)), None)
    fps = float(fps_m.group(1)) * (1000 if fps_m.group(2) else 1) if fps_m else None
    width, height = int(size.group(1)), int(size.group(2))
    rot = re.search(r"rotation of (-?\d+(?:\.\d+)?) degrees", own[1])  # this stream's, not another's
    turned = bool(rot) and round(abs(float(rot.group(1)))) % 180 == 90
    sar_m = re.search(r"\[SAR (\d+):(\d+) DAR", video)
    sar = (int(sar_m.group(1)), int(sar_m.group(2))) if sar_m else None
    if sar is not None and (sar[0] == sar[1] or 0 in sar):
        sar = None
    if turned:
        width, height = height, width  # ffmpeg auto-rotates when decoding: frames come out upright
        sar = sar[::-1] if sar else None  # and its pixels turn with them
    tags = {}
    lang = re.search(r"\((\w{3})\)", own[0])
    if lang and lang.group(1) != "und":
        tags["language"] = lang.group(1)
    title = re.search(r"^\s+title\s*: (.*)$", own[1].split("Side data:")[0], re.M)
    if title:
        tags["title"] = title.group(1).strip()
    globals_ = body.split("Duration:", 1)[0]
    info = VideoInfo(path, width, height, codec, pm.group(1), duration, start, fps, stream_types=types,
                     video_index=video_index, attached_pics=pictures, cover_streams=tuple(covers), sample_aspect=sar, stream_tags=tags,
                     vendor_tags=bool(re.search(r"^\s+com\.(apple|android)\.", globals_, re.M)))
    if pm.group(2):
        _parse_colour(pm.group(2), info)
    return info


def probe(path: str | Path) -> VideoInfo:
    """Describe the video file at ``path``; raise JDNetError naming it if it is not a readable video."""
    path = Path(path)
    if not path.exists():
        raise JDNetError(f"{path}: no such file")
    if path.is_dir():
        raise JDNetError(f"{path}: is a directory")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise JDNetError(f"{path}: cannot read ({err.strerror or err})") from None
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", ffmpeg_url(path)], capture_output=True, timeout=120)
    return parse_ffmpeg_info(proc.stderr.decode("utf-8", "replace"), path)


def count_frames(path: str | Path, start: float | None = None, duration: float | None = None) -> int | None:
    """Exact frame count from the container index (mp4/mov/avi) without decoding; None for others."""
    path = Path(path)
    if path.suffix.lower() not in INDEXED_CONTAINERS:
        return None
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", ffmpeg_url(path),
           "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"]
    proc = subprocess.run(cmd, capture_output=True, timeout=600)
    if proc.returncode != 0:
        return None
    tb, pts = None, []
    for line in proc.stdout.decode("ascii", "replace").splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            tb = int(num) / int(den)
        elif line and not line.startswith("#"):
            fields = [f.strip() for f in line.split(",")]
            pts.append(int(fields[2]))
    if tb is None:
        return None
    if start is None and duration is None:
        return len(pts)
    t0 = min(pts) * tb if pts else 0.0
    lo = start or 0.0
    hi = lo + duration if duration is not None else float("inf")
    return sum(1 for p in pts if lo - 1e-6 <= p * tb - t0 < hi - 1e-6)


def packet_spans(path: str | Path, video_index: int) -> tuple[tuple[float, float], float] | None:
    """From a stream-copy pass (no decoding): the (first, end) seconds of the ``video_index``-th video
    stream's packets, and where the last packet of any audio, video or subtitle stream ends; None on failure."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", ffmpeg_url(path),
           "-map", f"0:v:{video_index}", "-map", "0:a?", "-map", "0:s?", "-c", "copy", "-f", "framecrc", "-"]
    proc = subprocess.run(cmd, capture_output=True, timeout=600)
    if proc.returncode != 0:
        return None
    bases: dict[int, float] = {}
    spans: dict[int, list[float]] = {}
    for line in proc.stdout.decode("ascii", "replace").splitlines():
        if line.startswith("#tb "):
            index, base = line[4:].split(":", 1)
            num, den = base.strip().split("/")
            bases[int(index)] = int(num) / int(den)
        elif line and not line.startswith("#"):
            fields = [f.strip() for f in line.split(",")]
            index = int(fields[0])
            tb = bases.get(index, 0.0)
            t0, t1 = int(fields[2]) * tb, (int(fields[2]) + int(fields[3])) * tb
            span = spans.setdefault(index, [t0, t1])
            span[0], span[1] = min(span[0], t0), max(span[1], t1)
    if 0 not in spans:
        return None
    return (spans[0][0], spans[0][1]), max(end for _, end in spans.values())


# Transfer curves of HDR video, whose files may carry HDR10 mastering-display and light-level metadata.
HDR_TRANSFERS = ("smpte2084", "arib-std-b67")
_CHROMATICITY = r"\(([\d.]+)[,\s]+([\d.]+)\)"


def hdr_mastering(path: str | Path, video_index: int) -> tuple[str | None, str | None]:
    """The first frame's HDR10 metadata as x265 writes it: ('G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)' or None,
    'MaxCLL,MaxFALL' or None), read by decoding that one frame (it is frame side data, not in the header)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "info", "-i", ffmpeg_url(path),
           "-map", f"0:v:{video_index}", "-frames:v", "1", "-vf", "showinfo", "-f", "null", "-"]
    text = subprocess.run(cmd, capture_output=True, timeout=120).stderr.decode("utf-8", "replace")
    display = light = None
    m = re.search(rf"Mastering display metadata: .*?r{_CHROMATICITY} g{_CHROMATICITY} b{_CHROMATICITY} "
                  rf"wp{_CHROMATICITY} min_luminance=([\d.]+), max_luminance=([\d.]+)", text)
    if m:
        rx, ry, gx, gy, bx, by, wx, wy = (round(float(v) * 50000) for v in m.groups()[:8])
        low, high = (round(float(v) * 10000) for v in m.groups()[8:])
        display = f"G({gx},{gy})B({bx},{by})R({rx},{ry})WP({wx},{wy})L({high},{low})"
    m = re.search(r"Content light level metadata: MaxCLL=(\d+), MaxFALL=(\d+)", text)
    if m:
        light = f"{m.group(1)},{m.group(2)}"
    return display, light
