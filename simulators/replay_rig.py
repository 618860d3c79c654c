"""A rig that replays a recorded session's responses: the neuron is the journal.

`xdream record --server EP --replay SESSION` uses it in place of the simulated
rig (the same screen tap, the same RigEvents; with `--rig NAME` its events go
through that rig's real wire format to the real adapter, like the simulated
rig's).  On each onset frame the presenter's tap sends, it records the event
code and emits the spikes that reproduce the recorded counts of the
presentation sent with that code: the first recorded presentation with that
code not yet replayed, in the order the server sent them (the order a
realtime replay re-sends them).  Like a real rig's, its times are sample
numbers (integer ticks of 30 kHz, RATE_HZ): the onset is the frame time's
nearest tick n, and k counted spikes are spread evenly over the ticks of the
response window, [n + ceil(t0 * rate), n + ceil(t1 * rate)) as
docs/adapters.md's counter defines it, the first on the window's first tick
and (k > 1) the last on its last tick; the baseline spikes likewise in the
baseline window.  A recorder that aligns and counts correctly so reports the
recorded counts exactly, and one that moves a window's edge by a tick does
not.  A presentation that had no counts fires nothing.

The recording holds counts, not spike times, so the spikes are a stand-in
with the right count in each window.  They reproduce the counts only while a
presentation's windows stay clear of its neighbours' (the configured on+off
time at least as long as the span of the windows); otherwise a warning says
the counts will not match.

Its clock is the presenter's frame count times the nominal frame period, as
the simulated rig's (simulators/rig.py), so an unpaced headless presenter
still gives a display's timeline.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from fractions import Fraction
from pathlib import Path

import numpy as np
import zmq

from recording_adapters.events import RigEvents, exact, round_ticks
from xdream.session_reader import load_session
from simulators.rig_clock import IDLE_GAP_S, RATE_HZ, RigClock
from xdream import protocol
from xdream.errors import ProtocolError
from xdream.protocol import MsgType

log = logging.getLogger(__name__)


class ReplayRig:
    def __init__(self, session_folder: str | Path, bind: str = "tcp://127.0.0.1:0",
                 context: zmq.Context | None = None):
        session = load_session(session_folder)
        cfg = session.cfg
        self.rate = Fraction(RATE_HZ)
        self.window = [ms / 1000.0 for ms in cfg.response.window_ms]
        self.baseline = [ms / 1000.0 for ms in cfg.response.baseline_ms]
        # the windows' tick offsets after an onset tick, in exact arithmetic (0.05 s is 1/20 s, not a double)
        self.window_ticks = window_offsets(cfg.response.window_ms, self.rate)
        self.baseline_ticks = window_offsets(cfg.response.baseline_ms, self.rate)
        span = max(self.window[1], self.baseline[1]) - min(self.window[0], self.baseline[0])
        soa = (cfg.presentation.on_ms + cfg.presentation.off_ms) / 1000.0
        if span > soa + 1e-9:
            log.warning("the response and baseline windows span %.0f ms, more than the %.0f ms from one onset "
                        "to the next: replayed counts will spill into neighbours and not match", span * 1e3,
                        soa * 1e3)
        counted = [p.counts for p in session.presentations if p.counts and p.counts["status"] == "ok"]
        self.channels = max([len(c["counts"]) for c in counted] + [t.channel + 1 for t in cfg.threads])
        # per event code, the recorded presentations in the order sent: (pid, counts, baseline) or None
        self._by_code: dict[int, deque] = {}
        for p in session.presentations:
            ok = p.counts if p.counts and p.counts["status"] == "ok" else None
            item = (p.pid, ok["counts"], ok.get("baseline") or []) if ok else (p.pid, None, None)
            self._by_code.setdefault(p.code, deque()).append(item)
        self.replayed: list[str] = []          # pids whose responses were fired, in order
        self.unmatched_codes: list[int] = []   # onsets whose code no recorded presentation had left
        self.socket = (context or zmq.Context.instance()).socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(bind)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._clock = RigClock()
        self._watermark = 0.0

    def poll(self, timeout_s: float) -> RigEvents:
        events = RigEvents(rate=self.rate)
        times: list[np.ndarray] = []
        chans: list[np.ndarray] = []
        if self.socket.poll(int(timeout_s * 1000)):
            while self.socket.poll(0):
                try:
                    msg = protocol.decode(self.socket.recv_multipart(copy=False))
                except ProtocolError as exc:
                    log.error("dropped a malformed screen frame: %s", exc)
                    continue
                if msg.type != MsgType.SCREEN_FRAME:
                    log.error("dropped a %s on the screen tap", msg.type.value)
                    continue
                t = self._clock.time_of(msg.body)
                if msg.body.code == 0:   # the screen went idle: the clock runs on
                    self._watermark = max(self._watermark, t + IDLE_GAP_S)
                    self._clock.last_t = self._watermark
                    continue
                onset = self._tick(t)
                events.codes.append((onset, msg.body.code))
                self._fire(t, onset, msg.body.code, times, chans)
                self._watermark = max(self._watermark, t)   # every spike before this onset is out
        if times:
            events.spike_times = np.concatenate(times)
            events.spike_channels = np.concatenate(chans).astype(int)
        else:
            events.spike_times = np.empty(0, np.int64)
        events.watermark = self._tick(self._watermark)
        return events

    def _tick(self, t: float) -> int:
        """A time of the frame clock (seconds) -> the nearest tick, as a rig stamps its samples."""
        return int(round_ticks([t], self.rate)[0])

    def _fire(self, t: float, onset: int, code: int, times: list, chans: list) -> None:
        queue = self._by_code.get(code)
        if not queue:
            self.unmatched_codes.append(code)
            log.warning("event code %d at %.4f s: no recorded presentation with that code is left", code, t)
            return
        pid, counts, baseline = queue.popleft()
        self.replayed.append(pid)
        if counts is None:
            return
        for values, (a, b) in ((counts, self.window_ticks), (baseline, self.baseline_ticks)):
            for ch, k in enumerate(values):
                k = int(round(k))
                if k > 0:
                    times.append(onset + spread(k, a, b))
                    chans.append(np.full(k, ch))

    def close(self) -> None:
        self.socket.close()


def window_offsets(window_ms, rate: Fraction) -> tuple[int, int]:
    """[t0, t1) ms after an onset -> [a, b) tick offsets: onset + k is in iff a <= k < b."""
    t0, t1 = (exact(ms) / 1000 for ms in window_ms)
    return math.ceil(t0 * rate), math.ceil(t1 * rate)


def spread(k: int, a: int, b: int) -> np.ndarray:
    """k tick offsets evenly over [a, b): the first on a, the last (k > 1) on b - 1, both edges of the
    window.  More spikes than ticks share ticks (a count the window cannot hold is still replayed)."""
    if k == 1 or b - a <= 1:
        return np.full(k, a, dtype=np.int64)
    return a + (np.arange(k, dtype=np.int64) * (b - 1 - a)) // (k - 1)
