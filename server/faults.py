"""Test-only fault injection: XDREAM_FAULT=POINT:N makes the server SIGKILL
itself the N-th time (1-based) it reaches the named point.  Deterministic,
unlike a kill from outside on a timer.  Unset (always, outside the fault
test), `reach` is one dict lookup.

    ack          a report is on the journal (fsynced), its ACK not yet sent
    block_sent   a block has gone to the peers, no report back yet
    before_tell  a block is complete, its scores not yet journaled or told
    checkpoint   the optimizers have been told, the checkpoint not yet saved
    write        the N-th report record (shown or counts) is torn: half of it
                 written and fsynced, then killed (before its ACK, as a real
                 crash mid-write would be)
    enospc       not a kill: from the N-th report record on, every journal
                 write and fsync fails with ENOSPC (the disk is full and stays
                 full for this process), as a full disk would; the server must
                 stop cleanly without acknowledging that record
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

POINTS = ("ack", "block_sent", "before_tell", "checkpoint", "write", "enospc")


def _parse(spec: str) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, n = spec.partition(":")
    if name not in POINTS or not n.isdigit() or int(n) < 1:
        raise ValueError(f"XDREAM_FAULT={spec!r}: expected POINT:N with POINT one of {POINTS} and N >= 1")
    return name, int(n)


_target = _parse(os.environ.get("XDREAM_FAULT", ""))
_seen: dict[str, int] = {}
_disk_full = False


def configure(spec: str) -> None:
    """Set (or with '' clear) the fault in this process, as XDREAM_FAULT would: for in-process tests."""
    global _target, _disk_full
    _target = _parse(spec)
    _seen.clear()
    _disk_full = False


def fill_disk() -> None:
    global _disk_full
    log.warning("XDREAM_FAULT: the disk is full from here on (injected ENOSPC)")
    _disk_full = True


def disk() -> None:
    """Before each journal write and fsync: raise ENOSPC once the injected disk is full."""
    if _disk_full:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "journal.jsonl (XDREAM_FAULT=enospc)")


def due(point: str) -> bool:
    """Count one arrival at `point`; True if this is the one to die at."""
    if _target is None or _target[0] != point:
        return False
    _seen[point] = _seen.get(point, 0) + 1
    return _seen[point] == _target[1]


def reach(point: str) -> None:
    if due(point):
        die(point)


def die(point: str) -> None:
    print(f"XDREAM_FAULT: killing the server at {point}:{_target[1] if _target else '?'}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
