"""Aligner: the rig's recorded event codes -> the presentations the server sent.

The server's BLOCK_INFO lists each presentation's pid and event code in the
order they will be shown; codes run 1..255 and wrap, so a code is unique only
near its place in the sequence.  The aligner walks that sequence as codes
arrive, and survives what real rigs do:

- a code matching the next expected presentation: matched.
- a missing code: the code matches a presentation a few places ahead
  (`lookahead`).  That match is only tentative until the next code confirms it
  (it matches the presentation after), or `confirm_after_s` of rig time pass; the
  skipped presentations are then reported missing.  If instead the next code
  matches the presentation that was expected, the tentative one was an extra
  code and is dropped.
- an extra code (matches nothing near): held for a later BLOCK_INFO (a code may
  beat its block's info here, they come on different sockets); dropped with a
  warning once older than `early_code_max_age_s` of rig time, or when it would
  go back in time.
- a code that arrives twice (the same code as the last match, where the next
  expected code differs): dropped with a warning.
- a clock that jumps back: `reset_clock()` (the counter detects the jump);
  presentations matched but not yet final are reported missing.
- a code that never arrives: `expire(now)` reports the presentations still
  waiting for a code missing once `timeout_s` of wall time has passed since the
  later of their BLOCK_INFO and the last matched code (wall time, so that a rig
  stream that stopped altogether still ends them).  While the session is paused
  (`hold`: the server's PAUSE, feature "pause") no code is due: nothing expires,
  and the timeout counts afresh from the resume.

Photodiode (optional, `photodiode_max_lag_s` set): a matched presentation's
onset is the first photodiode crossing in [code time, code time + max lag].
With none there (no crossing, or only later ones: an outlier), the rule
`photodiode_miss` applies: "missing" (default: report it missing) or "code"
(keep the code time as onset).  Either way it is flagged: a warning and
`photodiode_outliers` counted.

Every dropped or unexpected code is logged and counted in `stats`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

log = logging.getLogger(__name__)


@dataclass
class Expected:
    block_id: int
    pid: str
    code: int
    since: float                   # wall time its BLOCK_INFO came
    # rig times: exact seconds (Fraction, tick / rate) from the counter, floats from older callers
    code_t: float | Fraction | None = None    # rig time of its code, once matched
    onset: float | Fraction | None = None     # rig time of its onset, once final
    flagged: bool = False          # the photodiode disagreed; onset kept at the code time

    @property
    def matched_at(self) -> float | Fraction:
        """The rig time of its code; only for a presentation the aligner has matched."""
        if self.code_t is None:
            raise RuntimeError(f"presentation {self.pid}: no event code matched yet")
        return self.code_t

    @property
    def final_onset(self) -> float | Fraction:
        """The rig time of its onset; only for a presentation `Aligner.resolve` returned."""
        if self.onset is None:
            raise RuntimeError(f"presentation {self.pid}: onset not final yet")
        return self.onset


class Aligner:
    def __init__(self, lookahead: int = 8, timeout_s: float = 30.0, confirm_after_s: float = 1.0,
                 early_code_max_age_s: float = 30.0, photodiode_max_lag_s: float | None = None,
                 photodiode_miss: str = "missing", clock=time.monotonic):
        if photodiode_miss not in ("missing", "code"):
            raise ValueError(f"photodiode_miss must be 'missing' or 'code', got {photodiode_miss!r}")
        self.lookahead = lookahead
        self.timeout_s = timeout_s
        self.confirm_after_s = confirm_after_s
        self.early_code_max_age_s = early_code_max_age_s
        self.photodiode_max_lag_s = photodiode_max_lag_s
        self.photodiode_miss = photodiode_miss
        self.clock = clock
        self._queue: deque[Expected] = deque()       # waiting for a code, in the order sent
        self._known: set[str] = set()
        self._tentative: tuple[float, int, int] | None = None   # (t, code, queue index) of a skip
        self._early: list[tuple[float, int]] = []     # codes that matched nothing (yet)
        self._matched: list[Expected] = []            # code seen, onset not final (photodiode)
        self._photodiode: list[float] = []
        self._last: tuple[float, int] | None = None   # (t, code) of the last match
        self._progress = clock()                      # wall time of the last match (or resume)
        self._held = False                            # the session is paused: no code is due
        self._missing: list[tuple[Expected, str]] = []
        self.stats = {"matched": 0, "missing_code": 0, "extra_code": 0, "duplicate_code": 0,
                      "timed_out": 0, "clock_jumps": 0, "photodiode_outliers": 0}

    # --- input -------------------------------------------------------------------------------
    def expect(self, block_id: int, presentations: list[tuple[str, int]]) -> None:
        """The server's BLOCK_INFO: pids and codes in presentation order (a resend is ignored)."""
        now = self.clock()
        for pid, code in presentations:
            if pid not in self._known:
                self._known.add(pid)
                self._queue.append(Expected(block_id, pid, code, now))
        early, self._early = self._early, []
        for t, code in early:
            self._on_code(t, code)

    def add_codes(self, codes: list[tuple[float, int]]) -> None:
        for t, code in codes:
            self._on_code(t, code)

    def add_photodiode(self, times: list[float]) -> None:
        self._photodiode.extend(times)

    def reset_clock(self) -> None:
        """The rig's clock went back: what was matched in the old clock cannot be counted."""
        self.stats["clock_jumps"] += 1
        for p in self._matched:
            self._missing.append((p, "the rig's clock jumped back before its window was complete"))
        self._matched = []
        if self._tentative is not None:
            self._drop_extra(self._tentative[0], self._tentative[1], "a skip not confirmed before the clock jump")
            self._tentative = None
        for t, code in self._early:
            self._drop_extra(t, code, "held across a clock jump")
        self._early, self._photodiode, self._last = [], [], None

    # --- output ------------------------------------------------------------------------------
    def resolve(self, watermark: float | Fraction | None) -> list[Expected]:
        """Presentations whose onset is now final (in order)."""
        if watermark is not None:
            if self._tentative is not None and watermark >= self._tentative[0] + self.confirm_after_s:
                self._confirm()
            old = [(t, c) for t, c in self._early if t < watermark - self.early_code_max_age_s]
            if old:
                self._early = [(t, c) for t, c in self._early if t >= watermark - self.early_code_max_age_s]
                for t, code in old:
                    self._drop_extra(t, code, "matches no presentation the server sent")
        done = []
        while self._matched:
            p = self._matched[0]
            if self.photodiode_max_lag_s is None:
                p.onset = p.code_t
            elif not self._photodiode_onset(p, watermark):
                break
            self._matched.pop(0)
            if p.onset is not None:
                done.append(p)
        return done

    def hold(self, paused: bool) -> None:
        """The session paused (no code is due) or resumed (the timeout counts from now)."""
        self._held = paused
        if not paused:
            self._progress = self.clock()

    def expire(self) -> None:
        """Presentations whose code did not come in time: missing."""
        if self._held:
            return
        now = self.clock()
        while self._queue and now - max(self._queue[0].since, self._progress) > self.timeout_s:
            p = self._queue.popleft()
            self.stats["timed_out"] += 1
            log.warning("presentation %s (code %d): no event code within %.0f s; missing",
                        p.pid, p.code, self.timeout_s)
            self._missing.append((p, f"no event code within {self.timeout_s:.0f} s"))
            if self._tentative is not None:
                t, code, j = self._tentative
                self._tentative = (t, code, j - 1)
                if j == 1:           # the tentative code now matches the head
                    self._tentative = None
                    self._match(t)

    def mark_missing(self, p: Expected, why: str) -> None:
        self._missing.append((p, why))

    @property
    def n_unresolved(self) -> int:
        """Presentations matched to a code whose onset is not final yet."""
        return len(self._matched)

    def take_missing(self) -> list[tuple[Expected, str]]:
        out, self._missing = self._missing, []
        return out

    def oldest_open_time(self) -> float | Fraction | None:
        """The earliest rig time still needed (a code or onset not final), for trimming buffers."""
        times = [p.matched_at for p in self._matched] + [t for t, _ in self._early]
        if self._tentative is not None:
            times.append(self._tentative[0])
        return min(times, default=None)

    # --- sequence matching -------------------------------------------------------------------
    def _on_code(self, t: float, code: int) -> None:
        if self._tentative is not None:
            t0, c0, j = self._tentative
            if j + 1 < len(self._queue) and self._queue[j + 1].code == code:
                self._confirm()             # the skip holds: this code follows it
            elif self._queue and self._queue[0].code == code:
                self._tentative = None      # the expected one came after all: that was an extra code
                self._drop_extra(t0, c0, "out of sequence")
            else:
                self._confirm()
        if self._last is not None and t < self._last[0]:
            self._drop_extra(t, code, "earlier than the last matched code")
            return
        head = self._queue[0] if self._queue else None
        if self._last is not None and code == self._last[1] and (head is None or head.code != code):
            self.stats["duplicate_code"] += 1
            log.warning("event code %d at %.4f s arrived twice (first at %.4f s); the repeat is ignored",
                        code, t, self._last[0])
            return
        for j, p in enumerate(itertools.islice(self._queue, self.lookahead + 1)):
            if p.code == code:
                if j == 0:
                    self._match(t)
                else:
                    self._tentative = (t, code, j)
                return
        self._early.append((t, code))

    def _confirm(self) -> None:
        if self._tentative is None:
            raise RuntimeError("aligner: no tentative skip to confirm")
        t, code, j = self._tentative
        self._tentative = None
        for _ in range(j):
            p = self._queue.popleft()
            self.stats["missing_code"] += 1
            log.warning("presentation %s: its event code %d never arrived (the rig recorded code %d next); "
                        "missing", p.pid, p.code, code)
            self._missing.append((p, f"event code {p.code} not recorded by the rig"))
        self._match(t)

    def _match(self, t: float) -> None:
        p = self._queue.popleft()
        p.code_t = t
        self._matched.append(p)
        self._last = (t, p.code)
        self._progress = self.clock()
        self.stats["matched"] += 1

    def _drop_extra(self, t: float, code: int, why: str) -> None:
        self.stats["extra_code"] += 1
        log.warning("event code %d at %.4f s dropped: %s", code, t, why)

    # --- photodiode --------------------------------------------------------------------------
    def _photodiode_onset(self, p: Expected, watermark: float | Fraction | None) -> bool:
        """Sets p.onset (or reports p missing); False while the answer is not known yet."""
        lag = self.photodiode_max_lag_s
        if lag is None:
            raise RuntimeError("aligner: photodiode onsets asked for without photodiode_max_lag_s")
        code_t = p.matched_at
        self._photodiode = [t for t in self._photodiode if t >= code_t]
        if self._photodiode and self._photodiode[0] <= code_t + lag:
            p.onset = self._photodiode.pop(0)
            return True
        if not self._photodiode and (watermark is None or watermark < code_t + lag):
            return False             # a crossing may still come
        self.stats["photodiode_outliers"] += 1
        later = f"the first at +{float(self._photodiode[0] - code_t) * 1000:.0f} ms" if self._photodiode else "none"
        if self.photodiode_miss == "code":
            p.onset, p.flagged = code_t, True
            log.warning("presentation %s: no photodiode crossing within %.0f ms of its code (%s); "
                        "onset kept at the code time", p.pid, lag * 1000, later)
        else:
            log.warning("presentation %s: no photodiode crossing within %.0f ms of its code (%s); missing",
                        p.pid, lag * 1000, later)
            self._missing.append((p, f"no photodiode crossing within {lag * 1000:.0f} ms of the code"))
        return True
