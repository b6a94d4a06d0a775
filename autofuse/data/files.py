"""Per-sample files: check that an image, audio file or ``.npy`` timeseries can be read.

Each check returns a :class:`FileCheck` (an error message or None) instead of raising;
:func:`check_file` memoises results by path, size and modification time.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac")
TIMESERIES_EXTENSIONS = (".npy",)


@dataclass(frozen=True)
class FileCheck:
    """Result of checking one file.

    Attributes:
        error: why the file cannot be used, or None.
        channels: the channel count (``.npy``).
        non_finite: for a ``.npy`` that holds NaN or infinite values (or values too large for
            the float32 that training reads), what and where, e.g.
            ``"2 non-finite values (first: nan at [3, 1])"``; the dataset's ``non_finite``
            policy decides whether that is a problem.
    """

    error: str | None = None
    channels: int | None = None
    non_finite: str | None = None


def _inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Lexical check that ``path`` stays inside ``root`` (symlinks inside are allowed)."""
    root_s = os.path.normpath(os.path.abspath(root))
    path_s = os.path.normpath(os.path.abspath(path))
    return os.path.commonpath([root_s, path_s]) == root_s


def check_image(path: str | os.PathLike[str]) -> FileCheck:
    """Check that an image opens and decodes (PNG: chunk CRCs; others: a reduced decode)."""
    # Imported here: PIL is slow to import and only image modalities need it.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format == "PNG":
                im.verify()  # walks every chunk to IEND and checks CRCs; no decompression
                return FileCheck()
            # JPEG decodes at 1/8 scale through draft(); a truncated file still fails in load().
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except UnidentifiedImageError:
        return FileCheck("unreadable image (not an image format PIL can identify)")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        return FileCheck(f"unreadable image ({type(exc).__name__}: {exc})")
    return FileCheck()


_WAV_FORMATS = {1: "PCM", 3: "IEEE float", 0xFFFE: "extensible"}


def check_wav(path: str | os.PathLike[str]) -> FileCheck:
    """Check a WAV file's RIFF structure without decoding the samples.

    The ``fmt`` chunk must come before ``data``, describe a format that
    ``scipy.io.wavfile.read`` understands, and the ``data`` chunk must fit inside the file
    (a truncated recording declares more bytes than it has).
    """
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return FileCheck("not a WAV file (no RIFF/WAVE header)")
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos, fmt = 12, None
        while True:
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                return FileCheck("truncated WAV: no data chunk")
            chunk_id, chunk_size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
            body = pos + 8
            if chunk_id == b"fmt ":
                raw = f.read(16)
                if chunk_size < 16 or len(raw) < 16:
                    return FileCheck("truncated WAV: incomplete fmt chunk")
                fmt = struct.unpack(endian + "HHIIHH", raw)
            elif chunk_id == b"data":
                if fmt is None:
                    return FileCheck("invalid WAV: data chunk before fmt chunk")
                tag, channels, rate, _, block_align, bits = fmt
                if tag not in _WAV_FORMATS:
                    return FileCheck(f"unsupported WAV encoding (format tag {tag})")
                if channels < 1 or rate < 1 or block_align < 1 or bits not in (8, 16, 24, 32, 64):
                    return FileCheck(
                        f"invalid WAV header ({channels} channels, {rate} Hz, {bits} bits)"
                    )
                present = size - body
                if chunk_size > present:
                    return FileCheck(
                        f"truncated WAV: data chunk declares {chunk_size} bytes "
                        f"but the file holds {max(present, 0)}"
                    )
                if chunk_size < block_align:
                    return FileCheck("WAV has no audio samples")
                return FileCheck(channels=channels)
            pos = body + chunk_size + (chunk_size & 1)
            if pos > size:
                return FileCheck(f"truncated WAV: chunk {chunk_id!r} runs past the end of the file")


def check_audio(path: str | os.PathLike[str]) -> FileCheck:
    """Check an audio file: WAV in depth, FLAC by its signature."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"fLaC":
        return FileCheck()
    if magic in (b"RIFF", b"RIFX"):
        return check_wav(path)
    return FileCheck("unsupported or unreadable audio file (expected WAV)")


def check_npy(path: str | os.PathLike[str]) -> FileCheck:
    """Check a ``.npy`` timeseries: numeric, shape ``(time, channels)``, not truncated."""
    size = os.stat(path).st_size
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            header_end = f.tell()
    except Exception as exc:  # noqa: BLE001
        return FileCheck(f"not a readable .npy file ({exc})")
    if dtype.hasobject or dtype.kind not in "biuf":
        return FileCheck(f"timeseries must be numeric, got dtype {dtype}")
    expected = header_end + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        return FileCheck(f"truncated .npy file: {size} bytes, expected {expected}")
    if len(shape) != 2:
        return FileCheck(f"timeseries must have shape (time, channels), got {tuple(shape)}")
    if shape[0] == 0 or shape[1] == 0:
        return FileCheck(f"empty timeseries of shape {tuple(shape)}")
    non_finite = None
    if dtype.kind == "f":  # integers are always finite, in float32 too
        try:
            values = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            return FileCheck(f"not a readable .npy file ({exc})")
        non_finite = _non_finite(values)
    return FileCheck(channels=int(shape[1]), non_finite=non_finite)


_F32_MAX = float(np.finfo(np.float32).max)


def _non_finite(values: np.ndarray) -> str | None:
    """Describe the values of a float array that training could not use: NaN, +-inf, and
    finite values beyond float32's range (they become inf when read as float32); None if none.
    One vectorised pass over the array."""
    bad = ~np.isfinite(values)
    if values.dtype.itemsize > 4:
        with np.errstate(invalid="ignore"):
            bad |= np.abs(values) > _F32_MAX
    count = int(np.count_nonzero(bad))
    if not count:
        return None
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    value = values[first]
    what = (
        repr(float(value))
        if not np.isfinite(value)
        else f"{float(value):g} (too large for float32)"
    )
    at = ", ".join(map(str, first))
    return f"{count} non-finite value{'s' if count != 1 else ''} (first: {what} at [{at}])"


_CHECKERS: dict[str, Callable[[str | os.PathLike[str]], FileCheck]] = {
    "image": check_image,
    "audio": check_audio,
    "timeseries": check_npy,
}
_check_memo: dict[tuple[str, str, int, int], FileCheck] = {}


def check_file(kind: str, path: str | os.PathLike[str]) -> FileCheck:
    """Check one per-sample file of a modality type; memoised by (path, size, mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return FileCheck("file not found")
    if not stat.S_ISREG(st.st_mode):
        return FileCheck("not a file")
    key = (kind, str(path), st.st_size, st.st_mtime_ns)
    hit = _check_memo.get(key)
    if hit is None:
        try:
            hit = _CHECKERS[kind](path)
        except OSError as exc:
            hit = FileCheck(f"cannot read file ({exc})")
        _check_memo[key] = hit
    return hit


def check_files(kind: str, paths: Iterable[str]) -> dict[str, FileCheck]:
    """Check many files of one modality type (each distinct path once).

    Files are checked serially: with warm caches a PNG verify takes ~30 us and a WAV header
    parse less, so thread pools only add overhead (the checks are mostly Python code).
    """
    return {p: check_file(kind, p) for p in dict.fromkeys(paths)}
