"""A rig that replays a recorded session's responses: the neuron is the journal.

`xdream record --server EP --replay SESSION` uses it in place of the simulated
rig (the same screen tap, the same RigEvents; with `--rig NAME` its events go
through that rig's real wire format to the real adapter, like the simulated
rig's).  On each onset frame the presenter's tap sends, it records the event
code and emits the spikes that reproduce the recorded counts of the
presentation sent with that code: the first recorded presentation with that
code not yet replayed, in the order the server sent them (the order a
realtime replay re-sends them).  k counted spikes are spread evenly inside
the response window after the new onset, the baseline spikes inside the
baseline window, so a recorder that aligns and counts correctly reports the
recorded counts exactly.  A presentation that had no counts fires nothing.

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
from collections import deque
from pathlib import Path

import numpy as np
import zmq

from recording_adapters.events import RigEvents
from xdream.session_reader import load_session
from simulators.rig_clock import IDLE_GAP_S, RigClock
from xdream import protocol
from xdream.errors import ProtocolError
from xdream.protocol import MsgType

log = logging.getLogger(__name__)


class ReplayRig:
    def __init__(self, session_folder: str | Path, bind: str = "tcp://127.0.0.1:0",
                 context: zmq.Context | None = None):
        session = load_session(session_folder)
        cfg = session.cfg
        self.window = [ms / 1000.0 for ms in cfg.response.window_ms]
        self.baseline = [ms / 1000.0 for ms in cfg.response.baseline_ms]
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
        events = RigEvents()
        times, chans = [], []
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
                events.codes.append((t, msg.body.code))
                self._fire(t, msg.body.code, times, chans)
                self._watermark = max(self._watermark, t)   # every spike before this onset is out
        if times:
            events.spike_times = np.concatenate(times)
            events.spike_channels = np.concatenate(chans).astype(int)
        events.watermark = self._watermark
        return events

    def _fire(self, t: float, code: int, times: list, chans: list) -> None:
        queue = self._by_code.get(code)
        if not queue:
            self.unmatched_codes.append(code)
            log.warning("event code %d at %.4f s: no recorded presentation with that code is left", code, t)
            return
        pid, counts, baseline = queue.popleft()
        self.replayed.append(pid)
        if counts is None:
            return
        for values, (a, b) in ((counts, self.window), (baseline, self.baseline)):
            for ch, k in enumerate(values):
                k = int(round(k))
                if k > 0:
                    times.append(t + a + (np.arange(k) + 0.5) * (b - a) / k)
                    chans.append(np.full(k, ch))

    def close(self) -> None:
        self.socket.close()
