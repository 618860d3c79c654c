"""The session folder and its append-only journal.

    SESSION/
      config.json         the resolved config, seeds included
      journal.jsonl       one JSON record a line: blocks, presentations, reports,
                          counts, scores, peer events, errors (append-only)
      codes/              latent codes of every generation: genNNN_THREAD.npz (ids, codes)
      checkpoint.npz      what a resume needs after the last finished generation:
                          optimizer states, the scheduler's rng and counters
      best/               PNG of each generation's best image per thread
      references/         the reference images as shown
      summary.json        one record per generation per thread
      server.lock         held (an OS file lock) by the one server writing the
                          folder; it holds that server's PID

One server per folder: the lock is taken before anything is written (a new
folder, or a resume's repair of a torn tail), held until `close`, and a second
server is refused with the PID of the holder.  The OS drops the lock when the
process dies, so a SIGKILLed server never leaves a stale one.

A write the disk refuses (ENOSPC, EIO) raises `JournalWriteError`: the record
is not acknowledged (the server journals before it ACKs), the session stops,
and `xdream serve --resume` continues it once there is space.

Durability (docs/journal.md): the server fsyncs the journal before it
acknowledges a report and before it sends a block; codes, the checkpoint and
summary.json are written to a temp file, fsynced, renamed, and the folder
fsynced.  PNGs are written by a background thread, off the hot path, and not
fsynced: they can be made again from the codes.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from server import faults
from xdream.files import fsync_dir, fsync_file, write_atomic
from xdream.session_reader import codes_path
from xdream.journal_file import JOURNAL, JournalRead, read_journal, read_records  # noqa: F401 (re-exported)
from xdream import config as config_mod
from xdream.errors import SessionError

log = logging.getLogger(__name__)

LOCK = "server.lock"


class JournalWriteError(SessionError):
    """The disk refused a journal write or fsync (full, or failing): the session stops."""


class FolderLock:
    """An exclusive OS lock on SESSION/server.lock, held for the server's life.

    fcntl.flock on POSIX (per open file: a second server in the same process is
    refused too), msvcrt.locking on Windows.  The file holds the holder's PID, so
    that the refusal can name it; the lock, not the file, is what counts."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(fd)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
                raise SessionError(f"cannot lock the session folder ({self.path}): {exc}") from None
            who = f"process {holder}" if holder else "another process"
            raise SessionError(f"session folder {self.path.parent} is in use by another server "
                               f"({who} holds {self.path}); one server per session folder: stop that "
                               f"one first") from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)   # no stale PID for a reader; the lock goes with the close
        except OSError:
            pass
        os.close(fd)


def _lock_fd(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)   # type: ignore[attr-defined]
    else:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


class Journal:
    """The session folder; `resume=True` reopens an existing one to append to it."""

    def __init__(self, folder: Path, *, resume: bool = False):
        self.folder = Path(folder)
        self.summary: list[dict] = []
        self.recovered: JournalRead | None = None
        self.fsyncs = 0            # how many: the cost of durability (benchmarks/journal.py)
        self.lock = FolderLock(self.folder)
        self._dirty = False
        self.failed: JournalWriteError | None = None   # the disk refused a write: nothing more is written
        if resume:
            if not (self.folder / JOURNAL).is_file():
                raise SessionError(f"{self.folder}: no {JOURNAL}; not a session folder")
            self.lock.acquire()     # before the repair below: a second server writes nothing
            try:
                self._reopen()
            except BaseException:
                self.lock.release()
                raise
        else:
            try:
                self.folder.mkdir(parents=True, exist_ok=False)
            except FileExistsError:
                raise SessionError(f"session folder {self.folder} exists already; sessions are never "
                                   f"overwritten (to continue one: xdream serve --resume {self.folder})") from None
            self.lock.acquire()
            for sub in ("codes", "best", "references"):
                (self.folder / sub).mkdir()
            self._file = open(self.folder / JOURNAL, "ab")
            self._seq = 0
            fsync_dir(self.folder)          # the journal's name is durable too
            fsync_dir(self.folder.parent)
        self._archive = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive")

    def _reopen(self) -> None:
        read = read_journal(self.folder)
        if not read.records:
            raise SessionError(f"{self.folder / JOURNAL} holds no whole record: nothing to resume")
        self.recovered = read
        path = self.folder / JOURNAL
        if read.dropped_bytes:
            with open(path, "r+b") as f:   # cut the torn tail; a record below says so
                f.truncate(read.good_bytes)
            fsync_file(path)
        self._file = open(path, "ab")
        if read.needs_newline:
            self._file.write(b"\n")
        self._seq = read.records[-1]["seq"] + 1
        summary = self.folder / "summary.json"
        if summary.is_file():
            self.summary = json.loads(summary.read_text())
        if read.dropped_bytes:
            self.write("journal_recovered", dropped_bytes=read.dropped_bytes, kept_records=len(read.records),
                       last_seq=read.records[-1]["seq"])
            self.sync()

    def write(self, kind: str, **fields) -> None:
        """Append one record and flush it to the OS; `sync` makes it durable.

        A record JSON cannot hold as it is (a peer's header with bytes or NaN map keys,
        say) is written through `safe_json` instead: the journal never refuses a record."""
        record = {"seq": self._seq, "t": time.time(), "kind": kind, **fields}
        try:
            text = json.dumps(nan_to_null(record), default=_jsonable, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            log.warning("journal record %r held what JSON cannot (%s): written in its safe form", kind, exc)
            text = json.dumps(safe_json(record), allow_nan=False)
        line = (text + "\n").encode()
        if kind in ("shown", "counts") and faults.due("write"):   # test only: a report torn mid-write
            self._file.write(line[:len(line) // 2])
            self._file.flush()
            os.fsync(self._file.fileno())
            faults.die("write")
        self._append(line, kind)

    def _append(self, line: bytes, kind: str) -> None:
        """Write one encoded record whole, or raise JournalWriteError and write nothing more.

        A short or failed write may leave part of the line in the file: it is a torn
        tail, which the next reader drops (and a resume cuts), so seq stays gapless."""
        if self.failed is not None:
            raise self.failed
        try:
            if kind in ("shown", "counts") and faults.due("enospc"):   # test only: the disk fills here
                faults.fill_disk()
            faults.disk()
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            raise self._fail(f"writing a {kind!r} record", exc) from None
        self._seq += 1
        self._dirty = True

    def _fail(self, doing: str, exc: OSError) -> JournalWriteError:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        self.failed = JournalWriteError(
            f"the journal {self.folder / JOURNAL} could not be written ({doing}: {why}); the session "
            f"stops here, with every acknowledged report on disk. Free space, then continue it: "
            f"xdream serve --resume {self.folder}")
        log.error("%s", self.failed)
        return self.failed

    def sync(self) -> None:
        """fsync the journal if anything was written since the last sync."""
        if self.failed is not None:
            raise self.failed
        if not self._dirty:
            return
        try:
            faults.disk()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise self._fail("fsync", exc) from None
        self.fsyncs += 1
        self._dirty = False

    def save_config(self, cfg) -> None:
        path = self.folder / "config.json"
        config_mod.save_json(cfg, path)
        fsync_file(path)

    def save_codes(self, generation: int, thread: str, ids: list[str], codes: np.ndarray) -> Path:
        path = codes_path(self.folder, generation, thread)
        self._atomic(path, lambda f: np.savez(f, ids=np.array(ids), codes=codes))
        return path

    def save_checkpoint(self, arrays: dict[str, np.ndarray]) -> Path:
        """Everything a resume needs after a generation, replacing the last one atomically."""
        path = self.folder / CHECKPOINT
        self._atomic(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]  # numpy stubs: savez(**arrays)
        return path

    def load_checkpoint(self) -> dict[str, np.ndarray] | None:
        """The checkpoint's arrays, None if there is no file; SessionError naming the
        file if it cannot be read (truncated, not an npz, edited)."""
        path = self.folder / CHECKPOINT
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise SessionError(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); it is "
                               f"not a checkpoint this server wrote, or it was damaged") from None

    def save_image_later(self, relpath: str, pixels: np.ndarray) -> Path:
        """PNG-encode off the hot path (250-400 ms a generation if done inline)."""
        path = self.folder / relpath
        self._archive.submit(_save_png, path, np.array(pixels, copy=True))
        return path

    def add_summary(self, record: dict) -> None:
        self.summary.append(record)
        text = json.dumps(nan_to_null(self.summary), indent=1, default=_jsonable, allow_nan=False) + "\n"
        self._atomic(self.folder / "summary.json", lambda f: f.write(text.encode()))

    def _atomic(self, path: Path, write) -> None:
        if self.failed is not None:
            raise self.failed
        try:
            write_atomic(path, write)
        except OSError as exc:   # ENOSPC on codes, checkpoint or summary: as for the journal
            raise self._fail(f"writing {path.name}", exc) from None
        self.fsyncs += 2   # the file and its folder

    def close(self) -> None:
        """Flush the archive, fsync, close, and release the folder's lock (always)."""
        try:
            self._archive.shutdown(wait=True)
            if self.failed is None:
                self.sync()
        finally:
            try:
                self._file.close()
            except OSError:   # the buffered tail of a failed write: already reported
                pass
            self.lock.release()


CHECKPOINT = "checkpoint.npz"


def _save_png(path: Path, pixels: np.ndarray) -> None:
    try:
        Image.fromarray(pixels).save(path)
    except Exception:  # an archive write must not take the session down
        log.exception("could not write %s", path)


def nan_to_null(value):
    """NaN and inf become null: JSON has no NaN, and a reader must see 'not measured'."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_null(v) for v in value]
    if isinstance(value, np.floating):
        return nan_to_null(float(value))
    return value


SAFE_MAX_ITEMS = 64       # items of one list or map kept by safe_json
SAFE_MAX_CHARS = 256      # characters of one string (or key) kept by safe_json
SAFE_MAX_DEPTH = 8


def safe_json(value, depth: int = 0):
    """Anything from the network as JSON that cannot fail and stays small.

    Keys become strings (repr of what is not one), NaN and inf become the strings
    "nan" / "inf" / "-inf" (a rejected header is evidence, not a measurement),
    bytes become a short summary, long strings and lists are cut with a marker
    saying how much was left off, and nesting is cut at SAFE_MAX_DEPTH."""
    if value is None or isinstance(value, (bool, int)) and abs(value) < 1 << 63:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return safe_json(value.item(), depth)
    if isinstance(value, str):
        if len(value) <= SAFE_MAX_CHARS:
            return value
        return value[:SAFE_MAX_CHARS] + f"...(+{len(value) - SAFE_MAX_CHARS} chars)"
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value[:16])
        return f"<{len(value)} bytes: {raw.hex()}{'...' if len(value) > 16 else ''}>"
    if depth >= SAFE_MAX_DEPTH:
        return f"<{type(value).__name__} nested deeper than {SAFE_MAX_DEPTH}>"
    if isinstance(value, dict):
        out = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= SAFE_MAX_ITEMS:
                out["..."] = f"{len(value) - SAFE_MAX_ITEMS} more keys"
                break
            key = k if isinstance(k, str) else repr(k)
            out[safe_json(key, depth + 1)] = safe_json(v, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        items = [safe_json(v, depth + 1) for v in value[:SAFE_MAX_ITEMS]]
        if len(value) > SAFE_MAX_ITEMS:
            items.append(f"...(+{len(value) - SAFE_MAX_ITEMS} items)")
        return items
    return safe_json(repr(value), depth)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return nan_to_null(value.tolist())
    return str(value)
