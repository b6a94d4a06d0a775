"""Weight files (safetensors) that carry their own checksum, so bit rot is caught at load.

A safetensors file checks its header (JSON, offsets, shapes), not its tensor data: a byte flipped
in the data by a disk, a copy or an upload loads silently. Every safetensors file autofuse writes
(finalist checkpoints, ``best/``, exports and their ensemble members, stage-1 encoders and their
features, the feature and preprocessing caches) goes through :func:`save_weights`, which records
the file's sha256 in its own header, under ``__metadata__`` / :data:`CHECKSUM_KEY`; every read
goes through :func:`read_weights`, which checks it.

The checksum lives inside the file, not beside it, so it cannot be separated from the bytes it
describes: an atomic rename, a folder renamed into place, ``shutil.copytree`` of an export, the
artifact store's uploads and downloads (one file or a folder) and MLflow's model logging all move
it along, and nothing else has to be kept in step (no sidecar to upload, fetch, prune or delete).

What is hashed: every byte of the file (length prefix, header, tensor data), with the 64 hex
digits of the recorded digest read as ``0`` (the placeholder written first; the header keeps its
length, so the tensor offsets do not move when the digest is filled in).

A file without a recorded checksum (written by an autofuse before this one, or by another
program) loads as before, unchecked.

Cost: sha256 runs at about 1 GB/s on one core (~0.5 s for a 500 MB features file). A file is
hashed once when written (read back from the page cache just after writing) and once per load
(streamed in 1 MiB blocks after safetensors' own read, so mostly from the page cache); memory
stays flat.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors.torch import load_file, save_file

from autofuse._util import first_line
from autofuse.errors import DamagedFileError

#: the header metadata key holding the file's sha256 (hex)
CHECKSUM_KEY = "autofuse_sha256"
_PLACEHOLDER = "0" * 64
_HEX = re.compile(r"[0-9a-f]{64}")
#: safetensors refuses headers above 100 MB; a larger length prefix is not a safetensors file
_MAX_HEADER = 100_000_000
_BLOCK = 1 << 20


def _entry(digest: str) -> bytes:
    """How the digest appears in the header's JSON (serde writes it compactly)."""
    return f'"{CHECKSUM_KEY}":"{digest}"'.encode()


def _digest(f: BinaryIO, header: bytes, recorded: str) -> str:
    """sha256 of the open file ``f`` (positioned after its header) with ``recorded`` in
    ``header`` read as the placeholder. Streams the tensor data: one pass, flat memory."""
    h = hashlib.sha256(struct.pack("<Q", len(header)))
    h.update(header.replace(_entry(recorded), _entry(_PLACEHOLDER), 1))
    for block in iter(lambda: f.read(_BLOCK), b""):
        h.update(block)
    return h.hexdigest()


def _header(f: BinaryIO, size: int) -> bytes | None:
    """The JSON header of the safetensors file ``f`` (read from its start), or ``None`` when the
    length prefix cannot be one (safetensors itself then says what is wrong)."""
    prefix = f.read(8)
    if len(prefix) < 8:
        return None
    (n,) = struct.unpack("<Q", prefix)
    if n > min(_MAX_HEADER, size - 8):
        return None
    header = f.read(n)
    return header if len(header) == n else None


def save_weights(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> str:
    """Write ``tensors`` (contiguous) as the safetensors file ``path``, its sha256 recorded in
    its header; returns the digest.

    ``path`` is normally the temporary name of an atomic write (``atomic_write``,
    ``atomic_write_dir``): the digest is filled in before the file gets its final name."""
    path = Path(path)
    save_file(tensors, str(path), metadata={CHECKSUM_KEY: _PLACEHOLDER})
    with open(path, "r+b") as f:
        header = _header(f, path.stat().st_size)
        at = -1 if header is None else header.find(_entry(_PLACEHOLDER))
        if header is None or at < 0 or header.count(_entry(_PLACEHOLDER)) != 1:
            raise RuntimeError(f"{path}: safetensors wrote a header autofuse cannot sign")
        digest = _digest(f, header, _PLACEHOLDER)
        f.seek(8 + at + len(f'"{CHECKSUM_KEY}":"'))  # the placeholder's first digit
        f.write(digest.encode())
    return digest


def recorded_checksum(path: str | os.PathLike[str]) -> str | None:
    """The sha256 recorded in the header of the safetensors file ``path`` (``None``: none
    recorded, or no readable header)."""
    with open(path, "rb") as f:
        header = _header(f, os.fstat(f.fileno()).st_size)
    return None if header is None else _recorded(header)


def _recorded(header: bytes) -> str | None:
    try:
        meta = json.loads(header).get("__metadata__") or {}
    except (ValueError, AttributeError):  # not JSON, or not an object: safetensors will say
        return None
    value = meta.get(CHECKSUM_KEY) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def checksum_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the bytes of the safetensors file ``path`` are not those autofuse wrote (its recorded
    sha256 does not match), or ``None`` (it matches, or nothing is recorded). Reads the file
    once, in 1 MiB blocks."""
    with open(path, "rb") as f:
        header = _header(f, os.fstat(f.fileno()).st_size)
        recorded = None if header is None else _recorded(header)
        if recorded is None:
            return None  # an older autofuse's file, or not safetensors: nothing to check
        if not _HEX.fullmatch(recorded) or recorded == _PLACEHOLDER:
            return f"damaged weights (its recorded sha256 {recorded[:16]!r} is not a digest)"
        found = _digest(f, header, recorded)
    if found != recorded:
        return (
            f"damaged weights (sha256 mismatch: {found[:16]} found, {recorded[:16]} recorded; "
            "its bytes changed after autofuse wrote it)"
        )
    return None


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``, checked against its recorded sha256 (each
    file hashed once per call).

    Raises:
        FileNotFoundError: there is no file at ``path`` (what that means is the caller's to say).
        DamagedFileError: the file cannot be read as safetensors (truncated, overwritten, ...),
            or its bytes are not those it was written with (``damaged weights (sha256
            mismatch ...)``).
    """
    path = Path(path)
    try:
        # safetensors first: a truncated or overwritten file is "unreadable" (its own checks of
        # the header and the data's length), a readable one with other bytes is "damaged"
        tensors = load_file(str(path))
        problem = checksum_problem(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # SafetensorError, OSError, ...: anything means the file is unusable
        raise DamagedFileError(path, f"unreadable weights ({first_line(e)})") from None
    if problem is not None:
        raise DamagedFileError(path, problem)
    return tensors


__all__ = ["CHECKSUM_KEY", "checksum_problem", "read_weights", "recorded_checksum", "save_weights"]
