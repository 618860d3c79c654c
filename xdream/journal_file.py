"""Reading a session's journal.jsonl: whole records in order, a torn tail dropped.

The server writes it (server/journal.py); replay, export, resume and the
simulated replay rig read it through here, so the reader lives in the core.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

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
        elif record is not None and bad is not None:
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
