"""One set of output rules for image and video jobs."""
from __future__ import annotations

import os
import shutil

import pytest

from jdnet_cli.inference.tiling import parse_tile
from jdnet_cli.errors import JDNetError
from jdnet_cli.pipelines.planning import OutputRules, plan_jobs
from jdnet_cli.pipelines.video import plan_video_jobs

from ..conftest import run_cli, shared_path


def test_output_rules_refuse_inputs_links_and_collisions(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    link = tmp_path / "link.png"
    os.link(a, link)
    rules = OutputRules([a, b])
    assert rules.refusal(a, b) == f"refusing to overwrite the input file {b}"
    assert rules.refusal(a, link) == f"refusing to overwrite the input file {link}"
    assert rules.refusal(a, tmp_path / "out" / "x.png") is None
    assert rules.refusal(b, tmp_path / "out" / ".." / "out" / "x.png") == f"output {tmp_path / 'out' / '..' / 'out' / 'x.png'} would collide with the output of {a}"


def test_image_and_video_planning_refuse_the_same_things(tmp_path):
    img, vid = tmp_path / "a.png", tmp_path / "a.mp4"
    img.write_bytes(b"x")
    vid.write_bytes(b"x")
    for plan, src in ((plan_jobs, img), (plan_video_jobs, vid)):
        [job] = plan([str(src)], str(src))
        assert job.output is None and job.error == f"refusing to overwrite the input file {src}"
        linked = tmp_path / ("linked" + src.suffix)
        os.link(src, linked)
        [job] = plan([str(src)], str(linked))
        assert job.output is None and job.error == f"refusing to overwrite the input file {linked}"


def test_an_output_folder_that_is_a_file_is_one_usage_error(tmp_path):
    img, vid, taken = tmp_path / "a.png", tmp_path / "a.mp4", tmp_path / "taken"
    for p in (img, vid, taken):
        p.write_bytes(b"x")
    message = f"{taken}: exists and is not a folder; OUTPUT here must be a folder to put the outputs in"
    for plan, src in ((plan_jobs, img), (plan_video_jobs, vid)):
        for inputs in ([str(src), str(src)], [str(tmp_path)], [str(src)]):
            with pytest.raises(JDNetError) as err:
                plan(inputs, str(taken))
            assert str(err.value) == message
    assert taken.read_bytes() == b"x"


def test_an_image_output_named_for_a_format_jdnet_cannot_write_is_refused(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"x")
    with pytest.raises(JDNetError) as err:
        plan_jobs([str(img)], str(tmp_path / "o.GIF"))
    assert str(err.value) == (f"{tmp_path / 'o.GIF'}: jdnet writes png, jpg, jpeg, bmp, tif, tiff, webp, heic, heif, avif "
                              "images, not gif; "
                              "name an output file of one of those, or a folder")
    assert not (tmp_path / "o.GIF").exists()
    # A folder of that name that exists is a folder; other suffixes still name folders ("out.v2").
    (tmp_path / "d.gif").mkdir()
    assert [j.output for j in plan_jobs([str(img)], str(tmp_path / "d.gif"))] == [tmp_path / "d.gif" / "a.png"]
    assert [j.output for j in plan_jobs([str(img)], str(tmp_path / "out.v2"))] == [tmp_path / "out.v2" / "a.png"]


def test_photos_in_formats_jdnet_cannot_read_fail_by_name_instead_of_vanishing(tmp_path):
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    for name in ("a.jpg", "IMG_0001.JXL", "trip/b.dng", "notes.txt", "trip/c.xmp"):
        (photos / name).write_bytes(b"x")
    out = tmp_path / "out"
    reason = "jdnet does not read {} images; convert it to one of png, jpg, jpeg, bmp, tif, tiff, webp, heic, heif, avif first"
    expected = [(photos / "IMG_0001.JXL", None, reason.format("jxl")), (photos / "a.jpg", out / "a.jpg", None),
                (photos / "trip" / "b.dng", None, reason.format("dng"))]  # text and sidecar files are not photos
    assert [(j.input, j.output, j.error) for j in plan_jobs([str(photos)], str(out))] == expected
    assert [(j.input, j.error) for j in plan_jobs([str(photos / "*")], str(out))] == [
        (photos / "IMG_0001.JXL", reason.format("jxl")), (photos / "a.jpg", None)]
    [job] = plan_jobs([str(photos / "IMG_0001.JXL")], str(out))
    assert job.error == reason.format("jxl")
    [job] = plan_jobs([str(photos / "notes.txt")], str(out))
    assert job.error == "unsupported file type"


def test_video_onto_itself_fails_and_leaves_the_input_intact(tmp_path, tiny_weights):
    clip = tmp_path / "clip.mp4"
    shutil.copyfile(shared_path("data", "video", "real-rain-640x360.mp4"), clip)
    before = clip.read_bytes()
    proc = run_cli("video", str(clip), str(clip), "--weights", str(tiny_weights), "--device", "cpu", "--duration", "0.1")
    assert proc.returncode == 1
    assert f"failed: {clip}: refusing to overwrite the input file {clip}" in proc.stderr.decode()
    assert clip.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


@pytest.mark.parametrize("text, value", [("auto", None), (" AUTO ", None), ("0", 0), ("64", 64), (512, 512)])
def test_parse_tile(text, value):
    assert parse_tile(text) == value


@pytest.mark.parametrize("text, message", [("8", "tile size 8 is too small"), ("big", "tile must be auto, 0 or a size")])
def test_tile_errors_are_the_same_in_every_command(tmp_path, tiny_weights, text, message):
    with pytest.raises(JDNetError, match=message):
        parse_tile(text)
    img = tmp_path / "a.png"
    shutil.copyfile(shared_path("data", "rain12", "rain", "rain-001.png"), img)
    for args in (["derain", str(img), str(tmp_path / "o.png")], ["video", str(img), str(tmp_path / "o.mp4")],
                 ["benchmark", "speed", "--size", "16x16"]):
        proc = run_cli(*args, "--tile", text, "--device", "cpu", *(["--weights", str(tiny_weights)] if args[0] != "benchmark" else []))
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr.decode(), (args, proc.stderr)


def test_linked_folders_are_followed_once_without_looping(tmp_path):
    photos, other = tmp_path / "photos", tmp_path / "other"
    for folder in (photos / "sub", other):
        folder.mkdir(parents=True)
    for path in (photos / "top.png", photos / "sub" / "s.png", other / "o.png"):
        path.write_bytes(b"x")
    (photos / "linked").symlink_to(other)  # a folder kept elsewhere: its photos belong to the batch
    (photos / "sub" / "up").symlink_to(photos)  # back up the tree: would loop
    (photos / "self").symlink_to(".")
    out = tmp_path / "out"
    jobs = plan_jobs([str(photos)], str(out))
    assert [(j.input, j.output) for j in jobs] == [
        (photos / "top.png", out / "top.png"),
        (photos / "linked" / "o.png", out / "linked" / "o.png"),
        (photos / "sub" / "s.png", out / "sub" / "s.png"),
    ]
    # The output folder reached through a link inside the input is still left out.
    (photos / "results").symlink_to(out)
    (out / "old.png").parent.mkdir(exist_ok=True)
    (out / "old.png").write_bytes(b"x")
    assert [j.input for j in plan_jobs([str(photos)], str(out))] == [j.input for j in jobs]


def test_an_empty_input_or_output_is_a_usage_error_not_the_current_folder(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(JDNetError, match=r"^an INPUT is an empty string \(an unset shell variable\?\)$"):
        plan_jobs(["", str(tmp_path / "a.png")], str(tmp_path / "out"))
    with pytest.raises(JDNetError, match=r"^OUTPUT is an empty string"):
        plan_jobs([str(tmp_path / "a.png")], "")
    with pytest.raises(JDNetError, match=r"^an INPUT is an empty string"):
        plan_video_jobs([""], str(tmp_path / "out"))
    res = run_cli("derain", "", "out", cwd=tmp_path)
    assert res.returncode == 2 and not (tmp_path / "out").exists()  # was: the whole working folder derained


def test_a_file_named_twice_is_one_job_not_a_collision_with_itself(tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"x")
    out = tmp_path / "out"
    for inputs in ([photos / "a.png", photos / "a.png"], [photos / "a.png", photos / "." / "a.png"],
                   [photos, photos / "a*.png"], [photos, photos]):
        jobs = plan_jobs([str(p) for p in inputs], str(out))
        assert [(j.output, j.error) for j in jobs] == [(out / "a.png", None)], inputs
    # The same file into two outputs (a folder's mirror and a name of its own) is two jobs.
    (photos / "sub").mkdir()
    (photos / "sub" / "b.png").write_bytes(b"x")
    jobs = plan_jobs([str(photos), str(photos / "sub" / "b.png")], str(out))
    assert [j.output for j in jobs] == [out / "a.png", out / "sub" / "b.png", out / "b.png"]


def test_a_byte_order_mark_in_a_file_list_and_stdin_as_the_output_are_handled(tmp_path):
    from jdnet_cli.pipelines.planning import read_input_list

    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbfa.png\r\nb.png\r\n")
    assert read_input_list(str(listing)) == ["a.png", "b.png"]
    photo = tmp_path / "self.png"
    photo.write_bytes(b"not changed")
    with open(photo, "rb") as stdin:
        res = derain_from_stdin(photo, stdin)
    assert res.returncode == 2 and b"is the file on stdin; refusing to overwrite an input" in res.stderr
    assert photo.read_bytes() == b"not changed"


def derain_from_stdin(output, stdin):
    """``jdnet derain - OUTPUT`` with ``stdin`` (an open file) as its standard input."""
    import subprocess
    import sys

    from ..conftest import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "jdnet_cli", "derain", "-", str(output)], stdin=stdin,
                          capture_output=True, env=env, timeout=120)


def test_an_output_named_as_one_file_takes_one_input_only(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    for inputs, what in (([a, b], "2 paths"), ([str(tmp_path)], "a folder"), ([str(tmp_path / "a*.png")], "a pattern")):
        with pytest.raises(JDNetError, match=rf"names one image file, but the inputs are {what}; name a folder"):
            plan_jobs(inputs, str(tmp_path / "one.png"))  # was: a folder named one.png
    assert not (tmp_path / "one.png").exists()
    assert [j.output for j in plan_jobs([a], str(tmp_path / "res.png") + "/")] == [tmp_path / "res.png" / "a.png"]
    with pytest.raises(JDNetError, match=r"o7\.png: its name says png but --ext asks for jpg; give one or the other$"):
        plan_jobs([a], str(tmp_path / "o7.png"), "jpg")  # was: written as o7.jpg without a word
    assert [j.output for j in plan_jobs([a], str(tmp_path / "o7.jpeg"), "jpg")] == [tmp_path / "o7.jpeg"]


def test_a_folder_of_videos_into_one_video_name_is_refused_not_cut_to_its_first(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (videos / name).write_bytes(b"x")
    with pytest.raises(JDNetError, match=r"one\.mp4: names one video file, but the inputs hold 2 videos; name a folder"):
        plan_video_jobs([str(videos)], str(tmp_path / "one.mp4"))  # was: a.mp4 derained into one.mp4, b.mp4 dropped
    jobs = plan_video_jobs([str(videos / "a.mp4"), str(videos / "b.mp4")], str(tmp_path / "out.mp4") + "/")
    assert [j.output for j in jobs] == [tmp_path / "out.mp4" / "a.mp4", tmp_path / "out.mp4" / "b.mp4"]


def test_hidden_files_and_folders_inside_a_folder_are_left_out_alike(tmp_path):
    photos = tmp_path / "photos"
    (photos / ".thumbnails").mkdir(parents=True)
    for name in ("a.png", ".b.png", ".thumbnails/c.png"):
        (photos / name).write_bytes(b"x")
    assert [j.input for j in plan_jobs([str(photos)], str(tmp_path / "out"))] == [photos / "a.png"]  # c.png was taken
    hidden_root = tmp_path / ".hidden"  # a folder named on the command line is walked, hidden or not
    hidden_root.mkdir()
    (hidden_root / "d.png").write_bytes(b"x")
    assert [j.input for j in plan_jobs([str(hidden_root)], str(tmp_path / "out2"))] == [hidden_root / "d.png"]


def test_heic_and_heif_are_one_format_for_ext_and_a_file_named_twice_may_go_to_one_output_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    a = str(tmp_path / "a.png")
    assert [j.output for j in plan_jobs([a], str(tmp_path / "x.heif"), "heic")] == [tmp_path / "x.heif"]
    assert [j.output for j in plan_jobs([a, str(tmp_path / "." / "a.png")], str(tmp_path / "one.png"))] == [
        tmp_path / "one.png"]
