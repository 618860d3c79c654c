"""The session folder and its append-only journal.

    SESSION/
      config.json         the resolved config, seeds included
      journal.jsonl       one JSON record a line: blocks, presentations, reports,
                          counts, scores, peer events, errors (append-only)
      codes/              latent codes of every generation, one .npy per thread
      best/               PNG of each generation's best image per thread
      references/         the reference images as shown
      summary.json        one record per generation per thread

Each journal line is flushed when written; what is fsynced when is the crash-
safety issue's to decide.  PNGs are written by a background thread, off the
hot path.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from xdream import config as config_mod
from xdream.errors import SessionError

log = logging.getLogger(__name__)


JOURNAL = "journal.jsonl"


@dataclass
class JournalRead:
    """What `read_journal` found: the whole records, and where they end."""
    records: list[dict]
    good_bytes: int        # the file's length up to the end of the last whole record
    dropped_bytes: int     # a torn tail after it (0 if none)
    needs_newline: bool    # the last whole record lacks its newline (torn right after it)


def read_records(folder) -> list[dict]:
    """The journal's records, in order.  A torn last record (the server died
    mid-write) is dropped with a log line saying how many bytes; a bad record
    with whole ones after it is corruption, and raises SessionError."""
    return read_journal(folder).records


def read_journal(folder) -> JournalRead:
    path = Path(folder) / JOURNAL
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SessionError(f"{path}: no journal (is {folder} a session folder?)") from None
    records: list[dict] = []
    pos = 0
    bad: tuple[int, str] | None = None   # (line number, why) of the first record that did not parse
    lineno = 0
    good_end = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos:end]
        nxt = len(data) if end < 0 else end + 1
        lineno += 1
        record, why = _parse(line)
        if record is not None and bad is None:
            expected = records[-1]["seq"] + 1 if records else 0
            if record.get("seq") != expected:
                raise SessionError(f"{path}, line {lineno}: record seq {record.get('seq')!r}, expected "
                                   f"{expected}: the journal was edited or two servers wrote to it")
            records.append(record)
            good_end = nxt
        elif record is not None:
            raise SessionError(f"{path}, line {bad[0]}: {bad[1]}, and whole records follow it: the journal "
                               f"is corrupt in the middle, not torn at its end; not reading it")
        elif bad is None and line.strip():
            bad = (lineno, why)
        pos = nxt
    dropped = len(data) - good_end
    if dropped:
        log.warning("%s: the last record is torn (the server stopped mid-write): dropped its %d bytes; "
                    "%d whole records kept, up to seq %d", path, dropped, len(records),
                    records[-1]["seq"] if records else -1)
    needs_newline = good_end > 0 and data[good_end - 1:good_end] != b"\n"
    return JournalRead(records, good_end, dropped, needs_newline)


def _parse(line: bytes) -> tuple[dict | None, str]:
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not a JSON record ({exc})"
    if not isinstance(record, dict) or "kind" not in record or not isinstance(record.get("seq"), int):
        return None, "not a journal record (no kind or seq)"
    return record, ""


class Journal:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise SessionError(f"session folder {self.folder} exists already; sessions are never overwritten") \
                from None
        for sub in ("codes", "best", "references"):
            (self.folder / sub).mkdir()
        self._file = open(self.folder / "journal.jsonl", "a", encoding="utf-8")
        self._seq = 0
        self._archive = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive")
        self.summary: list[dict] = []

    def write(self, kind: str, **fields) -> None:
        record = {"seq": self._seq, "t": time.time(), "kind": kind, **fields}
        self._seq += 1
        self._file.write(json.dumps(_clean(record), default=_jsonable, allow_nan=False) + "\n")
        self._file.flush()

    def save_config(self, cfg) -> None:
        config_mod.save_json(cfg, self.folder / "config.json")

    def save_codes(self, generation: int, thread: str, ids: list[str], codes: np.ndarray) -> Path:
        path = self.folder / "codes" / f"gen{generation:03d}_{thread}.npz"
        np.savez(path, ids=np.array(ids), codes=codes)
        return path

    def save_image_later(self, relpath: str, pixels: np.ndarray) -> Path:
        """PNG-encode off the hot path (250-400 ms a generation if done inline)."""
        path = self.folder / relpath
        self._archive.submit(_save_png, path, np.array(pixels, copy=True))
        return path

    def add_summary(self, record: dict) -> None:
        self.summary.append(record)
        tmp = self.folder / "summary.json.tmp"
        tmp.write_text(json.dumps(_clean(self.summary), indent=1, default=_jsonable, allow_nan=False) + "\n")
        os.replace(tmp, self.folder / "summary.json")

    def close(self) -> None:
        self._archive.shutdown(wait=True)
        self._file.close()


def _save_png(path: Path, pixels: np.ndarray) -> None:
    try:
        Image.fromarray(pixels).save(path)
    except Exception:  # an archive write must not take the session down
        log.exception("could not write %s", path)


def _clean(value):
    """NaN and inf become null: JSON has no NaN, and a reader must see 'not measured'."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.floating):
        return _clean(float(value))
    return value


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    return str(value)
