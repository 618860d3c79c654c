"""What every rig source yields: event codes and spikes in the rig's clock.

Times are integer ticks (the rig's sample numbers) of `rate` Hz whenever the
rig gives sample numbers: Open Ephys, Intan, Blackrock, Plexon (rounded to
its timestamp clock), LSL (rounded to its declared tick rate), the simulated
rigs.  Windows are then half-open on ticks, with no float rounding at the
edges (docs/adapters.md, "The counter").  `rate` None means float seconds, a
form kept for sources written before ticks; the counter rounds those to the
nearest tick of its own declared rate (`SpikeCounter(float_rate_hz=...)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np

Time = float | Fraction   # a rig time in seconds: exact (tick / rate) in the counter, float elsewhere
Rate = Fraction   # ticks per second, exact (an Open Ephys stream says 30000.0; Fraction(30000.0) == 30000)


def exact(value: float | int | str | Fraction) -> Fraction:
    """A number as the exact rational its decimal spelling means: 0.05 -> 1/20, not the binary
    double nearest 0.05 (0.05000000000000000277...), which would move a window's edge by a tick."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, bool):
        raise TypeError(f"not a number: {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        return Fraction(repr(value))
    return Fraction(str(value))


def as_rate(value: float | int | str | Fraction) -> Rate:
    rate = exact(value)
    if rate <= 0:
        raise ValueError(f"a tick rate must be positive, got {value!r}")
    return rate


def round_ticks(seconds, rate: Rate) -> np.ndarray:
    """Float seconds -> the nearest tick of `rate` (ties upwards): the documented rule for sources
    that only have float seconds (LSL, Plexon's API).  For a time that was tick/rate this gives the
    tick back exactly below 2^51 ticks (the float error is < 2^-52 relative, far below half a tick)."""
    t = np.asarray(seconds, dtype=float)
    return np.floor(t * float(rate) + 0.5).astype(np.int64)


@dataclass
class RigEvents:
    codes: list[tuple] = field(default_factory=list)       # (time, event code)
    spike_times: np.ndarray = field(default_factory=lambda: np.empty(0))
    spike_channels: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=int))
    watermark: int | float | Fraction | None = None   # the rig has delivered every event before this time
    # times a photodiode crossed its threshold (rising), where the rig records one; optional
    photodiode: list = field(default_factory=list)
    rate: Rate | None = None   # set: every time above is an integer tick of this rate; None: float seconds

    @property
    def empty(self) -> bool:
        return not (self.codes or len(self.spike_times) or self.photodiode) and self.watermark is None

    def watermark_s(self) -> float | None:
        """The watermark in seconds of the rig clock, whichever unit the events are in."""
        if self.watermark is None:
            return None
        return float(Fraction(self.watermark) / self.rate) if self.rate is not None else float(self.watermark)

    def in_ticks(self, rate: Rate | float | int) -> RigEvents:
        """The same events with every time an integer tick of `rate`: unchanged if already so;
        float seconds, or ticks of another rate, rounded to the nearest tick (round_ticks)."""
        rate = as_rate(rate)
        if self.rate == rate:
            return self
        old = self.rate

        def scale(t):
            return round_ticks(np.asarray(t, dtype=float), rate) if old is None else _rescale(t, old, rate)

        codes = [(int(s), c) for s, (_, c) in zip(scale([t for t, _ in self.codes]), self.codes)]
        return RigEvents(codes, scale(self.spike_times), np.asarray(self.spike_channels, dtype=int),
                         None if self.watermark is None else int(scale([self.watermark])[0]),
                         [int(s) for s in scale(self.photodiode)], rate)

    def in_seconds(self) -> RigEvents:
        """Float seconds (for a peer that stamps seconds, for logs and for tests' readability)."""
        if self.rate is None:
            return self

        def sec(t):   # int / int is correctly rounded: 30060 / 30000 == 1.002, the literal
            return np.asarray(t, dtype=np.int64) * self.rate.denominator / self.rate.numerator

        return replace(self, codes=[(float(sec(t)), c) for t, c in self.codes], spike_times=sec(self.spike_times),
                       watermark=None if self.watermark is None else float(sec(self.watermark)),
                       photodiode=[float(sec(t)) for t in self.photodiode], rate=None)


def _rescale(ticks, old: Rate, new: Rate) -> np.ndarray:
    """Ticks of `old` -> the nearest ticks of `new`, in exact integer arithmetic."""
    num, den = new.numerator * old.denominator, new.denominator * old.numerator
    t = np.asarray(ticks, dtype=object) if len(np.atleast_1d(ticks)) else np.empty(0, dtype=object)
    return np.array([(2 * int(x) * num + den) // (2 * den) for x in np.atleast_1d(t)], dtype=np.int64)
