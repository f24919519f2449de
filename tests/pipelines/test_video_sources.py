"""``jdnet video`` on synthetic clips: what of the source the output keeps (pixel shape, track tags, phone
keys, attachments, the right stream's rotation), sequences cut by --start/--duration, damage that is not
truncation, and outputs that never land on an input."""
from __future__ import annotations

from pathlib import Path

import pytest

from jdnet_cli.errors import JDNetError
from jdnet_cli.inference.derainer import Derainer
from jdnet_cli.io.video_probe import parse_ffmpeg_info, probe
from jdnet_cli.pipelines.video import VideoPartlyDone, derain_video, plan_video_jobs

from ..conftest import run_cli
from .test_video import ff, frame_times


@pytest.fixture(scope="module")
def derainer(tiny_weights) -> Derainer:
    return Derainer(weights=tiny_weights, device="cpu")


def synthetic_clip(path: Path, *options: str, frames: int = 6, size: str = "32x24") -> Path:
    ff("-f", "lavfi", "-i", f"testsrc=size={size}:rate=25", "-frames:v", str(frames), "-c:v", "libx264",
       "-pix_fmt", "yuv420p", *options, str(path))
    return path


def describe(path: Path) -> str:
    import subprocess

    from jdnet_cli.io.video_probe import ffmpeg_exe

    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True).stderr.decode()


def test_non_square_pixels_keep_their_shape(tmp_path, derainer):
    src = synthetic_clip(tmp_path / "sar.mkv", "-vf", "setsar=16/15", size="48x32")
    assert probe(src).sample_aspect == (16, 15)
    for ext in ("mkv", "mp4"):
        res = derain_video(derainer, src, tmp_path / f"out.{ext}")
        assert "48x32 [SAR 16:15 DAR 8:5]" in describe(res.output)  # was SAR 1:1: played stretched


def test_the_video_tracks_language_and_title_and_a_phones_keys_are_kept(tmp_path, derainer):
    src = synthetic_clip(tmp_path / "cam.mkv", "-metadata:s:v:0", "language=jpn", "-metadata:s:v:0", "title=Main cam")
    res = derain_video(derainer, src, tmp_path / "out.mkv")
    assert probe(res.output).stream_tags == {"language": "jpn", "title": "Main cam"}
    phone = synthetic_clip(tmp_path / "phone.mov", "-movflags", "use_metadata_tags",
                    "-metadata", "com.apple.quicktime.location.ISO6709=+37.3349-122.0090+025.000/",
                    "-metadata", "com.apple.quicktime.model=iPhone 15")
    assert probe(phone).vendor_tags
    for ext in ("mov", "mp4"):
        text = describe(derain_video(derainer, phone, tmp_path / f"phone-out.{ext}").output)
        assert "com.apple.quicktime.location.ISO6709: +37.3349-122.0090+025.000/" in text
        assert "com.apple.quicktime.model: iPhone 15" in text


def test_attached_files_a_container_cannot_hold_are_named_in_a_note(tmp_path, derainer):
    font = tmp_path / "font.ttf"
    font.write_bytes(bytes(range(256)) * 8)
    src = tmp_path / "font.mkv"
    ff("-f", "lavfi", "-i", "testsrc=size=32x24:rate=25", "-frames:v", "6", "-c:v", "libx264", "-pix_fmt", "yuv420p",
       "-attach", str(font), "-metadata:s:t", "mimetype=application/x-truetype-font", str(src))
    res = derain_video(derainer, src, tmp_path / "out.mp4")
    assert res.note == ("drops the input's 1 attached file (such as subtitle fonts: a .mp4 file cannot hold them; "
                        ".mkv can)")
    assert derain_video(derainer, src, tmp_path / "out.mkv").note is None
    assert "Attachment: ttf" in describe(tmp_path / "out.mkv")


def test_rotation_of_another_stream_does_not_turn_the_derained_one():
    text = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.mov':
  Duration: 00:00:00.24, start: 0.000000, bitrate: 127 kb/s
  Stream #0:0[0x1]: Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 32x24 [SAR 1:1 DAR 4:3], 25 fps
    Metadata:
      handler_name    : VideoHandler
  Stream #0:1[0x2](jpn): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 32x24, 25 fps
    Metadata:
      title           : Second angle
    Side data:
      Display Matrix: rotation of 90.00 degrees
"""
    info = parse_ffmpeg_info(text, Path("x.mov"))
    assert (info.width, info.height, info.stream_tags) == (32, 24, {})  # was 24x32: frames read with the wrong shape
    own = parse_ffmpeg_info(text.replace("Stream #0:0[0x1]", "Stream #0:9[0x1]"), Path("x.mov"))
    assert (own.width, own.height, own.stream_tags) == (24, 32, {"language": "jpn", "title": "Second angle"})


def test_an_image_sequence_is_cut_by_start_and_duration(tmp_path, derainer):
    frames = tmp_path / "frames"
    frames.mkdir()
    ff("-f", "lavfi", "-i", "testsrc=size=32x24:rate=25", "-frames:v", "10", str(frames / "f_%03d.png"))
    res = derain_video(derainer, frames, tmp_path / "cut.mp4", start=0.2, duration=0.12, sequence=True)
    assert res.frames == 3  # frames 5, 6, 7 (at 0.20, 0.24, 0.28 s); was an output with no video at all
    assert [round(t, 2) for t, _ in frame_times(res.output)] == [0.0, 0.04, 0.08]
    res = derain_video(derainer, frames, tmp_path / "late.mp4", start=0.2, sequence=True)
    assert res.frames == 5 and frame_times(res.output)[0][0] == 0.0  # was all 10 frames, shifted to 0.2 s
    with pytest.raises(JDNetError, match=r"no frames in the --start/--duration range \(10 frames at 25 fps\)$"):
        derain_video(derainer, frames, tmp_path / "none.mp4", start=5, sequence=True)


def test_audio_longer_than_a_damaged_video_is_not_truncation(tmp_path, derainer):
    video = tmp_path / "v.mkv"
    ff("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25,noise=alls=60:allf=t", "-frames:v", "12", "-c:v", "libx264",
       "-pix_fmt", "yuv420p", "-g", "100", str(video))
    src = tmp_path / "long-audio.mkv"
    ff("-i", str(video), "-f", "lavfi", "-i", "sine=f=440:sample_rate=48000:duration=3", "-map", "0:v", "-map", "1:a",
       "-c:v", "copy", "-c:a", "aac", str(src))
    data = bytearray(src.read_bytes())
    data[4000:4012] = b"\xde\xad\xbe\xef" * 3  # damage inside the video: the decoder conceals it
    src.write_bytes(bytes(data))
    res = derain_video(derainer, src, tmp_path / "out.mkv")
    assert res.frames == 12 and "decoder errors" in res.note  # was a failure: "truncated" at 0.48 s of 3.02 s
    cut = tmp_path / "cut.mkv"  # a file that does stop early is still called truncated
    cut.write_bytes(src.read_bytes()[: len(data) * 3 // 10])
    with pytest.raises(VideoPartlyDone, match="the file ends early"):
        derain_video(derainer, cut, tmp_path / "cut-out.mkv")


def test_a_partial_output_never_takes_the_name_of_an_existing_file(tmp_path, derainer):
    video = tmp_path / "full.mkv"
    ff("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25,noise=alls=60:allf=t", "-frames:v", "12", "-c:v", "libx264",
       "-g", "3", str(video))
    src = tmp_path / "clip.partial.mkv"  # a cut input whose name is the partial name of the output clip.mkv
    src.write_bytes(video.read_bytes()[: video.stat().st_size * 55 // 100])
    before = src.read_bytes()
    with pytest.raises(VideoPartlyDone) as failure:
        derain_video(derainer, src, tmp_path / "clip.mkv")
    assert failure.value.partial == tmp_path / "clip.partial-2.mkv" and failure.value.partial.exists()
    assert src.read_bytes() == before  # was replaced by the derained part of itself


def test_a_folder_of_outputs_uses_mkv_for_containers_jdnet_does_not_write_and_stdout_is_refused(tmp_path):
    y4m = tmp_path / "clip.y4m"
    ff("-f", "lavfi", "-i", "testsrc=size=32x24:rate=25", "-frames:v", "3", "-pix_fmt", "yuv420p", str(y4m))
    mp4 = synthetic_clip(tmp_path / "a.mp4")
    jobs = plan_video_jobs([str(y4m), str(mp4)], str(tmp_path / "out"))
    assert [job.output for job in jobs] == [tmp_path / "out" / "clip.mkv", tmp_path / "out" / "a.mp4"]
    with pytest.raises(JDNetError, match=r"^OUTPUT -: jdnet video writes files, not stdout"):
        plan_video_jobs([str(mp4)], "-")
    res = run_cli("video", str(mp4), "-", "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 2 and not (tmp_path / "-").exists()


def test_start_keeps_the_chapters_moved_to_the_cut_also_without_audio(tmp_path, derainer):
    meta = tmp_path / "chapters.txt"
    meta.write_text(";FFMETADATA1\ntitle=My clip\n" + "".join(
        f"[CHAPTER]\nTIMEBASE=1/1000\nSTART={i * 1000}\nEND={(i + 1) * 1000}\ntitle={name}\n"
        for i, name in enumerate(("one", "two", "three"))))
    src = tmp_path / "chaptered.mp4"  # video only: nothing else to cut
    ff("-f", "lavfi", "-i", "testsrc=size=32x24:rate=10:duration=3", "-i", str(meta), "-map", "0", "-map_metadata", "1",
       "-map_chapters", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(src))
    assert probe(src).stream_types == ["video", "chapters"]  # the mp4 chapter track is not a data stream
    res = derain_video(derainer, src, tmp_path / "cut.mkv", start=1.5)
    assert res.frames == 15 and res.note is None  # no "drops the input's 1 data stream" for the chapter track
    text = describe(res.output)
    assert "title           : My clip" in text
    assert "Chapter #0:0: start 0.000000, end 0.500000" in text and "Chapter #0:1: start 0.500000, end 1.500000" in text
    assert "title           : one" not in text  # it ended before the cut; before, all chapters were dropped


def test_only_the_audio_tracks_a_container_refuses_are_re_encoded(tmp_path, derainer):
    src = tmp_path / "two-tracks.mkv"  # an Opus track WebM takes as it is, and an AAC one it does not
    ff("-f", "lavfi", "-i", "testsrc=size=32x24:rate=25", "-f", "lavfi", "-i", "sine=f=300:sample_rate=48000",
       "-f", "lavfi", "-i", "sine=f=600:sample_rate=48000", "-map", "0", "-map", "1", "-map", "2", "-t", "0.24",
       "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a:0", "libopus", "-b:a:0", "32k", "-c:a:1", "aac", str(src))
    res = derain_video(derainer, src, tmp_path / "out.webm")
    assert res.note == ("has 1 of its 2 audio tracks re-encoded as Opus 160 kb/s: a .webm file cannot hold them "
                        "unchanged (the others are copied)")

    def opus_packets(path):
        return ff("-i", str(path), "-map", "0:a:0", "-c", "copy", "-f", "md5", "-").stdout

    assert opus_packets(res.output) == opus_packets(src)  # copied bit for bit; was decoded and re-encoded


def test_hdr10_mastering_and_light_level_metadata_go_into_x264_and_x265_outputs(tmp_path, derainer):
    src = tmp_path / "hdr10.mp4"
    ff("-f", "lavfi", "-i", "testsrc=size=32x24:rate=25", "-frames:v", "4", "-vf",
       "setparams=color_primaries=bt2020:color_trc=smpte2084:colorspace=bt2020nc,format=yuv420p10le", "-c:v", "libx265",
       "-x265-params", "log-level=error:hdr10=1:master-display=G(13250,34500)B(7500,3000)R(34000,16000)"
       "WP(15635,16450)L(10000000,1):max-cll=1000,400", str(src))

    def side_data(path):
        text = ff("-i", str(path), "-vf", "showinfo", "-frames:v", "1", "-f", "null", "-", "-loglevel", "info").stderr.decode()
        return sorted({line.split("side data - ", 1)[1] for line in text.splitlines()
                       if "side data - Mastering" in line or "side data - Content light" in line})

    expected = side_data(src)
    assert len(expected) == 2 and "MaxCLL=1000, MaxFALL=400" in expected[0]
    from jdnet_cli.io.video import EncodeSettings

    for name, settings in (("x264.mp4", EncodeSettings()), ("x265.mkv", EncodeSettings("libx265"))):
        res = derain_video(derainer, src, tmp_path / name, settings)
        assert side_data(res.output) == expected and res.note is None  # was dropped without a word
    res = derain_video(derainer, src, tmp_path / "vp9.webm")
    assert side_data(res.output) == [] and res.note == (
        "drops the input's HDR10 mastering-display and light-level metadata: jdnet writes it with libx264 and "
        "libx265 only, not libvpx-vp9")


def test_fps_for_video_files_only_is_a_usage_error(tmp_path):
    clip = synthetic_clip(tmp_path / "a.mp4")
    res = run_cli("video", str(clip), str(tmp_path / "out.mp4"), "--fps", "30", "--device", "cpu")
    assert res.returncode == 2 and not (tmp_path / "out.mp4").exists()  # was accepted and ignored
    assert res.stderr.decode().strip() == ("error: --fps sets the rate of image-sequence inputs; these inputs are "
                                           "video files, whose own timing is kept")


def test_cover_art_goes_into_mp4_outputs_and_is_noted_elsewhere(tmp_path, derainer):
    import cv2
    import numpy as np

    cover = tmp_path / "cover.jpg"
    cv2.imwrite(str(cover), np.full((16, 16, 3), 90, np.uint8))
    src = tmp_path / "album.mp4"
    ff("-f", "lavfi", "-i", "testsrc=size=32x24:rate=25", "-i", str(cover), "-t", "0.2", "-map", "0:v", "-map", "1",
       "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:v:1", "copy", "-disposition:v:1", "attached_pic", str(src))
    assert probe(src).cover_streams == (1,)
    res = derain_video(derainer, src, tmp_path / "out.mp4")
    assert res.note is None and probe(res.output).attached_pics == 1  # was dropped (with a note)
    res = derain_video(derainer, src, tmp_path / "out.mkv")
    assert res.note == "drops the input's cover art"


def test_a_title_goes_into_mp4_as_the_track_name_and_phone_keys_survive_a_cut_with_audio(tmp_path, derainer):
    src = synthetic_clip(tmp_path / "titled.mkv", "-metadata:s:v:0", "title=Rain cam")
    for ext in ("mp4", "mov"):
        assert "handler_name    : Rain cam" in describe(derain_video(derainer, src, tmp_path / f"t.{ext}").output)
    phone = tmp_path / "phone.mov"
    ff("-f", "lavfi", "-i", "testsrc=size=32x24:rate=10", "-f", "lavfi", "-i", "sine=d=0.5", "-t", "0.5", "-c:v",
       "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "use_metadata_tags",
       "-metadata", "com.apple.quicktime.make=Apple", str(phone))
    res = derain_video(derainer, phone, tmp_path / "cut.mov", start=0.2)
    assert "com.apple.quicktime.make: Apple" in describe(res.output)  # was lost in the audio's cut pass


def test_a_video_named_twice_is_one_job_and_folders_find_y4m_files(tmp_path):
    clip = synthetic_clip(tmp_path / "a.mp4")
    jobs = plan_video_jobs([str(clip), str(tmp_path / "." / "a.mp4")], str(tmp_path / "out") + "/")
    assert [(j.output, j.error) for j in jobs] == [(tmp_path / "out" / "a.mp4", None)]  # was a collision with itself
    ff("-f", "lavfi", "-i", "testsrc=size=32x24:rate=25", "-frames:v", "2", "-pix_fmt", "yuv420p", str(tmp_path / "b.y4m"))
    jobs = plan_video_jobs([str(tmp_path)], str(tmp_path / "out2"))
    assert [j.output for j in jobs] == [tmp_path / "out2" / "a.mp4", tmp_path / "out2" / "b.mkv"]


def test_an_interlaced_input_is_written_progressive_and_a_note_says_so(tmp_path, derainer):
    src = synthetic_clip(tmp_path / "interlaced.mp4", "-vf", "setfield=tff", "-flags", "+ildct+ilme")
    assert probe(src).field_order == "top"
    res = derain_video(derainer, src, tmp_path / "out.mp4")
    assert res.note == ("is progressive: the input is interlaced (top field first) and jdnet derains whole frames; "
                        "deinterlace it first (e.g. ffmpeg -vf bwdif) for the best result")  # was: no word
    assert probe(synthetic_clip(tmp_path / "progressive.mp4")).field_order is None
