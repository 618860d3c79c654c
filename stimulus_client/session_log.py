"""The presenter's own log: one JSON object per line, one file per run.

Frame intervals and other per-frame detail go here rather than on the wire;
the server's journal gets the SHOWN reports.  Lines are buffered and written
at trial ends and while idle, never between two flips of a trial.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from xdream.files import time_stamp, unused_path


class SessionLog:
    def __init__(self, folder: str | Path, name: str):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = unused_path(folder, f"presenter-{time_stamp()}-{name}", ".jsonl")
        self.path = path
        self._file = path.open("x", encoding="utf-8")
        self._lines: list[str] = []

    def write(self, event: str, **fields) -> None:
        self._lines.append(json.dumps({"event": event, "t": time.time(), **fields}, default=_plain))

    def flush(self) -> None:
        if self._lines and not self._file.closed:
            self._file.write("\n".join(self._lines) + "\n")
            self._file.flush()
            self._lines.clear()

    def close(self) -> None:
        self.flush()
        self._file.close()


def _plain(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read(path: str | Path) -> list[dict]:
    """All records of a presenter log (for tests and analysis)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
