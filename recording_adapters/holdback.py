"""Hold each event code back until the stream is known whole through its window.

A stream can break: a dropped connection, corrupt bytes skipped, a stream that
vanishes.  Spikes lost in such a gap would make a presentation's count too
low, silently.  So an adapter passes its codes through a CodeHold: a code is
released only once the stream has run `hold_s` past it with no gap in
[t - before_s, t + hold_s); a code a gap cuts is dropped with a warning, its
presentation never gets its code, and the aligner reports it missing.  The
watermark handed on never passes a held code, so the counter keeps the
spikes that code will need.

hold_s must cover the counter's windows (default 50-200 ms, baseline 0-50 ms):
the default 0.3 s does; a lab with longer windows raises it.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)


class CodeHold:
    def __init__(self, hold_s: float = 0.3, before_s: float = 0.0, source: str = "rig",
                 rate: float | None = None):
        # with `rate`, times are the rig's ticks (sample numbers): the spans become whole ticks
        # (rounded up: never shorter than asked) and log lines still say seconds
        self.unit = float(rate) if rate else 1.0
        self.hold_s = math.ceil(hold_s * rate) if rate else float(hold_s)
        self.before_s = math.ceil(before_s * rate) if rate else float(before_s)
        self.source = source
        self._held: list[tuple[float, int]] = []
        self._gaps: list[tuple[float, float]] = []    # closed gaps still relevant to held codes
        self._open_gap: float | None = None          # start of a gap not yet over
        self.dropped = 0

    def add(self, codes) -> None:
        self._held.extend(codes)
        self._held.sort(key=lambda c: c[0])

    def open_gap(self, t0: float, why: str) -> None:
        """From rig time t0 on, data is lost until close_gap()."""
        if self._open_gap is None:
            self._open_gap = t0
            log.warning("%s: data lost from rig time %.4f s (%s); presentations whose windows "
                        "overlap the gap will be reported missing", self.source, t0 / self.unit, why)

    def close_gap(self, t1: float) -> None:
        if self._open_gap is not None:
            self._gaps.append((self._open_gap, t1))
            log.warning("%s: data whole again from rig time %.4f s", self.source, t1 / self.unit)
            self._open_gap = None

    def gap(self, t0: float, t1: float, why: str) -> None:
        """Data between rig times t0 and t1 is lost."""
        log.warning("%s: data lost between rig times %.4f and %.4f s (%s); presentations whose "
                    "windows overlap it will be reported missing", self.source, t0 / self.unit, t1 / self.unit, why)
        self._gaps.append((t0, t1))

    def release(self, stream_time: float) -> tuple[list[tuple[float, int]], float]:
        """Codes now safe to hand on, and the watermark to hand on with them."""
        out, keep = [], []
        for t, code in self._held:
            lo, hi = t - self.before_s, t + self.hold_s
            if self._cut(lo, hi):
                self._drop(t, code)
            elif hi <= stream_time and (self._open_gap is None or hi <= self._open_gap):
                out.append((t, code))
            else:
                keep.append((t, code))
        self._held = keep
        horizon = min([t for t, _ in keep] + [stream_time])
        if self._open_gap is not None:
            horizon = min(horizon, self._open_gap)
        self._gaps = [(a, b) for a, b in self._gaps if b > horizon - self.hold_s - self.before_s]
        return out, horizon

    def restart(self, old_end: float) -> list[tuple[float, int]]:
        """The rig's clock went back: release what the old stream completed, drop the rest."""
        out, _ = self.release(old_end)
        for t, code in self._held:
            self._drop(t, code, "the rig's clock went back before its window was complete")
        self._held, self._gaps, self._open_gap = [], [], None
        return out

    def _cut(self, lo: float, hi: float) -> bool:
        # a code under a gap still open waits: the gap's end decides.  A code right at a gap's
        # end is cut too: its onset may have been inside the gap.
        return any(a < hi and b >= lo for a, b in self._gaps)

    def _drop(self, t: float, code: int, why: str = "a gap in the stream cuts its window") -> None:
        self.dropped += 1
        log.warning("%s: event code %d at rig time %.4f s dropped: %s; its presentation will be "
                    "reported missing", self.source, code, t / self.unit, why)
