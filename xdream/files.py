"""File helpers every role shares: crash-safe writes, fsync, checksums, new names.

Every file that a reader must see whole or not at all goes through
`write_atomic` (or, when the caller writes the temporary file itself, as a
download does while it hashes, `publish`): session files (codes, checkpoint,
summary), converted weights, benchmark results, the rig's handshake files.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import BinaryIO
from collections.abc import Callable

CHUNK = 1 << 20   # sha256_file reads this much at a time: weights files run to hundreds of MB


def temp_path(path: Path) -> Path:
    """Where write_atomic writes `path` first: hidden (a dot name: a folder watcher, e.g. a
    rig polling for block files, skips it) and unique per process (two workers writing
    one result never write into one temp file)."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def write_atomic(path: Path, write: Callable[[BinaryIO], object], *, durable: bool = True) -> None:
    """`write(f)` into a temp file, then rename it over `path`: a reader sees the old
    file or the new one, never half of one; a failed write leaves no temp file.

    durable: fsync the file before the rename and the folder after it, so that after a
    power cut `path` is still the old file or the new one.  False for hand-off files
    whose reader needs only all-or-nothing (a rig's image files: an fsync each would
    cost the presenter's time, and a power cut ends the block anyway)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def publish(tmp: Path, path: Path) -> None:
    """Make a finished temp file (written and checked by the caller) `path`, durably:
    fsync it, rename it over `path` (atomic within one folder), fsync the folder."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def fsync_file(path: Path) -> None:
    """fsync a file written by other means (and its folder: its name is durable too)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    fsync_dir(Path(path).parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """The file's SHA-256 (hex), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def time_stamp(t: float | None = None) -> str:
    """Local time as the names of sessions and logs carry it: 20250131-142502."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(t))


def unused_path(folder: Path, stem: str, suffix: str = "") -> Path:
    """folder/STEM+SUFFIX, or folder/STEM-2+SUFFIX, -3, ... if taken: a second run started
    within the same second (same time stamp) never overwrites the first.  Only a name: the
    caller creates it, exclusively where two processes may race (mkdir, open 'x')."""
    folder = Path(folder)
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path
