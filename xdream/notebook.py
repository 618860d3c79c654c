"""A session folder for a notebook: `from xdream import load_session`.

    s = load_session("sessions/dry-run-20261203-081002")
    s.tables.presentations    # pandas DataFrame: one row per presentation (xdream/session_tables.py)
    s.tables.generations      # one row per generation and thread
    s.tables.threads          # one row per thread
    s.tables.references       # each reference image's response per generation and channel (drift)
    s.best_image("a")         # RGB uint8 array: the thread's best image (best/best_a.png)
    s.best_images("a")        # {generation: RGB array}: each generation's best (best/genNNN_a.png)
    s.reference_images()      # {"ref/NAME": RGB array}, as shown
    s.codes(3, "a")           # (ids, codes) of generation 3

`Session` is the reader's SessionRecord (xdream/session_reader.py: the folded journal,
`s.presentations`, `s.scores`, `s.cfg`, `s.records`) with tables and images added, so
nothing is read twice.  Images the session did not save (any generated image but each
generation's best) are made again from the codes by the session's own generator, which
lives in the server layer: `server.regenerate.Regenerator(s).images(generation)`.

pandas is imported only when a table is first asked for (it comes with the `export` and
`notebook` extras); `s.rows` gives the same tables as lists of dicts without it.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path

import numpy as np

from xdream import session_reader
from xdream.errors import SessionError
from xdream.session_tables import Tables, tables

TABLES = ("presentations", "generations", "threads", "references")


@dataclasses.dataclass
class SessionTables:
    """The session's tables as pandas DataFrames."""
    presentations: object
    generations: object
    threads: object
    references: object


@dataclasses.dataclass
class Session(session_reader.SessionRecord):
    @cached_property
    def rows(self) -> Tables:
        """The tables as lists of dicts (no pandas), with the export's extras (notes, spike times)."""
        return tables(self)

    @cached_property
    def tables(self) -> SessionTables:
        try:
            import pandas as pd
        except ImportError:
            raise SessionError("session tables as DataFrames need pandas: pip install 'xdream-lab[notebook]' "
                               "(or read s.rows, the same tables as lists of dicts)") from None
        rows = self.rows
        return SessionTables(**{name: pd.DataFrame(getattr(rows, name)) for name in TABLES})

    def best_image(self, thread: str) -> np.ndarray:
        """The thread's best image of the session, as the server saved it (best/best_THREAD.png)."""
        return _png(self.folder / "best" / f"best_{thread}.png")

    def best_images(self, thread: str) -> dict[int, np.ndarray]:
        """generation -> that generation's best image of the thread, for every one saved in best/.
        (PNGs are written off the hot path: after a crash the last ones may be absent; the
        report makes those again from the codes.)"""
        out = {}
        for g in self.generations:
            path = self.folder / "best" / f"gen{g:03d}_{thread}.png"
            if path.is_file():
                out[g] = _png(path)
        return out

    def reference_images(self) -> dict[str, np.ndarray]:
        """'ref/NAME' -> the reference image as shown (references/NAME.png)."""
        return {f"ref/{p.stem}": _png(p) for p in sorted((self.folder / "references").glob("*.png"))}


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise SessionError(f"{path} is missing")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_session(folder) -> Session:
    """Read a session folder (its journal folded by xdream.session_reader.load_session) for a notebook.
    Problems the reader found in the journal are in `.problems`."""
    record = session_reader.load_session(folder)
    return Session(**{f.name: getattr(record, f.name) for f in dataclasses.fields(record)})
