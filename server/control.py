"""Pause, resume and stop: who holds the session, journaled (docs/journal.md, "Controls").

A pause is held by a source: the operator (the status socket's `pause`, from a
dashboard) or a presenter (its pause key, sent as PAUSED).  The session is
paused while any source holds it: no new block or re-queue is sent and the
block timer stands still.  `stop` asks the session to end after the
generation in flight (the operator's pause is lifted so that it can finish);
the session then ends as "stopped: ..." and can be resumed later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

OPERATOR = "operator"


class SessionControl:
    def __init__(self, journal: Callable[..., None], publish: Callable[..., None]):
        self._journal = journal      # journal.write
        self._publish = publish      # status.emit
        self.holds: dict[str, str] = {}   # source -> who
        self.stop_by: str | None = None
        self.paused_s = 0.0               # time spent paused, all sources together
        self._since: float | None = None

    @property
    def paused(self) -> bool:
        return bool(self.holds)

    @property
    def state(self) -> str:
        return "stopping" if self.stop_by is not None else "paused" if self.paused else "running"

    def pause(self, source: str, who: str, why: str = "") -> None:
        if source in self.holds:
            return
        if not self.holds:
            self._since = time.monotonic()
        self.holds[source] = who
        log.warning("paused by %s (%s)%s", source, who, f": {why}" if why else "")
        self._journal("paused", source=source, by=who, why=why)
        self._changed(source, who)

    def resume(self, source: str, who: str, why: str = "") -> None:
        if self.holds.pop(source, None) is None:
            return
        if not self.holds and self._since is not None:
            self.paused_s += time.monotonic() - self._since
            self._since = None
        log.warning("resumed by %s (%s)%s", source, who, f": {why}" if why else "")
        self._journal("resumed", source=source, by=who, why=why)
        self._changed(source, who)

    def stop(self, who: str) -> None:
        if self.stop_by is not None:
            return
        self.stop_by = who
        log.warning("stop requested by %s: the session ends after this generation", who)
        self._journal("stop_requested", by=who)
        self.resume(OPERATOR, who, "stop requested")
        self._changed(OPERATOR, who)

    def _changed(self, source: str, who: str) -> None:
        self._publish("control", state=self.state, holds=dict(self.holds), source=source, by=who)
