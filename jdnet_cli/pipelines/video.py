"""Derain a video as a stream: decode, batched inference and encode overlap in three threads.

Queues between the stages are bounded, so memory stays constant whatever the length. The encoded
video goes to a hidden temp file beside the output, is remuxed with the source's other streams into
a second temp file, and only then renamed to the output name.
"""
from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable

from ..errors import JDNetError
from ..inference.derainer import Derainer
from ..io.atomic import new_file_mode
from ..io.images import is_image_path
from ..io.video import (
    EncodeSettings,
    FfmpegEncoder,
    FfmpegFrameReader,
    Frame,
    ImageSequenceReader,
    SourceTags,
    StreamCopy,
    colour_for,
    container_refusal,
    encoder_args,
    plan_stream_copy,
    remux,
    sequence_files,
    settings_for_output,
    temp_path_beside,
)
from ..io.video_probe import HDR_TRANSFERS, count_frames, hdr_mastering, packet_spans, probe
from .planning import OutputRules, check_output_folder, check_paths_given, once_each, walk_files

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".flv", ".wmv", ".mpg", ".mpeg", ".3gp", ".ogv")
_DONE = object()
# Containers whose header states the duration. Others (MPEG-TS, MPEG-PS, FLV, ...) often have it
# estimated from the bit rate, too loosely to tell a truncated file from a valid one.
_STATED_DURATION = (".mp4", ".m4v", ".mov", ".3gp", ".avi", ".mkv", ".webm")


@dataclass(frozen=True)
class VideoJob:
    """One input (video file or image sequence) and its output file (None when already failed)."""

    input: Path
    output: Path | None
    sequence: bool = False
    error: str | None = None


@dataclass
class VideoResult:
    """What happened to one video."""

    frames: int
    seconds: float
    output: Path  # always the final file: an interrupt or damage raises, naming the partial file kept
    note: str | None = None  # e.g. the decoder reported errors but the stream played to its end


class VideoInterrupted(Exception):
    """Ctrl-C: ``partial`` is the valid partial file that was kept, or None when nothing was kept."""

    def __init__(self, partial: Path | None, frames: int):
        super().__init__("interrupted")
        self.partial, self.frames = partial, frames


class VideoPartlyDone(JDNetError):
    """The job failed after deraining frames (a damaged input, a failed final mux): ``partial`` holds them."""

    def __init__(self, message: str, partial: Path, frames: int):
        super().__init__(message)
        self.partial, self.frames = partial, frames


# Moving-picture and audio formats people name outputs with that jdnet does not write. An OUTPUT ending in
# one is a file name, not a folder: refused, rather than created as a folder with the video inside.
_OTHER_VIDEO_SUFFIXES = frozenset(".gif .apng .webp .mxf .vob .ogg .oga .asf .f4v .rm .rmvb .y4m .nut .mka .m4a "
                                  ".mp3 .wav .flac .aac .opus".split())


_WRITTEN_SUFFIXES = frozenset(e for e in VIDEO_EXTENSIONS if container_refusal(e) is None)


# Read (found in folders too), never written: their outputs are .mkv.
_READ_ONLY_VIDEO_EXTENSIONS = (".y4m", ".mxf")


def is_video_path(path: Path) -> bool:
    """True if the extension is a video container we look for in directories."""
    return path.suffix.lower() in VIDEO_EXTENSIONS + _READ_ONLY_VIDEO_EXTENSIONS


def _is_sequence_spec(path: Path) -> bool:
    return "%" in path.name and not path.exists() and path.parent.is_dir()


def plan_video_jobs(inputs: Iterable[str], output: str) -> list[VideoJob]:
    """Expand files, directories of videos, frame directories and printf patterns into jobs."""
    inputs = list(inputs)
    if not inputs:
        raise JDNetError("no inputs given")
    check_paths_given(inputs, output)
    if output == "-":
        # derain writes an image to stdout; a video needs a seekable file (the index goes at its start).
        raise JDNetError("OUTPUT -: jdnet video writes files, not stdout; name an output file or folder")
    out = Path(output)
    single = out.suffix.lower() in VIDEO_EXTENSIONS and not out.is_dir() and not output.endswith(("/", os.sep))
    if out.suffix.lower() in _OTHER_VIDEO_SUFFIXES and not out.is_dir():
        raise JDNetError(f"{output}: jdnet writes {', '.join(e[1:] for e in VIDEO_EXTENSIONS if e != '.ogv')} videos, "
                         f"not {out.suffix[1:].lower()}; name an output file of one of those, or a folder")
    entries: list[tuple[Path, Path | None, bool, str | None]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            if path.resolve() == out.resolve():
                raise JDNetError(f"{raw}: output directory is the input directory; choose another OUTPUT")
            # An output folder inside the input folder holds derained videos: a rerun must not derain them again.
            videos = list(walk_files(path, out.resolve(), is_video_path))
            if videos:
                entries += [(p, p.relative_to(path), False, None) for p in videos]
            elif any(is_image_path(p) for p in path.iterdir() if p.is_file()):
                entries.append((path, Path(path.resolve().name + ".mp4"), True, None))
            else:
                entries.append((path, None, False, "no videos or image frames in this directory"))
        elif _is_sequence_spec(path):
            stem = path.name.split("%")[0].rstrip("_-. ") or path.parent.resolve().name
            entries.append((path, Path(stem + ".mp4"), True, None))
        elif path.exists():
            entries.append((path, Path(path.name), False, None))
        else:
            entries.append((path, None, False, "no such file or directory"))
    entries = once_each(entries)
    rules = OutputRules(e[0] for e in entries)
    if single and len(entries) > 1:
        # One output file for a folder of videos (or several inputs) would take the first and drop the rest.
        raise JDNetError(f"{output}: names one video file, but the inputs hold {len(entries)} videos; name a folder "
                         "for their outputs (a trailing / makes any name a folder)")
    if single:
        src, _, seq, err = entries[0]
        err = err or rules.refusal(src, out)
        return [VideoJob(src, None if err else out, seq, err)]
    check_output_folder(out)
    jobs = []
    for src, rel, seq, err in entries:
        if err or rel is None:
            jobs.append(VideoJob(src, None, seq, err or "invalid input"))
            continue
        if rel.suffix.lower() not in _WRITTEN_SUFFIXES:
            # A folder of outputs follows each input's container, except where jdnet cannot write that one
            # (.y4m, .mxf, .ogv ...): Matroska holds any codec and stream, so one file does not sink the batch.
            rel = rel.with_suffix(".mkv")
        dest = out / rel
        refusal = rules.refusal(src, dest)
        jobs.append(VideoJob(src, None, seq, refusal) if refusal else VideoJob(src, dest, seq))
    return jobs


def _sequence_reader(src: Path, fps: Fraction, start: float | None, duration: float | None) -> ImageSequenceReader:
    files = sequence_files(src)
    if not files:
        raise JDNetError(f"{src}: no image frames found")
    # Frame i shows at i / fps: keep those inside [start, start + duration), as for a video file.
    first = math.ceil(Fraction(start or 0) * fps - Fraction(1, 10**6))
    end = len(files) if duration is None else math.ceil((Fraction(start or 0) + Fraction(duration)) * fps - Fraction(1, 10**6))
    kept = files[first:end]
    if not kept:
        raise JDNetError(f"{src}: no frames in the --start/--duration range ({len(files)} frames at {fps} fps)")
    return ImageSequenceReader(kept, fps)


def derain_video(
    derainer: Derainer,
    src: Path,
    dest: Path,
    settings: EncodeSettings = EncodeSettings(),
    start: float | None = None,
    duration: float | None = None,
    batch_size: int = 1,
    sequence: bool = False,
    fps: Fraction = Fraction(25),
    on_start: Callable[[int | None], None] | None = None,
    on_frames: Callable[[int], None] | None = None,
) -> VideoResult:
    """Derain ``src`` into ``dest``; raise JDNetError naming the file, VideoInterrupted on Ctrl-C."""
    t0 = time.perf_counter()
    if src.resolve() == dest.resolve():
        raise JDNetError(f"{dest}: refusing to overwrite the input file")
    reader = None
    if sequence:
        reader = _sequence_reader(src, fps, start, duration)
        start = duration = None  # the frames are chosen: the output starts at 0 and has them all
        info, total = None, len(reader.files)
    else:
        info = probe(src)
        total = count_frames(src, start, duration)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        video_tmp = temp_path_beside(dest, "video")
    except OSError as err:
        raise JDNetError(f"{dest}: cannot write ({err.strerror or err})") from None
    out_tmp: Path | None = None
    encoder = None
    try:
        refusal = container_refusal(dest.suffix)
        if refusal:  # before the stream-copy trial, which would blame the audio for it
            raise JDNetError(refusal)
        streams = StreamCopy()
        copies_streams = info is not None and bool({"audio", "subtitle", "attachment"} & set(info.stream_types))
        if copies_streams:  # what remux copies
            streams = plan_stream_copy(src, dest, info.stream_types.count("audio"), info.stream_types.count("subtitle"))
        if not sequence:
            reader = FfmpegFrameReader(info, info.video_index, start, duration, colour_for(info, info.height))
        colour = colour_for(info, reader.height)
        settings = settings_for_output(settings, dest.suffix, reader.width, reader.height, reader.high)
        hdr_note = None
        if info is not None and info.color_trc in HDR_TRANSFERS:
            hdr10 = hdr_mastering(src, info.video_index)
            if any(hdr10):
                if settings.codec in ("libx264", "libx265"):
                    settings = replace(settings, hdr10=hdr10)
                else:
                    hdr_note = (f"drops the input's HDR10 mastering-display and light-level metadata: jdnet writes it "
                                f"with libx264 and libx265 only, not {settings.codec}")
        encoder_args(settings, reader.high)  # validate options before any work
        if on_start:
            on_start(total)
        state = _run_stages(derainer, reader, video_tmp, settings, colour, batch_size, on_frames)
        encoder = state["encoder"]
        interrupted = state["interrupted"]
        if encoder is None or encoder.frames_written == 0:
            if interrupted:
                raise VideoInterrupted(None, 0)
            raise state["error"] or JDNetError(f"{src}: no frames decoded")
        first = float(reader.first_pts_s or 0)  # decoder timestamps start at --start
        offset = first + (start or 0.0)
        damage = None
        if not sequence and not interrupted and src.suffix.lower() in _STATED_DURATION:
            damage = _early_end(info, reader.decode_errors, encoder.end_us / 1e6, start, duration)
        final = _unused_name(dest, "partial") if interrupted or damage else dest
        out_tmp = temp_path_beside(final, "part")
        try:
            tags = SourceTags() if info is None else SourceTags(tuple(info.stream_tags.items()), info.vendor_tags,
                                                                info.cover_streams)
            remux(video_tmp, None if sequence else src, out_tmp, offset, start, duration,
                  first + encoder.end_us / 1e6 if interrupted or damage else None, streams, copies_streams, tags)
        except JDNetError as err:
            kept = _keep_encoded_video(video_tmp, final)  # hours of deraining must not go with a failed mux
            if kept is None:
                raise
            if interrupted:
                raise VideoInterrupted(kept, encoder.frames_written) from None
            raise VideoPartlyDone(f"{src}: {err}; kept the {encoder.frames_written} derained frames (video only) in "
                                  f"{kept}, {dest} was not written", kept, encoder.frames_written) from None
        # Probed before it takes the output's name: a failure here must not leave a file there.
        uncopied = None if sequence or interrupted or damage else _uncopied_streams(info, probe(out_tmp))
        os.chmod(out_tmp, new_file_mode())  # mkstemp made it private; give it the usual mode of a new file
        os.replace(out_tmp, final)
        out_tmp = None
        if interrupted:
            raise VideoInterrupted(final, encoder.frames_written)
        if damage:
            raise VideoPartlyDone(f"{src}: {damage}; kept the {encoder.frames_written} derained frames in {final}, "
                               f"{dest} was not written", final, encoder.frames_written)
        errors = [] if sequence else reader.decode_errors
        interlaced = None
        if info is not None and info.field_order:
            # The network sees each frame whole (both fields woven), so what comes out is progressive video.
            interlaced = (f"is progressive: the input is interlaced ({info.field_order} field first) and jdnet derains "
                          "whole frames; deinterlace it first (e.g. ffmpeg -vf bwdif) for the best result")
        notes = [note for note in (streams.note, uncopied, hdr_note, interlaced) if note]
        if errors:
            notes.append(f"was made from a stream with decoder errors (first: {errors[0].rstrip('.')}); frames that did "
                         "not decode are missing or damaged")
        return VideoResult(encoder.frames_written, time.perf_counter() - t0, final, note="; ".join(notes) or None)
    except KeyboardInterrupt:
        raise VideoInterrupted(None, 0) from None
    finally:
        if reader is not None:
            reader.close()
        for tmp in (video_tmp, out_tmp):
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


def _uncopied_streams(source, output) -> str | None:
    """What of the input the written output does not hold (other video streams, cover art, data tracks,
    attachments), in words."""
    def counts(info):
        kinds = info.stream_types
        return (kinds.count("video") - info.attached_pics, info.attached_pics, kinds.count("data"), kinds.count("attachment"))

    # Counted in the file as written: a container may re-create some (a timecode track from the timecode tag).
    videos, pictures, data, attached = (max(0, a - b) for a, b in zip(counts(source), counts(output)))
    parts = []
    if videos:
        parts.append(f"{videos} other video stream{'s' * (videos > 1)} (jdnet derains the first)")
    if pictures:
        parts.append("cover art" if pictures == 1 else f"{pictures} cover pictures")
    if data:
        parts.append(f"{data} data stream{'s' * (data > 1)} (such as camera metadata or timecode tracks)")
    if attached:
        parts.append(f"{attached} attached file{'s' * (attached > 1)} (such as subtitle fonts: a "
                     f"{output.path.suffix.lower()} file cannot hold them; .mkv can)")
    return f"drops the input's {', '.join(parts)}" if parts else None


def _unused_name(dest: Path, tag: str) -> Path:
    """``NAME.TAG.EXT`` beside ``dest``, or ``NAME.TAG-2.EXT``, ... when a file has that name: it may be an input."""
    for n in range(1, 1000):
        path = dest.with_name(f"{dest.stem}.{tag}{'' if n == 1 else f'-{n}'}{dest.suffix}")
        if not (path.exists() or path.is_symlink()):
            return path
    raise JDNetError(f"{dest}: no free name for the {tag} file beside it")


def _keep_encoded_video(video_tmp: Path, final: Path) -> Path | None:
    """Move the encoded, video-only temp file to an unused name beside ``final``; None if that fails too."""
    try:
        kept = _unused_name(final, "video-only")
        os.chmod(video_tmp, new_file_mode())
        os.replace(video_tmp, kept)
    except (OSError, JDNetError):
        return None
    return kept


def _early_end(info, decode_errors: list[str], covered: float, start: float | None, duration: float | None) -> str | None:
    """Why the decode is incomplete (the decoder failed before the container's stated end), or None."""
    if not decode_errors or info is None or info.duration is None:
        return None
    expected = info.duration - (start or 0.0)
    if duration is not None:
        expected = min(expected, duration)
    # The demuxer itself saying the file stops short is truncation, whatever the frames reached: B-frame
    # reordering can show a late frame of a cut Matroska file while the frames before it are gone.
    cut = next((e for e in decode_errors if any(sign in e for sign in _TRUNCATION_SIGNS)), None)
    if cut:
        return f"the file ends early ({cut.rstrip('.')}); decoding reached {covered:.2f} s of {expected:.2f} s"
    # Decoder errors alone are not enough (broadcast captures often start mid-GOP); nor is a short video
    # stream alone (audio may outlast it). Both together mean the file ends before its index does.
    slack = max(3 / info.fps, 0.1) if info.fps else 0.25
    if covered >= expected - slack:
        return None
    # The container's duration is its longest stream's: audio may outlast the video. Where every stream's
    # packets reach the stated end the file is whole, and the video is judged by its own packets.
    spans = packet_spans(info.path, info.video_index)
    if spans is not None and spans[1] >= info.duration - slack:
        (first, end), _ = spans
        expected = end - first - (start or 0.0)
        if duration is not None:
            expected = min(expected, duration)
        if covered >= expected - slack:
            return None
    return f"decoding stopped at {covered:.2f} s of {expected:.2f} s (truncated or damaged: {decode_errors[0].rstrip('.')})"


# What ffmpeg's demuxers say when the file stops before its own structure does (Matroska/WebM).
_TRUNCATION_SIGNS = ("File ended prematurely",)


def _put_while_alive(q: queue.Queue, item, consumer: threading.Thread) -> None:
    """Put ``item`` unless the consumer thread has died (then its error is reported instead)."""
    while consumer.is_alive():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _run_stages(derainer, reader, video_tmp, settings, colour, batch_size, on_frames) -> dict:
    """Decode thread -> inference (this thread) -> encode thread; returns what happened."""
    q_in: queue.Queue = queue.Queue(maxsize=2 * batch_size + 2)
    q_out: queue.Queue = queue.Queue(maxsize=2 * batch_size + 2)
    stop = threading.Event()
    errors: list[BaseException] = []
    holder: dict = {"encoder": None}

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        try:
            for frame in reader.frames():
                if not put(q_in, frame):
                    return
        except BaseException as err:  # handed to the main thread
            errors.append(err)
        finally:
            put(q_in, _DONE)

    def encode() -> None:
        try:
            while True:
                item = q_out.get()
                if item is _DONE:
                    return
                if holder["encoder"] is None:
                    # Started on the first frame, when the decoder has reported the stream's time base.
                    holder["encoder"] = FfmpegEncoder(video_tmp, reader.width, reader.height, reader.pix_fmt,
                                                      settings, colour, reader.time_base, reader.sample_aspect)
                holder["encoder"].write(item)
        except BaseException as err:
            errors.append(err)
            stop.set()

    threads = [threading.Thread(target=decode, daemon=True), threading.Thread(target=encode, daemon=True)]
    for t in threads:
        t.start()
    interrupted, done = False, 0
    try:
        finished = False
        while not finished and not stop.is_set() and not errors:
            batch: list[Frame] = []
            while len(batch) < batch_size:
                try:
                    item = q_in.get(timeout=0.1)
                except queue.Empty:
                    if errors or stop.is_set():
                        break
                    continue
                if item is _DONE:
                    finished = True
                    break
                batch.append(item)
            if not batch:
                continue
            for frame, rgb in zip(batch, derainer.derain_frames([f.rgb for f in batch])):
                frame.rgb = rgb
                _put_while_alive(q_out, frame, threads[1])
            done += len(batch)
            if on_frames:
                on_frames(done)
    except KeyboardInterrupt:
        interrupted = True
    except Exception as err:  # e.g. out of GPU memory: shut the children down, then report it
        errors.append(err)
    # Drain: stop the decoder, let the encoder take what was already derained, then finalize.
    try:
        if interrupted or errors:
            stop.set()
            reader.close()
        _put_while_alive(q_out, _DONE, threads[1])
        threads[1].join()
        encoder = holder["encoder"]
        if encoder is None:
            return {"encoder": None, "interrupted": interrupted, "error": errors[0] if errors else None}
        if errors and not interrupted:
            encoder.abort()
            return {"encoder": None, "interrupted": False, "error": errors[0]}
        encoder.finish()
    except KeyboardInterrupt:
        if holder["encoder"] is not None:
            holder["encoder"].abort()
        return {"encoder": None, "interrupted": True, "error": None}
    except JDNetError as err:
        return {"encoder": None, "interrupted": interrupted, "error": err}
    return {"encoder": encoder, "interrupted": interrupted, "error": None}
