"""A thread's objective: what its score is, as an expression over the recorded channels.

    channel     the count on one channel (the thread's `channel`; XDream and the
                Ponce-lab code score this way)
    mean        the mean count over a set of channels (a population of units)
    difference  channel A minus channel B (images one neuron likes and its
                neighbour does not)
    pattern     minus the Euclidean distance between the counts on a set of
                channels and a target count per channel (a population pattern)

Each presentation's counts (minus baseline if configured, xdream.scoring) are
combined by the objective into one response; an image's score is the mean of
its responses over repeats, as for one channel.  A response that needs a
channel not measured is NaN, never a partial sum.  Used where scores are made
(server) and made again (session reader, replay, export) through
`xdream.scoring.response`, so both agree bit for bit.  Imports neither torch
nor psychopy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

KINDS = ("channel", "mean", "difference", "pattern")


@dataclass(frozen=True)
class Objective:
    kind: str
    channels: tuple[int, ...]
    target: tuple[float, ...] = ()

    @classmethod
    def of_thread(cls, tcfg) -> Objective:
        """From a ThreadConfig (checked by xdream.config: `check_objective`)."""
        o = tcfg.objective
        if o.kind == "channel":
            return cls("channel", (int(tcfg.channel),))
        return cls(o.kind, tuple(int(c) for c in o.channels), tuple(float(t) for t in o.target))

    @property
    def needed(self) -> int:
        """Channels a recorder must have: the highest one read, plus one."""
        return max(self.channels) + 1

    def combine(self, values: Sequence[float]) -> float:
        """The per-channel responses (in `channels` order) -> this objective's response."""
        if any(math.isnan(v) for v in values):
            return math.nan
        if self.kind == "channel":
            return float(values[0])
        if self.kind == "mean":
            return float(math.fsum(values) / len(values))
        if self.kind == "difference":
            return float(values[0] - values[1])
        return -math.sqrt(math.fsum((v - t) ** 2 for v, t in zip(values, self.target)))

    def describe(self) -> str:
        c = self.channels
        if self.kind == "channel":
            return f"channel {c[0]}"
        if self.kind == "mean":
            return f"mean of channels {list(c)}"
        if self.kind == "difference":
            return f"channel {c[0]} minus channel {c[1]}"
        return f"minus the distance of channels {list(c)} to {list(self.target)}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "channels": list(self.channels), "target": list(self.target)}


def check(tcfg, where: str) -> str | None:
    """What is wrong with a thread's objective config, or None."""
    o = tcfg.objective
    n = len(o.channels)
    if o.kind == "channel":
        if n or o.target:
            return (f"{where}.objective kind 'channel' scores threads.channel = {tcfg.channel}; give no "
                    f"channels or target (got channels {o.channels}, target {o.target})")
        return None
    if len(set(o.channels)) != n:
        return f"{where}.objective.channels must be distinct, got {o.channels}"
    if o.kind == "mean" and n < 1:
        return f"{where}.objective kind 'mean' needs channels = [at least one]"
    if o.kind == "difference" and n != 2:
        return f"{where}.objective kind 'difference' needs channels = [A, B] (A minus B), got {o.channels}"
    if o.kind == "pattern" and (n < 1 or len(o.target) != n):
        return (f"{where}.objective kind 'pattern' needs channels and a target count for each, of the same "
                f"length; got {n} channels and {len(o.target)} targets")
    if o.kind != "pattern" and o.target:
        return f"{where}.objective.target is for kind 'pattern' only"
    if o.target and not all(math.isfinite(t) and t >= 0 for t in o.target):
        return f"{where}.objective.target must be finite counts >= 0, got {o.target}"
    return None
