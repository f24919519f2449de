"""``jdnet video`` on short clips cut from the shared rainy clip, with a tiny model."""
from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from jdnet_cli.errors import JDNetError
from jdnet_cli.inference.derainer import Derainer
from jdnet_cli.io.atomic import new_file_mode
from jdnet_cli.io.video import EncodeSettings, encoder_args, ffmpeg_failure, settings_for_output
from jdnet_cli.io.video_probe import count_frames, ffmpeg_exe, parse_ffmpeg_info, probe
from jdnet_cli.pipelines.video import VideoPartlyDone, VideoInterrupted, derain_video, plan_video_jobs

from ..conftest import run_cli, shared_path

W, H = 32, 18  # tiny frames keep the model cheap on a loaded 2-core CPU


def ff(*args: str) -> subprocess.CompletedProcess:
    """Run the shipped ffmpeg with an argument list; fail the test on error."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def frame_times(path: Path) -> list[tuple[float, float]]:
    """(pts, duration) in seconds of every decoded video frame."""
    out = ff("-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "framemd5", "-").stdout.decode()
    tb = None
    rows = []
    for line in out.splitlines():
        if line.startswith("#tb 0:"):
            tb = Fraction(line.split(":", 1)[1].strip())
        elif line and not line.startswith("#"):
            f = [x.strip() for x in line.split(",")]
            rows.append((float(int(f[2]) * tb), float(int(f[3]) * tb)))
    return rows


def audio_packets(path: Path) -> list[tuple[str, str]]:
    """(size, md5) of every audio packet, stream-copied (no decode)."""
    out = ff("-i", str(path), "-map", "0:a", "-c", "copy", "-f", "framemd5", "-").stdout.decode()
    return [tuple(x.strip() for x in ln.split(",")[4:6]) for ln in out.splitlines() if ln and not ln.startswith("#")]


def decode_rgb(path: Path) -> np.ndarray:
    """All frames as N x H x W x 3 uint8 (ffmpeg's default YUV->RGB, which follows the file's tags)."""
    raw = ff("-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-").stdout
    info = probe(path)
    return np.frombuffer(raw, np.uint8).reshape(-1, info.height, info.width, 3)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """5 frames (0.2 s at 25 fps) of the shared clip, scaled to 32x18, with its AAC audio copied."""
    src = shared_path("data", "video", "real-rain-640x360.mp4")
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    ff("-i", str(src), "-t", "0.2", "-vf", f"scale={W}:{H}", "-c:v", "libx264", "-crf", "10", "-c:a", "copy", str(path))
    return path


@pytest.fixture(scope="module")
def derainer(tiny_weights) -> Derainer:
    return Derainer(weights=tiny_weights, device="cpu")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, clip, derainer) -> np.ndarray:
    """`jdnet derain` of each decoded frame, stored losslessly (ffv1, RGB) and read back."""
    tmp = tmp_path_factory.mktemp("ref")
    for i, rgb in enumerate(decode_rgb(clip)):
        clean = derainer(rgb.astype(np.float32) / np.float32(255.0))
        cv2.imwrite(str(tmp / f"f{i:03d}.png"), np.round(clean * 255.0).astype(np.uint8)[..., ::-1])
    ff("-framerate", "25", "-i", str(tmp / "f%03d.png"), "-c:v", "ffv1", "-pix_fmt", "bgr0", str(tmp / "ref.mkv"))
    return decode_rgb(tmp / "ref.mkv")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_clip_keeps_frames_timing_audio_and_matches_derain(tmp_path, clip, derainer, reference):
    dest = tmp_path / "out dir ü" / "dérainé clip.mp4"  # spaces and non-ASCII in both parts
    totals = []
    # libx264 as by default, but 4:4:4 at crf 0: 32x18 frames are all detail, so crf 18 gives ~31 dB here
    # (benchmarks/video_fidelity.py measures the defaults at 640x360). What remains is RGB<->YUV rounding.
    res = derain_video(derainer, clip, dest, EncodeSettings(pix_fmt="yuv444p", crf=0), on_start=totals.append)
    assert res.frames == 5 and res.output == dest
    assert totals == [5]  # mp4 has a frame count: the progress bar gets a total
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temp files left
    assert frame_times(dest) == frame_times(clip)  # same pts and durations, frame by frame
    assert len(frame_times(dest)) == 5
    src_info, out_info = probe(clip), probe(dest)
    assert (out_info.width, out_info.height) == (W, H)
    assert out_info.duration == pytest.approx(src_info.duration, abs=0.011)
    assert audio_packets(dest) == audio_packets(clip) and len(audio_packets(clip)) >= 9
    assert out_info.stream_types == ["video", "audio"]
    assert (out_info.color_range, out_info.color_space, out_info.color_primaries, out_info.color_trc) == ("tv", "smpte170m", "smpte170m", "smpte170m")

    got = decode_rgb(dest)
    assert got.shape == reference.shape == (5, H, W, 3)
    assert probe(dest).codec == "h264"
    assert min(psnr(e, g) for e, g in zip(reference, got)) >= 40.0


def test_variable_frame_rate_mkv_without_frame_count(tmp_path, clip, derainer):
    vfr = tmp_path / "vfr.mkv"
    # Gaps of 40, 80, 40 and 120 ms: no constant rate describes this.
    ff("-i", str(clip), "-vf", "setpts='(N*40+if(gte(N,2),40,0)+if(gte(N,4),80,0))/1000/TB'", "-fps_mode", "passthrough",
       "-c:v", "libx264", "-crf", "10", "-c:a", "copy", str(vfr))
    src_times = frame_times(vfr)
    assert [round(t, 3) for t, _ in src_times] == [0.0, 0.04, 0.12, 0.16, 0.28]
    assert count_frames(vfr) is None  # Matroska has no frame count: progress runs without a total
    dest = tmp_path / "out.mkv"
    totals = []
    assert derain_video(derainer, vfr, dest, on_start=totals.append).frames == 5
    assert totals == [None]
    assert [round(t, 3) for t, _ in frame_times(dest)] == [0.0, 0.04, 0.12, 0.16, 0.28]
    assert audio_packets(dest) == audio_packets(vfr)


def test_start_and_duration_select_frames_lossless(tmp_path, clip, derainer, reference):
    dest = tmp_path / "part.mkv"
    totals = []
    res = derain_video(derainer, clip, dest, EncodeSettings(codec="ffv1"), start=0.08, duration=0.08, on_start=totals.append)
    assert res.frames == 2 and totals == [2]
    assert [round(t, 3) for t, _ in frame_times(dest)] == [0.0, 0.04]
    assert probe(dest).codec == "ffv1"
    assert np.array_equal(decode_rgb(dest), reference[2:4])  # RGB ffv1: exactly the model output
    assert 0 < len(audio_packets(dest)) < len(audio_packets(clip))


def test_start_with_the_default_b_frame_encoder_keeps_every_selected_frame(tmp_path, clip, derainer):
    # x264's B-frames decode the first keyframe before it is shown: cutting the output at --start used to
    # drop it, then every frame up to the next keyframe, leaving a file with no video at all.
    silent = tmp_path / "silent.mp4"
    ff("-i", str(clip), "-an", "-c", "copy", str(silent))
    for source, dest in ((clip, tmp_path / "a.mp4"), (silent, tmp_path / "b.mp4"), (clip, tmp_path / "c.mkv")):
        res = derain_video(derainer, source, dest, start=0.08)
        assert res.frames == 3, dest
        assert [round(t, 3) for t, _ in frame_times(dest)] == [0.0, 0.04, 0.08], dest
        assert probe(dest).stream_types == (["video", "audio"] if source == clip else ["video"])
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    # The audio is the source's from --start on, packet for packet.
    kept, whole = audio_packets(tmp_path / "a.mp4"), audio_packets(clip)
    assert 0 < len(kept) < len(whole) and kept == whole[len(whole) - len(kept) :]


@pytest.mark.parametrize("late", ["video", "audio"])
def test_mpeg_ts_keeps_the_gap_between_its_video_and_audio_starts(tmp_path, clip, derainer, late):
    # MPEG-TS (like a TV recording that begins mid-GOP) whose video starts 0.5 s after its audio, or the
    # reverse. ffmpeg starts a TS clock at the first packet of the streams it reads, so decoding the video
    # alone used to put it at 0: half a second of lip-sync error.
    ts = tmp_path / "rec.ts"
    first, second = ("0:v", "1:a") if late == "video" else ("0:a", "1:v")
    ff("-itsoffset", "0.5", "-i", str(clip), "-i", str(clip), "-map", first, "-map", second, "-c", "copy", str(ts))
    for dest in (tmp_path / "out.mp4", tmp_path / "out.mkv"):
        derain_video(derainer, ts, dest)
        video_start = frame_times(dest)[0][0]
        audio_start = _first_audio_time(dest)
        gap = video_start - audio_start
        assert gap == pytest.approx(0.5 if late == "video" else -0.5, abs=0.03), (dest, video_start, audio_start)


def _first_audio_time(path: Path) -> float:
    """Presentation time (s) of the first audio packet."""
    out = ff("-i", str(path), "-map", "0:a", "-c", "copy", "-f", "framecrc", "-").stdout.decode()
    tb = next(Fraction(ln.split(":", 1)[1].strip()) for ln in out.splitlines() if ln.startswith("#tb 0:"))
    first = next(ln for ln in out.splitlines() if ln and not ln.startswith("#"))
    return float(int(first.split(",")[2]) * tb)


def test_names_with_a_colon_are_files_not_protocols(tmp_path, clip, derainer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("take1:2.mp4").write_bytes(clip.read_bytes())
    res = derain_video(derainer, Path("take1:2.mp4"), Path("out:1.mp4"), start=0.04)
    assert res.frames == 4 and probe(Path("out:1.mp4")).stream_types == ["video", "audio"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out:1.mp4", "take1:2.mp4"]


def test_interrupt_keeps_a_valid_partial_file(tmp_path, clip, derainer):
    dest = tmp_path / "out.mp4"

    def ctrl_c_after_two(done: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(VideoInterrupted) as info:
        derain_video(derainer, clip, dest, on_frames=ctrl_c_after_two)
    partial = tmp_path / "out.partial.mp4"
    assert info.value.partial == partial and info.value.frames == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.partial.mp4"]  # no final file, no temp files
    assert [round(t, 3) for t, _ in frame_times(partial)] == [0.0, 0.04]
    assert probe(partial).stream_types == ["video", "audio"]


def test_truncated_video_fails_and_keeps_what_was_derained(tmp_path, derainer):
    # One second with the index first (+faststart), so that cutting the file's tail leaves it readable
    # up to the cut: a download or copy that stopped early. ffmpeg decodes it without an error exit.
    src = shared_path("data", "video", "real-rain-640x360.mp4")
    whole = tmp_path / "whole.mp4"
    ff("-i", str(src), "-t", "1", "-vf", f"scale={W}:{H}", "-c:v", "libx264", "-crf", "10", "-c:a", "copy",
       "-movflags", "+faststart", str(whole))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    dest = tmp_path / "out" / "cut.mp4"
    with pytest.raises(VideoPartlyDone) as info:
        derain_video(derainer, cut, dest)
    partial = dest.with_name("cut.partial.mp4")
    assert info.value.partial == partial and 0 < info.value.frames < 25
    assert "decoding stopped at" in str(info.value) and "of 1.00 s (truncated or damaged" in str(info.value)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["cut.partial.mp4"]  # no final file, no temp files
    assert len(frame_times(partial)) == info.value.frames
    assert probe(partial).stream_types == ["video", "audio"]
    # The same file whole decodes cleanly: nothing is flagged.
    clean = derain_video(derainer, whole, tmp_path / "whole-out.mp4")
    assert (clean.frames, clean.note) == (25, None)
    # Damage in the middle that the decoder skips past: the video plays to its end, so it is ok, with a note.
    data = whole.read_bytes()
    for i, offset in enumerate(range(len(data) * 3 // 10, len(data) * 9 // 10, len(data) // 40)):
        hurt = tmp_path / f"hurt{i}.mp4"
        hurt.write_bytes(data[:offset] + b"\xff" * 400 + data[offset + 400:])
        res = derain_video(derainer, hurt, tmp_path / f"hurt{i}-out.mp4")
        if res.note:
            break
    assert res.note.startswith("was made from a stream with decoder errors (first: ") and res.frames <= 25


def test_a_cut_matroska_file_fails_even_when_a_late_frame_still_decodes(tmp_path, clip, derainer):
    mkv = tmp_path / "clip.mkv"
    ff("-i", str(clip), "-c", "copy", str(mkv))
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(mkv.read_bytes()[: mkv.stat().st_size * 8 // 10])
    with pytest.raises(VideoPartlyDone, match=r"cut\.mkv: the file ends early \(File ended prematurely\); decoding "
                                              r"reached [\d.]+ s of [\d.]+ s; kept the \d derained frames in ") as info:
        derain_video(derainer, cut, tmp_path / "out.mkv")
    assert info.value.partial == tmp_path / "out.partial.mkv" and not (tmp_path / "out.mkv").exists()
    assert derain_video(derainer, mkv, tmp_path / "whole.mkv").note is None  # the whole file is fine


def test_a_failed_final_mux_keeps_the_derained_video(tmp_path, clip, derainer, monkeypatch):
    def full_disk(*args, **kwargs):
        raise JDNetError("cannot write the output container (No space left on device)")

    monkeypatch.setattr("jdnet_cli.pipelines.video.remux", full_disk)
    dest = tmp_path / "clip.mp4"
    (tmp_path / "clip.video-only.mp4").write_bytes(b"the user's own file")
    with pytest.raises(VideoPartlyDone) as info:
        derain_video(derainer, clip, dest)
    kept = tmp_path / "clip.video-only-2.mp4"  # the name taken is left alone
    assert str(info.value) == (f"{clip}: cannot write the output container (No space left on device); kept the 5 "
                               f"derained frames (video only) in {kept}, {dest} was not written")
    assert (info.value.partial, info.value.frames) == (kept, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.video-only-2.mp4", "clip.video-only.mp4"]
    assert (tmp_path / "clip.video-only.mp4").read_bytes() == b"the user's own file"
    assert len(frame_times(kept)) == 5 and probe(kept).stream_types == ["video"]
    assert kept.stat().st_mode & 0o777 == new_file_mode()  # not mkstemp's private 0o600


def test_image_sequence_folder_and_printf_pattern(tmp_path, derainer):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in (1, 2, 10):  # natural order: 1, 2, 10
        cv2.imwrite(str(frames / f"img_{i}.png"), rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    jobs = plan_video_jobs([str(frames)], str(tmp_path / "out"))
    assert [(j.sequence, j.output) for j in jobs] == [(True, tmp_path / "out" / "frames.mp4")]
    res = derain_video(derainer, frames, jobs[0].output, sequence=True, fps=Fraction(10))
    assert res.frames == 3
    assert [round(t, 3) for t, _ in frame_times(jobs[0].output)] == [0.0, 0.1, 0.2]
    (frames / "img_10.png").rename(frames / "img_03.png")
    seq = derain_video(derainer, frames / "img_%02d.png", tmp_path / "pat.mkv", sequence=True)
    assert seq.frames == 1  # only img_03.png has two digits


def test_output_folder_inside_the_input_folder_is_not_scanned_and_a_gif_output_is_refused(tmp_path, clip):
    (tmp_path / "nest").mkdir()
    (tmp_path / "nest" / "a.mp4").write_bytes(clip.read_bytes())
    (tmp_path / "nest" / "out").mkdir()
    (tmp_path / "nest" / "out" / "a.mp4").write_bytes(clip.read_bytes())  # a first run's output
    jobs = plan_video_jobs([str(tmp_path / "nest")], str(tmp_path / "nest" / "out"))
    assert [(j.input, j.output) for j in jobs] == [(tmp_path / "nest" / "a.mp4", tmp_path / "nest" / "out" / "a.mp4")]
    with pytest.raises(JDNetError, match=r"nest: output directory is the input directory; choose another OUTPUT$"):
        plan_video_jobs([str(tmp_path / "nest")], str(tmp_path / "nest"))
    with pytest.raises(JDNetError, match=r"out\.gif: jdnet writes mp4, m4v, .*, 3gp videos, not gif; name an output"):
        plan_video_jobs([str(clip)], str(tmp_path / "out.gif"))
    assert not (tmp_path / "out.gif").exists()


@pytest.mark.parametrize("options, message", [
    (["--crf", "5", "--codec", "ffv1"], "--crf does not apply to ffv1"),
    (["--preset", "nope"], "libx264 cannot encode a .mp4 output with --preset nope (invalid preset 'nope')"),
    (["--pix-fmt", "bogus"], "libx264 cannot encode a .mp4 output with --pix-fmt bogus (Unknown pixel format "
                             "requested: bogus.)"),
    (["--codec", "prores"], "prores cannot encode a .mp4 output with --codec prores (Could not find tag for codec "
                            "prores in stream #0, codec not currently supported in container)"),
    (["--duration", "0"], "--duration must be more than 0 seconds"),
])
def test_bad_encoder_options_are_usage_errors_before_the_model_loads(tmp_path, clip, options, message):
    # A missing weights file would be the error if the model loaded first.
    res = run_cli("video", str(clip), str(tmp_path / "o.mp4"), "--weights", str(tmp_path / "none.pt"), *options)
    assert (res.returncode, res.stderr.decode()) == (2, f"error: {message}\n")
    assert list(tmp_path.iterdir()) == []


def test_errors_name_the_file_and_exit_1(tmp_path, clip, tiny_weights):
    bad = tmp_path / "not a video.mp4"
    bad.write_text("hello")
    audio_only = tmp_path / "audio.m4a"
    ff("-i", str(clip), "-map", "0:a", "-c", "copy", str(audio_only))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, so OUTPUT below it cannot be created")
    # One CLI run (each costs a torch import): three bad inputs and a good one with an unwritable OUTPUT.
    res = run_cli("video", str(bad), str(audio_only), str(tmp_path / "missing.mp4"), str(clip), str(blocker / "out"),
                  "--weights", str(tiny_weights), "--device", "cpu")
    err = res.stderr.decode()
    assert res.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("failed:")]
    assert len(lines) == 4, err
    assert f"{bad}: not a readable video" in lines[0]
    assert f"{audio_only}: no video stream" in lines[1]
    assert f"{tmp_path / 'missing.mp4'}: no such file" in lines[2]
    assert f"{blocker / 'out' / 'clip.mp4'}: cannot write" in lines[3]
    assert "0 ok, 4 failed" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([bad.name, audio_only.name, "blocker"])


@pytest.mark.parametrize("settings, reason", [
    (EncodeSettings(preset="nope"), "invalid preset 'nope'"),
    (EncodeSettings(pix_fmt="nope"), "Unknown pixel format requested: nope."),
    (EncodeSettings(codec="prores"), "Could not find tag for codec prores in stream #0, codec not currently supported in container"),
])
def test_encoder_errors_give_ffmpegs_cause_not_its_last_echo(tmp_path, clip, derainer, settings, reason):
    # ffmpeg's last line was "Nothing was written into output file, ...", after the temp file's name.
    with pytest.raises(JDNetError) as err:
        derain_video(derainer, clip, tmp_path / "o.mp4", settings)
    assert str(err.value) == f"encoding failed ({reason})"
    assert list(tmp_path.iterdir()) == []


def test_settings_for_output_pick_a_codec_the_container_takes_and_full_chroma_for_odd_sizes():
    auto = EncodeSettings()
    assert settings_for_output(auto, ".mp4", 64, 48, False) == EncodeSettings("libx264", pix_fmt="yuv420p")
    assert settings_for_output(auto, ".WEBM", 64, 48, True) == EncodeSettings("libvpx-vp9", pix_fmt="yuv420p10le")
    assert settings_for_output(auto, ".mkv", 33, 48, True).pix_fmt == "yuv444p10le"
    assert settings_for_output(EncodeSettings("prores"), ".mov", 64, 19, True).pix_fmt == "yuv444p10le"
    # ...and the ProRes profile that says so (4444), not 422 HQ's tag on 4:4:4 samples.
    assert "-profile:v 4 " in " ".join(encoder_args(settings_for_output(EncodeSettings("prores"), ".mov", 64, 19, True), True))
    assert "-profile:v 3 " in " ".join(encoder_args(settings_for_output(EncodeSettings("prores"), ".mov", 64, 18, True), True))
    # What the user names is kept: a codec, a pixel format, and RGB for ffv1 whatever the size.
    assert settings_for_output(EncodeSettings("libx265", crf=20), ".webm", 64, 48, False).codec == "libx265"
    assert settings_for_output(EncodeSettings(pix_fmt="yuv420p"), ".mp4", 33, 19, False).pix_fmt == "yuv420p"
    assert settings_for_output(EncodeSettings("ffv1"), ".mkv", 33, 19, False).pix_fmt == "gbrp"
    with pytest.raises(JDNetError, match=r"^a \.ogv output needs Theora or VP8, which jdnet does not encode; name"):
        settings_for_output(auto, ".ogv", 64, 48, False)
    with pytest.raises(JDNetError, match=r"^a \.gif output needs the GIF codec, which"):
        settings_for_output(EncodeSettings("ffv1"), ".GIF", 64, 48, False)


def test_an_ogv_output_is_refused_for_its_codec_even_when_the_input_has_audio(tmp_path, clip, derainer):
    # The stream-copy trial ran first and blamed the AAC audio ("cannot hold this video's audio").
    with pytest.raises(JDNetError, match=r"^a \.ogv output needs Theora or VP8, which jdnet does not encode; name"):
        derain_video(derainer, clip, tmp_path / "o.ogv")
    assert list(tmp_path.iterdir()) == []


def test_odd_sized_webm_comes_out_as_vp9_at_the_same_size(tmp_path, derainer):
    src = tmp_path / "odd.webm"
    ff("-f", "lavfi", "-i", "testsrc=size=33x19:rate=25", "-t", "0.12", "-c:v", "libvpx-vp9", "-pix_fmt", "yuv444p", str(src))
    dest = tmp_path / "out" / "odd.webm"
    res = derain_video(derainer, src, dest)  # default settings failed twice here: H.264 in WebM, 4:2:0 at 33x19
    info = probe(dest)
    assert res.frames == 3 and (info.codec, info.pix_fmt, info.width, info.height) == ("vp9", "yuv444p", 33, 19)
    assert decode_rgb(dest).shape == (3, 19, 33, 3)


def stream_kinds(path: Path) -> list[str]:
    """'Audio: opus', 'Subtitle: subrip', ... for every stream of ``path``, as ffmpeg lists them."""
    err = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True).stderr.decode()
    return [ln.split(": ", 1)[1].split(",")[0].split(" (")[0] for ln in err.splitlines() if ln.strip().startswith("Stream #0:")]


def audio_seconds(path: Path) -> float:
    """Length of the decoded audio (mono, 48 kHz)."""
    return len(ff("-i", str(path), "-map", "0:a", "-ac", "1", "-ar", "48000", "-f", "s16le", "-").stdout) / 2 / 48000


@pytest.fixture(scope="module")
def subtitled_clip(tmp_path_factory, clip) -> Path:
    """The clip with its AAC audio and one MP4 timed-text (mov_text) subtitle."""
    tmp = tmp_path_factory.mktemp("subs")
    (tmp / "s.srt").write_text("1\n00:00:00,000 --> 00:00:00,150\nrain, rain, go away\n")
    path = tmp / "subtitled.mp4"
    ff("-i", str(clip), "-i", str(tmp / "s.srt"), "-map", "0", "-map", "1", "-c", "copy", "-c:s", "mov_text", str(path))
    return path


def test_audio_the_container_cannot_hold_is_re_encoded_with_a_note(tmp_path, clip, tiny_weights):
    out = tmp_path / "out"
    res = run_cli("video", str(clip), str(out / "clip.webm"), "--weights", str(tiny_weights), "--device", "cpu")
    err = res.stderr.decode()
    assert res.returncode == 0, err  # was: every frame derained, then "cannot write the output container"
    dest = out / "clip.webm"
    assert (f"note: {clip}: {dest} has its audio re-encoded as Opus 160 kb/s: a .webm file cannot hold the input's "
            "audio unchanged") in " ".join(err.split())
    assert stream_kinds(dest) == ["Video: vp9", "Audio: opus"] and [p.name for p in out.iterdir()] == ["clip.webm"]
    assert len(frame_times(dest)) == 5
    assert audio_seconds(dest) == pytest.approx(audio_seconds(clip), abs=0.025)


def test_subtitles_the_container_cannot_hold_are_converted_and_audio_still_copied(tmp_path, subtitled_clip, derainer):
    dest = tmp_path / "subtitled.mkv"
    res = derain_video(derainer, subtitled_clip, dest)  # Matroska refuses mov_text
    assert res.note == ("has its subtitles converted to SubRip: a .mkv file cannot hold the input's subtitles unchanged")
    assert stream_kinds(dest) == ["Video: h264", "Audio: aac", "Subtitle: subrip"]
    assert audio_packets(dest) == audio_packets(subtitled_clip)  # not re-encoded: only what failed is converted
    assert "rain, rain, go away" in ff("-i", str(dest), "-map", "0:s", "-f", "srt", "-").stdout.decode()


def test_mpeg_program_stream_output_gets_mp2_audio(tmp_path, clip, derainer):
    res = derain_video(derainer, clip, tmp_path / "clip.mpg")  # MPEG-PS takes no AAC
    assert res.note == ("has its audio re-encoded as MPEG audio layer 2 192 kb/s: a .mpg file cannot hold the "
                        "input's audio unchanged")
    assert stream_kinds(res.output) == ["Video: h264", "Audio: mp2"] and len(frame_times(res.output)) == 5


def test_streams_jdnet_does_not_carry_are_named_in_a_note(tmp_path, clip, derainer):
    cover = tmp_path / "cover.png"
    cv2.imwrite(str(cover), np.zeros((16, 16, 3), np.uint8))
    src = tmp_path / "camera.mp4"  # a second camera angle, cover art and timecode tracks beside the clip
    ff("-i", str(clip), "-f", "lavfi", "-i", f"testsrc=size={W}x{H}:rate=25", "-i", str(cover), "-t", "0.2",
       "-map", "0:v", "-map", "0:a", "-map", "1:v", "-map", "2", "-c:v", "libx264", "-c:a", "copy", "-c:v:2", "png",
       "-disposition:v:2", "attached_pic", "-timecode", "01:00:00:00", str(src))
    info = probe(src)
    assert (info.stream_types.count("video"), info.attached_pics, info.stream_types.count("data")) == (3, 1, 3)  # a tmcd per video
    res = derain_video(derainer, src, tmp_path / "out.mp4")
    out = probe(res.output)  # mp4 re-creates one timecode track from the copied timecode tag
    assert (out.stream_types, out.attached_pics, res.frames) == (["video", "audio", "data"], 0, 5)
    assert res.note == ("drops the input's 1 other video stream (jdnet derains the first), cover art, "
                        "2 data streams (such as camera metadata or timecode tracks)")


def test_probe_takes_each_stream_once_when_ffmpeg_lists_stream_groups():
    text = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.mov':
  Duration: 00:00:00.20, start: 0.000000, bitrate: 300 kb/s
  Stream group #0:0[0x4]: Track Reference:
    Stream #0:0[0x1]: Video: h264 (High), yuv420p(progressive), 32x18, 25 fps, 25 tbr, 12800 tbn (default)
    Stream #0:3[0x4](eng): Data: none (tmcd / 0x64636D74), 0 kb/s
  Stream group #0:1[0x5]: Track Reference:
    Stream #0:0[0x1]: Video: h264 (High), yuv420p(progressive), 32x18, 25 fps, 25 tbr, 12800 tbn (default)
    Stream #0:4[0x5](eng): Data: none (tmcd / 0x64636D74), 0 kb/s
  Stream #0:1[0x2]: Audio: aac (LC), 48000 Hz, mono, fltp, 101 kb/s (default)
  Stream #0:2[0x3]: Video: png, rgb24(pc), 16x16, 90k tbr, 90k tbn (attached pic)
"""
    info = parse_ffmpeg_info(text, Path("x.mov"))
    assert info.stream_types == ["video", "audio", "video", "data", "data"] and info.attached_pics == 1


def test_streams_no_conversion_fits_fail_before_any_frame_is_derained(tmp_path, subtitled_clip, derainer, monkeypatch):
    calls = []
    monkeypatch.setattr(derainer, "derain_frames", lambda frames: calls.append(frames))  # must never be reached
    out = tmp_path / "out"
    with pytest.raises(JDNetError) as err:
        derain_video(derainer, subtitled_clip, out / "subtitled.avi")  # AVI holds no text subtitles
    assert str(err.value) == (
        "a .avi file cannot hold this video's audio or subtitles (Could not write header (incorrect codec parameters "
        "?): Not yet implemented in FFmpeg, patches welcome); an output named .mp4 keeps them")
    assert calls == [] and list(out.iterdir()) == []  # no trial file, no temp file


def test_ffmpeg_failure_strips_context_tags():
    stderr = (b"\n[vost#0:0/libx264 @ 0x55db] [enc:libx264 @ 0x55dc] [error] Error while opening encoder\n"
              b"[out#0/mp4 @ 0x55df] Nothing was written into output file.\n")
    assert ffmpeg_failure(stderr, 1) == "Error while opening encoder"
    assert ffmpeg_failure(b"x265 [error]: invalid preset 'x'\n", 1) == "invalid preset 'x'"
    assert ffmpeg_failure(b"", 234) == "exit code 234"


def test_probe_parses_colour_tags_and_rejects_non_video(tmp_path):
    text = """Input #0, matroska,webm, from 'x.mkv':
  Duration: 00:01:02.50, start: 0.007000, bitrate: 100 kb/s
  Stream #0:0: Video: mjpeg (Baseline), yuvj420p(pc, bt470bg/unknown/unknown), 1920x1080, 25 fps (attached pic)
  Stream #0:1(eng): Video: hevc (Main 10), yuv420p10le(tv, bt2020nc/bt2020/smpte2084, progressive), 3840x2160 [SAR 1:1 DAR 16:9], 23.98 fps, 23.98 tbr, 1k tbn
  Stream #0:2(eng): Audio: eac3, 48000 Hz, 5.1(side), fltp, 640 kb/s
  Stream #0:3(eng): Subtitle: subrip
"""
    info = parse_ffmpeg_info(text, Path("x.mkv"))
    assert (info.width, info.height, info.codec, info.pix_fmt, info.video_index) == (3840, 2160, "hevc", "yuv420p10le", 1)
    assert (info.color_range, info.color_space, info.color_primaries, info.color_trc) == ("tv", "bt2020nc", "bt2020", "smpte2084")
    assert info.high_bit_depth and info.duration == pytest.approx(62.5) and info.fps == pytest.approx(23.98)
    assert info.stream_types == ["video", "video", "audio", "subtitle"]
    with pytest.raises(JDNetError, match=r"^y.mp4: not a readable video \(Invalid data found when processing input\)$"):
        parse_ffmpeg_info("[in#0 @ 0x1] Error opening input: Invalid data found when processing input\n", Path("y.mp4"))


class _Identity:
    """A stand-in Derainer for pipeline-only checks: returns the frames it is given."""

    def derain_frames(self, frames):
        return list(frames)


def test_rotated_video_comes_out_upright(tmp_path, clip):
    rotated = tmp_path / "phone.mp4"
    ff("-display_rotation", "90", "-i", str(clip), "-c", "copy", str(rotated))
    info = probe(rotated)
    assert (info.width, info.height) == (H, W)  # as displayed, i.e. as ffmpeg decodes it
    dest = tmp_path / "out.mp4"
    assert derain_video(_Identity(), rotated, dest, EncodeSettings(codec="ffv1"), on_start=lambda t: None).frames == 5
    out = decode_rgb(dest)
    assert out.shape == (5, W, H, 3)
    assert np.array_equal(out, decode_rgb(rotated))  # identity model + lossless codec: the upright frames


def test_ten_bit_source_is_processed_in_16_bit(tmp_path, clip):
    ten = tmp_path / "ten.mkv"
    ff("-i", str(clip), "-c:v", "libx265", "-x265-params", "log-level=error:lossless=1", "-pix_fmt", "yuv420p10le", "-an", str(ten))
    assert probe(ten).high_bit_depth
    dest = tmp_path / "out.mkv"
    assert derain_video(_Identity(), ten, dest, EncodeSettings(codec="ffv1"), on_start=lambda t: None).frames == 5
    assert probe(dest).pix_fmt == "gbrp16le"

    def rgb48(path):
        raw = ff("-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb48le", "-").stdout
        return np.frombuffer(raw, np.uint16).reshape(-1, H, W, 3)

    src, out = rgb48(ten), rgb48(dest)
    assert len(np.unique(out & 0xFF)) > 4  # more than 8 bits of precision survive
    assert np.abs(src.astype(np.int64) - out).max() <= 64  # identity model: same picture (within 10-bit rounding)


@pytest.fixture(scope="module")
def wide_clip(tmp_path_factory) -> Path:
    """3 frames of the shared clip at 80x44: large enough for 32-px tiles."""
    src = shared_path("data", "video", "real-rain-640x360.mp4")
    path = tmp_path_factory.mktemp("wide") / "wide.mp4"
    ff("-i", str(src), "-t", "0.12", "-vf", "scale=80:44", "-c:v", "libx264", "-crf", "10", "-an", str(path))
    return path


def test_frames_go_through_the_derainer_with_tiles(wide_clip, tiny_weights):
    """Every frame takes the image path: a frame that needs tiles is tiled, exactly as `jdnet derain` tiles it."""
    tiled = Derainer(weights=tiny_weights, device="cpu", tile=32, tile_overlap=8)
    frames = list(decode_rgb(wide_clip))
    assert len(frames) == 3 and tiled.plan_tile(44, 80) == 32
    got = tiled.derain_frames(frames)
    for frame, out in zip(frames, got):
        expected = np.round(tiled(frame.astype(np.float32) / np.float32(255.0)) * 255.0).astype(np.uint8)
        assert out.dtype == np.uint8 and np.array_equal(out, expected)
    whole = Derainer(weights=tiny_weights, device="cpu", tile=0)
    batched = whole.derain_frames(frames)  # one batch of 3
    single = [whole.derain_frames([f])[0] for f in frames]
    assert max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(batched, single)) <= 1
    assert not np.array_equal(np.stack(got), np.stack(single))  # 32-px tiles do change an 80x44 frame
    high = whole.derain_frames([f.astype(np.uint16) * 257 for f in frames[:1]])[0]
    assert high.dtype == np.uint16 and int(np.abs(high.astype(int) // 257 - single[0]).max()) <= 1


def test_video_cli_tiles_and_prints_json_events(tmp_path, wide_clip, tiny_weights):
    out = tmp_path / "out"
    res = run_cli("video", str(wide_clip), str(tmp_path / "missing.mp4"), str(out), "--weights", str(tiny_weights), "--device", "cpu",
                  "--tile", "32", "--tile-overlap", "8", "--max-memory", "1GB", "--codec", "ffv1", "--json", "--quiet")
    assert res.returncode == 1, res.stderr.decode()
    events = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert [e.get("status") for e in events[:2]] == ["ok", "failed"]
    ok, failed, summary = events
    assert ok["frames"] == 3 and ok["output"] == str(out / "wide.mp4") and ok["error"] is None and ok["ms"] > 0
    assert failed["input"] == str(tmp_path / "missing.mp4") and failed["error"] == "no such file or directory"
    assert summary == {"summary": {"ok": 1, "failed": 1, "skipped": 0, "seconds": summary["summary"]["seconds"], "interrupted": False}}
    # --quiet: only the failure line on stderr.
    assert res.stderr.decode().splitlines() == [f"failed: {tmp_path / 'missing.mp4'}: no such file or directory"]
    # ffv1 is lossless: the frames are the tiled Derainer's output.
    tiled = Derainer(weights=tiny_weights, device="cpu", tile=32, tile_overlap=8)
    assert np.array_equal(decode_rgb(out / "wide.mp4"), np.stack(tiled.derain_frames(list(decode_rgb(wide_clip)))))


def test_video_never_reads_the_umask_by_setting_it(tmp_path, clip, derainer, monkeypatch):
    import os

    calls = []
    monkeypatch.setattr(os, "umask", lambda *a: calls.append(a) or 0o022)
    res = derain_video(derainer, clip, tmp_path / "m.mkv", EncodeSettings(codec="ffv1"), duration=0.04)
    assert res.frames == 1 and calls == []
    from jdnet_cli.io.atomic import new_file_mode

    assert (tmp_path / "m.mkv").stat().st_mode & 0o777 == new_file_mode()
