"""Spikes at given sample ticks, in place of the simulated neuron's Poisson draws.

`SimulatedRig(cfg, spikes=ScriptedSpikes(ticks, channels, rate))` keeps the
rig's screen tap and clock (an event code at each onset the presenter shows,
as a sample number of `rate`), but its spikes are exactly these, whatever is
on the screen: each goes out, as an integer tick, with the first poll whose
watermark passes it, as a real rig streams what it recorded.  For tests (the
exact-edge cases of tests/edges.py through the rig) and for a lab that wants
to replay a recorded spike train (sample numbers and channels, e.g. from an
.npz: `ScriptedSpikes.load`) against a presenter.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from recording_adapters.events import Rate, as_rate


class ScriptedSpikes:
    def __init__(self, ticks, channels, rate: Rate | int | str, n_channels: int | None = None):
        ticks = np.asarray(ticks)
        chans = np.asarray(channels)
        if ticks.shape != chans.shape or ticks.ndim != 1:
            raise ValueError(f"spike ticks {ticks.shape} and channels {chans.shape}: need two 1-d arrays "
                             "of one length")
        if len(ticks) and (ticks.dtype.kind not in "iu" or chans.dtype.kind not in "iu"):
            raise ValueError("spike ticks and channels must be integers (sample numbers, channel indices)")
        ticks, chans = ticks.astype(np.int64), chans.astype(np.int64)
        if len(ticks) and (ticks.min() < 0 or chans.min() < 0):
            raise ValueError("spike ticks and channels must be >= 0")
        top = int(chans.max()) + 1 if len(chans) else 1
        self.channels = top if n_channels is None else int(n_channels)
        if top > self.channels:
            raise ValueError(f"a spike on channel {top - 1}, but {self.channels} channels declared")
        self.rate: Fraction = as_rate(rate)
        order = np.argsort(ticks, kind="stable")
        self.ticks, self.chans = ticks[order], chans[order]
        self._next = 0          # spikes [0, _next) handed out

    @classmethod
    def load(cls, path: str | Path, n_channels: int | None = None) -> ScriptedSpikes:
        """An .npz with `ticks` (sample numbers), `channels` and `rate` (Hz)."""
        with np.load(path) as f:
            return cls(f["ticks"], f["channels"], f["rate"].item(), n_channels)

    def take(self, until: int) -> tuple[np.ndarray, np.ndarray]:
        """The spikes before tick `until` not handed out yet (sorted by tick)."""
        end = int(np.searchsorted(self.ticks, until, side="left"))
        start, self._next = self._next, max(self._next, end)
        return self.ticks[start:end], self.chans[start:end]

    @property
    def left(self) -> int:
        return len(self.ticks) - self._next
