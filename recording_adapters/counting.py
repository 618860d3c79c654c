"""Spike counts per presentation: the aligner finds each presentation's onset,
the counter counts spikes per channel in [onset+t0, onset+t1) and in a
baseline window (defaults 50-200 ms and 0-50 ms).

Rules (docs/adapters.md, "The counter"):
- A presentation is counted once the rig's watermark has passed the end of
  both its windows (and of its spike-time span, when one is asked for:
  recording_adapters/spike_times.py), so a count is never taken from a window
  still filling.
- It is reported `missing` instead, never counted, when its code never arrives
  (the aligner's rules), when the rig's clock jumps back before its windows
  are complete, or when its windows are still incomplete `timeout_s` of wall
  time after its code was matched (the rig's stream stopped).  Wall time,
  because a stopped stream advances no rig time.
- A clock jump is seen as a watermark earlier than the latest watermark, or a
  code earlier than the latest code or watermark (minus `jump_tolerance_s`);
  the spikes kept so far are dropped.  A watermark may trail a code already
  delivered (the contract promises only that nothing before it is still to
  come): that is no jump.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from recording_adapters.aligner import Aligner, Expected
from recording_adapters.events import RigEvents
from recording_adapters.spike_times import offsets_us
from xdream import protocol

log = logging.getLogger(__name__)


class SpikeCounter:
    def __init__(self, n_channels: int, window_s=(0.05, 0.2), baseline_s=(0.0, 0.05), *,
                 timeout_s: float = 30.0, jump_tolerance_s: float = 0.001, clock=time.monotonic,
                 spike_span_s=None, **aligner):
        self.n_channels = n_channels
        self.window_s = tuple(window_s)
        self.baseline_s = tuple(baseline_s)
        # spike times reported in [onset+start, onset+end) besides the counts (spike_times.py); None: none
        self.spike_span_s = tuple(spike_span_s) if spike_span_s else None
        self._spans = [self.window_s, self.baseline_s] + ([self.spike_span_s] if self.spike_span_s else [])
        self.timeout_s = timeout_s
        self.jump_tolerance_s = jump_tolerance_s
        self.clock = clock
        self.aligner = Aligner(timeout_s=timeout_s, clock=clock, **aligner)
        self._open: list[tuple[Expected, float]] = []   # (onset final, wall time it was), window filling
        self._times = np.empty(0)
        self._channels = np.empty(0, dtype=int)
        self._latest_any = -math.inf                    # the latest code or watermark: no code comes before it
        self._latest_mark = -math.inf                   # the latest watermark: no watermark comes before it
        self.dropped_spikes = 0

    @property
    def unmatched_codes(self) -> int:
        return self.aligner.stats["extra_code"]

    def expect(self, block_id: int, presentations: list[tuple[str, int]]) -> None:
        """The server's BLOCK_INFO: pids and their event codes, in presentation order."""
        self.aligner.expect(block_id, presentations)

    def add(self, events: RigEvents) -> list[protocol.Counts]:
        jump = self._jump_in(events)
        if jump is not None:
            self._clock_jump(jump)
        marks = [t for t, _ in events.codes] + ([events.watermark] if events.watermark is not None else [])
        self._latest_any = max([self._latest_any, *marks])
        if events.watermark is not None:
            self._latest_mark = max(self._latest_mark, events.watermark)
        self.aligner.add_codes(events.codes)
        self.aligner.add_photodiode(events.photodiode)
        self._add_spikes(events)
        out: list[protocol.Counts] = []
        now = self.clock()
        self._open.extend((p, now) for p in self.aligner.resolve(events.watermark))
        if events.watermark is not None:
            out += self._complete(events.watermark)
        self.aligner.expire()
        out += self._stalled(now)
        out += [protocol.Counts(p.block_id, p.pid, "missing") for p, _ in self.aligner.take_missing()]
        self._trim(events.watermark)
        return out

    def _add_spikes(self, events: RigEvents) -> None:
        if not len(events.spike_times):
            return
        chans = np.asarray(events.spike_channels)
        bad = (chans < 0) | (chans >= self.n_channels)
        if bad.any():
            self.dropped_spikes += int(bad.sum())
            log.warning("dropped %d spikes on channels outside 0..%d", int(bad.sum()), self.n_channels - 1)
        self._times = np.concatenate([self._times, np.asarray(events.spike_times, dtype=float)[~bad]])
        self._channels = np.concatenate([self._channels, chans[~bad].astype(int)])

    def _jump_in(self, events: RigEvents) -> float | None:
        """The earliest time in `events` that goes back beyond the tolerance, if any."""
        first_code = min((t for t, _ in events.codes), default=None)
        back = [t for t, floor in ((first_code, self._latest_any), (events.watermark, self._latest_mark))
                if t is not None and t < floor - self.jump_tolerance_s]
        return min(back, default=None)

    def _clock_jump(self, t: float) -> None:
        log.warning("the rig's clock jumped back from %.4f s to %.4f s: %d presentations whose windows were "
                    "open are missing", self._latest_any, t, len(self._open) + self.aligner.n_unresolved)
        for p, _ in self._open:
            self.aligner.mark_missing(p, "the rig's clock jumped back before its window was complete")
        self._open = []
        self.aligner.reset_clock()
        self._times, self._channels = np.empty(0), np.empty(0, dtype=int)
        self._latest_any = self._latest_mark = -math.inf

    def _complete(self, watermark: float) -> list[protocol.Counts]:
        end = max(span[1] for span in self._spans)
        done = [p for p, _ in self._open if p.onset + end <= watermark]
        if not done:
            return []
        self._open = [(p, t) for p, t in self._open if p.onset + end > watermark]
        return [protocol.Counts(p.block_id, p.pid, "ok", self._count(p.final_onset, self.window_s),
                                self._count(p.final_onset, self.baseline_s), p.onset,
                                self._spike_times(p.final_onset)) for p in done]

    def _spike_times(self, onset: float) -> list[list[int]]:
        if self.spike_span_s is None:
            return []
        return offsets_us(self._times, self._channels, onset, self.spike_span_s, self.n_channels)

    def _stalled(self, now: float) -> list[protocol.Counts]:
        late = [p for p, t in self._open if now - t > self.timeout_s]
        if not late:
            return []
        self._open = [(p, t) for p, t in self._open if now - t <= self.timeout_s]
        log.warning("the rig's stream stopped (rig time %.3f s): %d presentations whose windows did not "
                    "complete within %.0f s are missing", max(self._latest_mark, 0.0), len(late), self.timeout_s)
        return [protocol.Counts(p.block_id, p.pid, "missing") for p in late]

    def _trim(self, watermark: float | None) -> None:
        # spikes older than every window still open (or still to open) can go
        start = min(span[0] for span in self._spans)
        needed = [p.final_onset for p, _ in self._open]
        oldest = self.aligner.oldest_open_time()
        if oldest is not None:
            needed.append(oldest)
        if watermark is not None:
            needed.append(watermark)
        if not needed:
            return
        keep = self._times >= min(needed) + start
        self._times, self._channels = self._times[keep], self._channels[keep]

    def _count(self, onset: float, window) -> list[float]:
        inside = (self._times >= onset + window[0]) & (self._times < onset + window[1])
        return np.bincount(self._channels[inside], minlength=self.n_channels).astype(float).tolist()
