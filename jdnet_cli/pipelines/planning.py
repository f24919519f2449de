"""Job planning for the batch commands: inputs to outputs, one set of rules for where outputs may go.

Images (``plan_jobs``) and videos (``pipelines.video.plan_video_jobs``) share ``OutputRules``: an
output never lands on an input (by path, hard link or bind mount) and two inputs never share an output.
"""
from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import JDNetError
from ..io.avif import AVIF_EXTENSIONS, avif_support_missing
from ..io.heif import HEIF_EXTENSIONS, heif_support_missing
from ..io.images import IMAGE_EXTENSIONS, is_image_path, read_bytes

# As users type them after --ext, for error messages.
_EXTENSION_NAMES = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)

GLOB_CHARS = set("*?[")
STDIO = Path("-")  # stdin as an input, stdout as an output


@dataclass(frozen=True)
class Job:
    """One input file and where its result goes (``output`` None when the job is already an error)."""

    input: Path
    output: Path | None
    error: str | None = None


class OutputRules:
    """Where outputs may go: never onto an input file, never onto another job's output."""

    def __init__(self, inputs: Iterable[Path]):
        self.inputs = {Path(p).resolve() for p in inputs}
        self.claimed: dict[Path, Path] = {}

    def refusal(self, src: Path, dest: Path) -> str | None:
        """Why ``src`` may not write ``dest``, or None (and ``dest`` is then claimed for ``src``)."""
        key = dest.resolve()
        if key in self.inputs or _same_file(dest, src):
            return f"refusing to overwrite the input file {dest}"
        if key in self.claimed:
            return f"output {dest} would collide with the output of {self.claimed[key]}"
        self.claimed[key] = src
        return None


def check_output_folder(out: Path) -> None:
    """Raise JDNetError if ``out``, which is to be a folder of outputs, is an existing non-directory."""
    # Otherwise every job fails on its own with "cannot write OUT/x: File exists", exit 1, for what is
    # one usage error.
    if out.exists() and not out.is_dir():
        raise JDNetError(f"{out}: exists and is not a folder; OUTPUT here must be a folder to put the outputs in")


# Image formats people name outputs with that jdnet does not write. An OUTPUT ending in one of these is
# a file name, not a folder, so it is refused rather than created as a folder with the image inside.
_OTHER_IMAGE_SUFFIXES = frozenset(
    ".gif .jxl .jp2 .j2k .ico .tga .psd .ppm .pgm .pbm .pnm .exr .hdr .svg .dng .raw".split()
)


# Photo formats jdnet does not read (neither OpenCV's wheel nor Pillow decodes JPEG XL or camera raw). In
# a folder or a glob they fail by name instead of vanishing from the batch: a camera's raw files must not
# be left out of "jdnet derain photos/ out/" with exit status 0.
_UNREAD_PHOTO_SUFFIXES = frozenset(".jxl .jp2 .dng .raw .cr2 .cr3 .nef .arw .orf .rw2 .raf".split())


def _unread_photo(path: Path) -> str | None:
    """Why ``path``, a photo format jdnet does not read, fails; None for any other file."""
    ext = path.suffix.lower()
    if ext not in _UNREAD_PHOTO_SUFFIXES:
        return None
    return f"jdnet does not read {ext[1:]} images; convert it to one of {_EXTENSION_NAMES} first"


def _same_file(a: Path, b: Path) -> bool:
    # A hard link or bind mount reaches the same file under another name.
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def normalize_ext(ext: str | None) -> str | None:
    """'webp' / '.WEBP' -> '.webp'; None stays None; raise JDNetError for formats we cannot write."""
    if not ext:
        return None
    ext = ext.lower()
    ext = ext if ext.startswith(".") else "." + ext
    if ext not in IMAGE_EXTENSIONS:
        raise JDNetError(f"unsupported --ext {ext!r} (use one of {_EXTENSION_NAMES})")
    if ext in HEIF_EXTENSIONS and heif_support_missing():
        raise JDNetError(f"--ext {ext[1:]}: {heif_support_missing()}")
    if ext in AVIF_EXTENSIONS and avif_support_missing():
        raise JDNetError(f"--ext {ext[1:]}: {avif_support_missing()}")
    return ext


def _walk(root: Path, exclude: Path | None) -> Iterator[Path]:
    return walk_files(root, exclude, lambda path: is_image_path(path) or _unread_photo(path) is not None)


def walk_files(root: Path, exclude: Path | None, wanted: Callable[[Path], bool]) -> Iterator[Path]:
    """Files under ``root`` that ``wanted`` takes, not hidden nor in a hidden folder, in sorted order, leaving out
    the folder ``exclude``."""
    # Linked folders are followed as 'find -L' does (skipping them dropped their photos from a batch that
    # exited 0), except a link to a folder it is inside of, which would loop.
    chains: dict[str, frozenset] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        chain = chains.pop(dirpath, None) or frozenset({_file_id(here)})
        keep = []
        for d in dirnames:
            if d.startswith("."):  # hidden, as hidden files are: thumbnail caches, .git, editors' temp folders
                continue
            folder = _file_id(here / d)
            if folder is None or folder in chain or (exclude is not None and (here / d).resolve() == exclude):
                continue
            chains[os.path.join(dirpath, d)] = chain | {folder}
            keep.append(d)
        dirnames[:] = keep
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            if wanted(path) and not name.startswith("."):
                yield path


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_standard_streams(reads_stdin: bool, stdout_user: str | None) -> None:
    """Raise JDNetError when stdin is to be read, or stdout written (by ``stdout_user``, e.g. '--json'), but is
    closed (a script's '<&-' or '>&-'): Python then has no stream for it at all."""
    if reads_stdin and sys.stdin is None:
        raise JDNetError("- reads stdin, which is closed")
    if stdout_user and sys.stdout is None:
        raise JDNetError(f"{stdout_user} writes to stdout, which is closed")


def check_paths_given(inputs: list[str], output: str) -> None:
    """Raise JDNetError for an empty INPUT or OUTPUT: Path('') is the current folder, so an unset shell
    variable would otherwise derain the whole working directory, or write into it."""
    if any(raw == "" for raw in inputs):
        raise JDNetError("an INPUT is an empty string (an unset shell variable?)")
    if output == "":
        raise JDNetError("OUTPUT is an empty string (an unset shell variable?)")


def plan_jobs(inputs: Iterable[str], output: str, ext: str | None = None) -> list[Job]:
    """Expand files, directories (recursive, mirrored) and globs into jobs; raise on usage errors."""
    inputs = list(inputs)
    if not inputs:
        raise JDNetError("no inputs given")
    check_paths_given(inputs, output)
    ext = normalize_ext(ext)
    out = Path(output)
    out_resolved = out.resolve()
    names_a_file = out.suffix.lower() in IMAGE_EXTENSIONS and not out.is_dir() and not output.endswith(("/", os.sep))
    distinct = {_file_id(Path(raw)) or raw for raw in inputs}  # "a.png ./a.png out.png" names one file
    several = len(distinct) > 1 or Path(inputs[0]).is_dir() or (bool(GLOB_CHARS & set(inputs[0])) and not Path(inputs[0]).exists())
    if names_a_file and several:
        # "jdnet derain a.png b.png out.png" would make a folder named out.png: refuse, as for out.gif.
        raise JDNetError(f"{output}: names one image file, but the inputs are {_what_inputs(inputs)}; name a folder "
                         "for their outputs (a trailing / makes any name a folder)")
    if names_a_file:
        src = Path(inputs[0])
        dest = checked_output_name(out, ext)
        refusal = OutputRules([src]).refusal(src, dest)
        return [Job(src, None, refusal) if refusal else Job(src, dest)]
    if out.suffix.lower() in _OTHER_IMAGE_SUFFIXES and not out.is_dir():
        raise JDNetError(f"{output}: jdnet writes {_EXTENSION_NAMES} images, not {out.suffix[1:].lower()}; "
                         "name an output file of one of those, or a folder")
    check_output_folder(out)

    entries: list[tuple[Path, Path | None, str | None]] = []  # (input, relative output, error)
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            if path.resolve() == out_resolved:
                raise JDNetError(f"{raw}: output directory is the input directory; choose another OUTPUT")
            found = list(_walk(path, out_resolved))
            if not found:
                # As for a glob that matches nothing: a script pointed at the wrong folder should not exit 0.
                entries.append((path, None, f"no image files in this directory (looked for {_EXTENSION_NAMES})"))
            entries.extend((p, p.relative_to(path), _unread_photo(p)) for p in found)
        elif path.is_file() or path.is_symlink():
            unread = None if is_image_path(path) else _unread_photo(path) or "unsupported file type"
            entries.append((path, Path(path.name), unread))
        elif GLOB_CHARS & set(raw):
            matches = sorted(Path(m) for m in glob.glob(raw, recursive=True))
            files = [m for m in matches if m.is_file() and (is_image_path(m) or _unread_photo(m))]
            if not files:
                entries.append((path, None, "no image files match this pattern"))
            entries.extend((m, Path(m.name), _unread_photo(m)) for m in files)
        else:
            entries.append((path, None, "no such file or directory"))

    entries = once_each(entries)
    rules = OutputRules(e[0] for e in entries if e[2] is None)
    jobs: list[Job] = []
    for src, rel, err in entries:
        if err is not None or rel is None:
            jobs.append(Job(src, None, err or "invalid input"))
            continue
        dest = out / rel
        if ext:
            dest = dest.with_suffix(ext)
        refusal = rules.refusal(src, dest)
        jobs.append(Job(src, None, refusal) if refusal else Job(src, dest))
    return jobs


def _what_inputs(inputs: list[str]) -> str:
    if len(inputs) > 1:
        return f"{len(inputs)} paths"
    return "a folder" if Path(inputs[0]).is_dir() else "a pattern"


_SAME_FORMAT = ({".jpg", ".jpeg"}, {".tif", ".tiff"}, {".heic", ".heif"})


def checked_output_name(out: Path, ext: str | None) -> Path:
    """An output file name, refused when --ext asks for another format than its own suffix."""
    if ext and out.suffix.lower() != ext and {out.suffix.lower(), ext} not in _SAME_FORMAT:
        raise JDNetError(f"{out}: its name says {out.suffix[1:].lower()} but --ext asks for {ext[1:]}; "
                         "give one or the other")
    return out


def once_each(entries: list[tuple]) -> list[tuple]:
    """Planned (input, relative output, ..., error) entries without repeats: a file named twice ("a.png ./a.png",
    a folder and a glob over it) for the same output is one job, not a collision with itself."""
    seen, unique = set(), []
    for entry in entries:
        key = (_file_id(entry[0]) or str(entry[0].resolve()), entry[1]) if entry[1] is not None and entry[-1] is None else None
        if key is None or key not in seen:
            unique.append(entry)
            seen.add(key)
    return unique


def plan_image_jobs(inputs: list[str], output: str, ext: str | None = None) -> list[Job]:
    """Jobs for files, directories and globs, or the one job of a stdin (-) input or stdout (-) output."""
    check_paths_given(inputs, output)
    stdin_in, stdout_out = "-" in inputs, output == "-"
    if not (stdin_in or stdout_out):
        return plan_jobs(inputs, output, ext)
    if len(inputs) != 1:
        raise JDNetError("- (stdin/stdout) works with exactly one INPUT")
    ext = normalize_ext(ext)
    src = STDIO if stdin_in else Path(inputs[0])
    if stdout_out and src != STDIO and src.is_dir():
        raise JDNetError(f"{src}: writing to - (stdout) takes one image file, not a directory")
    if stdout_out:
        return [Job(src, STDIO)]
    dest = Path(output)
    if dest.is_dir() or dest.suffix.lower() not in IMAGE_EXTENSIONS:
        raise JDNetError(f"{output}: reading stdin needs an OUTPUT image file name (or - for stdout)")
    dest = checked_output_name(dest, ext)
    if _stdin_is(dest):  # 'jdnet derain - photo.png < photo.png'
        raise JDNetError(f"{dest}: is the file on stdin; refusing to overwrite an input")
    return [Job(src, dest)]


def _stdin_is(path: Path) -> bool:
    try:
        here, there = os.fstat(0), path.stat()
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def read_input_list(source: str) -> list[str]:
    """Input paths from a file, or from stdin for ``-``: one per line, or NUL-separated."""
    try:
        raw = sys.stdin.buffer.read() if source == "-" else read_bytes(source)
    except JDNetError as err:  # "PATH: no such file" -> "--files-from PATH: no such file"
        raise JDNetError(f"--files-from {err}") from None
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors) is not part of a name
    sep = b"\0" if b"\0" in raw else b"\n"
    names = [os.fsdecode(line.rstrip(b"\r") if sep == b"\n" else line) for line in raw.split(sep)]
    names = [name for name in names if name.strip()]
    if not names:
        raise JDNetError(f"--files-from {source}: the list is empty")
    return names


def parse_shard(spec: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N; raise JDNetError on anything else."""
    try:
        k_text, n_text = spec.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise JDNetError(f"--shard {spec!r}: expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise JDNetError(f"--shard {spec}: need 0 <= K < N")
    return k, n


def shard_jobs(jobs: list[Job], k: int, n: int) -> list[Job]:
    """The k-th (0-based) of n deterministic slices of the jobs sorted by input path."""
    if n < 1 or not 0 <= k < n:
        raise JDNetError(f"--shard {k}/{n}: need 0 <= K < N")
    ordered = sorted(jobs, key=lambda j: str(j.input))
    return ordered[k::n]
