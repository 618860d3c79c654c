"""Spike counts per presentation: align event codes to presentations, count
spikes per channel in [onset+t0, onset+t1) and in a baseline window.

A presentation is counted once the rig's watermark has passed the end of
both windows, so a count is never taken from a window still filling.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from recording_adapters.events import RigEvents
from xdream import protocol

log = logging.getLogger(__name__)

EARLY_CODE_MAX_AGE_S = 30.0  # rig time a code may wait for its block's info before it is dropped


@dataclass
class _Pending:
    block_id: int
    pid: str
    code: int
    onset: float | None = None


class SpikeCounter:
    def __init__(self, n_channels: int, window_s=(0.05, 0.2), baseline_s=(0.0, 0.05)):
        self.n_channels = n_channels
        self.window_s = tuple(window_s)
        self.baseline_s = tuple(baseline_s)
        self._awaiting_code: deque[_Pending] = deque()  # expected, in the order sent
        self._onsets: list[_Pending] = []               # code seen, window not yet complete
        self._times = np.empty(0)
        self._channels = np.empty(0, dtype=int)
        self.unmatched_codes = 0
        self._known: set[str] = set()
        self._early_codes: list[tuple[float, int]] = []  # codes seen before their BLOCK_INFO

    def expect(self, block_id: int, presentations: list[tuple[str, int]]) -> None:
        """The server's BLOCK_INFO: pids and their event codes, in presentation order."""
        for pid, code in presentations:
            if pid not in self._known:  # the server may resend a block's info after a reconnect
                self._known.add(pid)
                self._awaiting_code.append(_Pending(block_id, pid, code))
        # the rig and the server are different sockets: a code may beat its block's info here
        early, self._early_codes = self._early_codes, []
        for t, code in early:
            self._on_code(t, code)

    def add(self, events: RigEvents) -> list[protocol.Counts]:
        for t, code in events.codes:
            self._on_code(t, code)
        if len(events.spike_times):
            bad = (events.spike_channels < 0) | (events.spike_channels >= self.n_channels)
            if bad.any():
                log.warning("dropped %d spikes on channels outside 0..%d", int(bad.sum()), self.n_channels - 1)
            self._times = np.concatenate([self._times, events.spike_times[~bad]])
            self._channels = np.concatenate([self._channels, events.spike_channels[~bad]])
        return self._complete(events.watermark) if events.watermark is not None else []

    def _on_code(self, t: float, code: int) -> bool:
        # the first expected presentation with this code; codes of earlier ones never seen
        # stay expected (sequence matching that reports them missing is the adapters' issue)
        for i, pending in enumerate(self._awaiting_code):
            if pending.code == code:
                del self._awaiting_code[i]
                pending.onset = t
                self._onsets.append(pending)
                return True
        self._early_codes.append((t, code))
        return False

    def _complete(self, watermark: float) -> list[protocol.Counts]:
        stale = [(t, c) for t, c in self._early_codes if t < watermark - EARLY_CODE_MAX_AGE_S]
        if stale:
            self.unmatched_codes += len(stale)
            self._early_codes = [(t, c) for t, c in self._early_codes if t >= watermark - EARLY_CODE_MAX_AGE_S]
            for t, code in stale:
                log.warning("event code %d at %.4f s matches no presentation the server sent", code, t)
        end = max(self.window_s[1], self.baseline_s[1])
        done = [p for p in self._onsets if p.onset + end <= watermark]
        if not done:
            return []
        self._onsets = [p for p in self._onsets if p.onset + end > watermark]
        out = [protocol.Counts(p.block_id, p.pid, "ok", self._count(p.onset, self.window_s),
                               self._count(p.onset, self.baseline_s), p.onset) for p in done]
        # spikes older than every window still open can go
        start = min(self.window_s[0], self.baseline_s[0])
        oldest = min([p.onset + start for p in self._onsets] + [t for t, _ in self._early_codes],
                     default=watermark)
        keep = self._times >= oldest
        self._times, self._channels = self._times[keep], self._channels[keep]
        return out

    def _count(self, onset: float, window) -> list[float]:
        inside = (self._times >= onset + window[0]) & (self._times < onset + window[1])
        return np.bincount(self._channels[inside], minlength=self.n_channels).astype(float).tolist()
