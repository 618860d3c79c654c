"""Spike counts per presentation: the aligner finds each presentation's onset,
the counter counts spikes per channel in [onset+t0, onset+t1) and in a
baseline window (defaults 50-200 ms and 0-50 ms).

Counting is on integer ticks (the rig's sample numbers, RigEvents.rate): a
window [t0, t1) after an onset at tick n is the ticks [n + ceil(t0*rate),
n + ceil(t1*rate)), with t0, t1 and the rate exact rationals (50 ms at
30 kHz is 1500 ticks, not 0.05 s rounded to a double).  A spike on the
window's first tick is in, one on its end tick is out, at any onset and any
sample number.  Float-second sources (rate None) are rounded to the nearest
tick of `float_rate_hz` first (recording_adapters/events.py, round_ticks).
The aligner sees exact rational seconds (tick / rate), so its own rules in
seconds need no change and lose nothing.

For other uses of the same windows (per-presentation spike times):
`window_ticks`, `count_in` and `offsets_in` below, and
`SpikeCounter.offsets(onset_tick, span_s)`.

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
from fractions import Fraction

import numpy as np

from recording_adapters.aligner import Aligner, Expected
from recording_adapters.events import Rate, RigEvents, Time, as_rate, exact
from recording_adapters.spike_times import ticks_to_us
from xdream import protocol

log = logging.getLogger(__name__)

FLOAT_RATE_HZ = 1_000_000   # float-second sources are rounded to the nearest microsecond


def window_ticks(window_s, rate: Rate) -> tuple[int, int]:
    """[t0, t1) seconds after an onset -> [a, b) tick offsets: tick onset+k is in iff a <= k < b,
    exactly as onset/rate + t0 <= (onset+k)/rate < onset/rate + t1 in rational arithmetic."""
    t0, t1 = (exact(x) for x in window_s)
    return math.ceil(t0 * rate), math.ceil(t1 * rate)


def count_in(ticks: np.ndarray, channels: np.ndarray, n_channels: int, start: int, end: int) -> np.ndarray:
    """Spikes per channel with start <= tick < end (integers: no edge is rounded)."""
    inside = (ticks >= start) & (ticks < end)
    return np.bincount(channels[inside], minlength=n_channels)


def offsets_in(ticks: np.ndarray, channels: np.ndarray, n_channels: int, onset: int, start: int,
               end: int) -> list[np.ndarray]:
    """Per channel, the sorted tick offsets (tick - onset) of the spikes with start <= tick < end:
    what a per-presentation raster needs (divide by the rate for seconds at the last step)."""
    inside = (ticks >= start) & (ticks < end)
    rel, ch = ticks[inside] - onset, channels[inside]
    return [np.sort(rel[ch == c]) for c in range(n_channels)]


class SpikeCounter:
    def __init__(self, n_channels: int, window_s=(0.05, 0.2), baseline_s=(0.0, 0.05), *,
                 timeout_s: float = 30.0, jump_tolerance_s: float = 0.001, clock=time.monotonic,
                 float_rate_hz: float = FLOAT_RATE_HZ, spike_span_s=None, **aligner):
        self.n_channels = n_channels
        self.window_s = tuple(exact(x) for x in window_s)     # exact: 0.05 is 1/20
        self.baseline_s = tuple(exact(x) for x in baseline_s)
        # spike times reported in [onset+start, onset+end) besides the counts (spike_times.py); None: none
        self.spike_span_s = tuple(exact(x) for x in spike_span_s) if spike_span_s else None
        self._spans = [self.window_s, self.baseline_s] + ([self.spike_span_s] if self.spike_span_s else [])
        self.float_rate = as_rate(float_rate_hz)
        self.rate: Rate | None = None                         # the ticks' rate, from the first timed events
        self.timeout_s = timeout_s
        self.jump_tolerance_s = jump_tolerance_s
        self.clock = clock
        self.aligner = Aligner(timeout_s=timeout_s, clock=clock, **aligner)
        self._open: list[tuple[Expected, float]] = []   # (onset final, wall time it was), window filling
        self._times = np.empty(0, dtype=np.int64)   # spike ticks
        self._channels = np.empty(0, dtype=int)
        self._latest_any: Time = -math.inf              # the latest code or watermark: no code comes before it
        self._latest_mark: Time = -math.inf             # the latest watermark: no watermark comes before it
        self.dropped_spikes = 0

    @property
    def unmatched_codes(self) -> int:
        return self.aligner.stats["extra_code"]

    def hold(self, paused: bool) -> None:
        """The session paused or resumed: no event code is due meanwhile (Aligner.hold)."""
        self.aligner.hold(paused)

    def expect(self, block_id: int, presentations: list[tuple[str, int]]) -> None:
        """The server's BLOCK_INFO: pids and their event codes, in presentation order."""
        self.aligner.expect(block_id, presentations)

    def add(self, events: RigEvents) -> list[protocol.Counts]:
        ticked = self._ticks(events)
        return self._add(ticked) if ticked is not None else self._add_nothing()

    def _ticks(self, events: RigEvents) -> RigEvents | None:
        """The events in integer ticks of the counter's rate, or None when they carry no time."""
        if events.empty:
            return None
        if events.rate is None:
            events = events.in_ticks(self.rate or self.float_rate)
        elif self.rate is not None and events.rate != self.rate:
            log.warning("the rig's tick rate changed from %s to %s Hz: counting restarts in the new clock",
                        self.rate, events.rate)
            self._clock_jump(-math.inf)
        self.rate = events.rate
        return events

    def _add_nothing(self) -> list[protocol.Counts]:
        now = self.clock()
        self.aligner.expire()
        out = self._stalled(now)
        return out + [protocol.Counts(p.block_id, p.pid, "missing") for p, _ in self.aligner.take_missing()]

    def _seconds(self, tick) -> Fraction:
        assert self.rate is not None
        return Fraction(int(tick)) / self.rate

    def _add(self, ticked: RigEvents) -> list[protocol.Counts]:
        # the aligner and the rules in seconds see exact rationals; spikes stay integer ticks
        events = RigEvents([(self._seconds(t), c) for t, c in ticked.codes], ticked.spike_times,
                           ticked.spike_channels,
                           None if ticked.watermark is None else self._seconds(ticked.watermark),
                           [self._seconds(t) for t in ticked.photodiode], ticked.rate)
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
        ticks = np.asarray(events.spike_times)
        if ticks.dtype.kind not in "iu":
            if not np.all(ticks == np.round(ticks)):
                raise ValueError("RigEvents with a rate carry integer ticks; got fractional spike times")
            ticks = ticks.astype(np.int64)
        self._times = np.concatenate([self._times, ticks.astype(np.int64)[~bad]])
        self._channels = np.concatenate([self._channels, chans[~bad].astype(int)])

    def _jump_in(self, events: RigEvents) -> Time | None:
        """The earliest time in `events` that goes back beyond the tolerance, if any."""
        first_code = min((t for t, _ in events.codes), default=None)
        back = [t for t, floor in ((first_code, self._latest_any), (events.watermark, self._latest_mark))
                if t is not None and t < floor - self.jump_tolerance_s]
        return min(back, default=None)

    def _clock_jump(self, t: Time) -> None:
        log.warning("the rig's clock jumped back from %.4f s to %.4f s: %d presentations whose windows were "
                    "open are missing", self._latest_any, t, len(self._open) + self.aligner.n_unresolved)
        for p, _ in self._open:
            self.aligner.mark_missing(p, "the rig's clock jumped back before its window was complete")
        self._open = []
        self.aligner.reset_clock()
        self._times, self._channels = np.empty(0, dtype=np.int64), np.empty(0, dtype=int)
        self._latest_any = self._latest_mark = -math.inf

    def _complete(self, watermark: Time) -> list[protocol.Counts]:
        end = max(span[1] for span in self._spans)
        done = [p for p, _ in self._open if p.final_onset + end <= watermark]
        if not done:
            return []
        self._open = [(p, t) for p, t in self._open if p.final_onset + end > watermark]
        return [protocol.Counts(p.block_id, p.pid, "ok", self._count(p.final_onset, self.window_s),
                                self._count(p.final_onset, self.baseline_s), float(p.final_onset),
                                self._spike_times(p.final_onset)) for p in done]

    def _spike_times(self, onset_s: Fraction | float) -> list[list[int]]:
        """Per channel, the spikes in the spike-time span as whole microseconds from onset
        (rounded down: those inside a counting window number exactly its count)."""
        if self.spike_span_s is None:
            return []
        assert self.rate is not None
        return [ticks_to_us(o, self.rate) for o in self.offsets(self.onset_tick(onset_s), self.spike_span_s)]

    def _stalled(self, now: float) -> list[protocol.Counts]:
        late = [p for p, t in self._open if now - t > self.timeout_s]
        if not late:
            return []
        self._open = [(p, t) for p, t in self._open if now - t <= self.timeout_s]
        log.warning("the rig's stream stopped (rig time %.3f s): %d presentations whose windows did not "
                    "complete within %.0f s are missing", max(self._latest_mark, 0.0), len(late), self.timeout_s)
        return [protocol.Counts(p.block_id, p.pid, "missing") for p in late]

    def _trim(self, watermark: Time | None) -> None:
        # spikes older than every window still open (or still to open) can go
        start = min(span[0] for span in self._spans)
        needed = [p.final_onset for p, _ in self._open]
        oldest = self.aligner.oldest_open_time()
        if oldest is not None:
            needed.append(oldest)
        if watermark is not None:
            needed.append(watermark)
        if not needed or self.rate is None:
            return
        keep = self._times >= math.floor((min(needed) + start) * self.rate)
        self._times, self._channels = self._times[keep], self._channels[keep]

    def onset_tick(self, onset_s: Fraction | float) -> int:
        """An onset the aligner returned (exact seconds) as the rig's tick."""
        assert self.rate is not None
        tick = Fraction(onset_s) * self.rate
        if tick.denominator != 1:
            raise RuntimeError(f"onset {onset_s} s is not a tick of {self.rate} Hz")
        return int(tick)

    def offsets(self, onset_tick: int, span_s) -> list[np.ndarray]:
        """Per channel, the tick offsets from the onset of the spikes kept in [onset+span[0],
        onset+span[1]) (for per-presentation spike times; call before the spikes are trimmed,
        i.e. for a presentation `add` is completing)."""
        assert self.rate is not None
        a, b = window_ticks(span_s, self.rate)
        return offsets_in(self._times, self._channels, self.n_channels, onset_tick, onset_tick + a, onset_tick + b)

    def _count(self, onset_s: Fraction | float, window) -> list[float]:
        assert self.rate is not None
        onset = self.onset_tick(onset_s)
        a, b = window_ticks(window, self.rate)
        return count_in(self._times, self._channels, self.n_channels, onset + a, onset + b).astype(float).tolist()
