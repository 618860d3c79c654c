"""File helpers every role shares: crash-safe writes and checksums."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20   # sha256_file reads this much at a time: weights files run to hundreds of MB


def write_atomic(path: Path, write) -> None:
    """Write to a temp file, fsync it, rename it over `path`, fsync the folder:
    after a crash `path` is the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    fsync_dir(path.parent)


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
