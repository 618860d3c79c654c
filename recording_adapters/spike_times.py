"""Each presentation's spike times around its onset, per channel, for PSTHs and latencies.

Takes what the counter takes for a presentation (recording_adapters/counting.py):
the buffered spikes (times, channels) in the rig's clock, the presentation's onset
in that clock and a span [start, end) relative to the onset, half-open like the
counting windows. Returns, per channel, the spikes' offsets from the onset in
integer microseconds, ascending: compact on the wire (msgpack writes an offset
below 65536 us in 3 bytes, others in 5) and exact in the JSON journal.

Offsets are rounded down (floor), never to the nearest: for a window whose edges
are whole microseconds (the config's are milliseconds), x >= a and x < b hold
exactly when floor(x) >= a and floor(x) < b, so the offsets that fall in a
counting window number exactly that window's count. Rounding to the nearest
moved a spike 0.4 us before a window's start into the window (2 in 200,000
random spikes on 384 channels: tests/test_spike_times.py).

Times may be float seconds or integer sample numbers: `per_second` is the number
of time units in a second (1.0 for seconds, the sample rate for samples). Which
spikes fall in the span is decided in those units, and integer samples at an
integer rate are converted with integer arithmetic (no float error at an edge).
"""

from __future__ import annotations

import numpy as np

US_PER_S = 1_000_000


def span_inside(times: np.ndarray, onset, span) -> np.ndarray:
    """Which of `times` lie in [onset + span[0], onset + span[1])."""
    return (times >= onset + span[0]) & (times < onset + span[1])


def offsets_us(times: np.ndarray, channels: np.ndarray, onset, span, n_channels: int,
               per_second: float = 1.0) -> list[list[int]]:
    """Per channel 0..n_channels-1, the offsets from `onset` (integer us, ascending) of the
    spikes in [onset + span[0], onset + span[1]); `times`, `onset` and `span` in one unit."""
    times = np.asarray(times)
    inside = span_inside(times, onset, span)
    t = times[inside]
    ch = np.asarray(channels)[inside]
    order = np.lexsort((t, ch))                       # by channel, then time
    t, ch = t[order], ch[order]
    us = _floor_us(t - onset, per_second)
    bounds = np.searchsorted(ch, np.arange(n_channels + 1))
    flat = us.tolist()                                # one conversion to Python ints, then slices
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def ticks_to_us(offsets: np.ndarray, rate) -> list[int]:
    """Tick offsets (integers) at `rate` (an exact Fraction, ticks per second) as whole
    microseconds, rounded down, exactly: a tick at or after a window edge that is a whole
    microsecond stays at or after it."""
    num, den = rate.numerator, rate.denominator
    if den == 1:                       # whole-Hz rates (every rig here): int64 cannot overflow
        return (np.asarray(offsets, dtype=np.int64) * US_PER_S // num).tolist()
    return [int(k) * US_PER_S * den // num for k in np.asarray(offsets).tolist()]


def _floor_us(offsets: np.ndarray, per_second: float) -> np.ndarray:
    if offsets.dtype.kind in "iu" and float(per_second).is_integer():
        return offsets.astype(np.int64) * US_PER_S // int(per_second)    # floor division: exact
    if per_second == 1.0:
        return np.floor(offsets * US_PER_S).astype(np.int64)
    return np.floor(offsets * US_PER_S / per_second).astype(np.int64)


def count_in(offsets: list[list[int]], window_us) -> list[int]:
    """Per channel, how many offsets lie in [window_us[0], window_us[1]): the count a span
    that holds the window implies (for checks and readers; the counter counts on its own)."""
    lo, hi = window_us
    return [int(np.count_nonzero((np.asarray(o) >= lo) & (np.asarray(o) < hi))) if o else 0 for o in offsets]
