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
from pathlib import Path

import numpy as np
from PIL import Image

from xdream import config as config_mod
from xdream.errors import SessionError

log = logging.getLogger(__name__)


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
