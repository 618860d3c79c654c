"""A simulated rig: watches the screen (the presenter's screen tap), records
an event code at each onset, and fires Poisson spikes from ConvNet units.

Its clock is the presenter's frame count times the nominal frame period, so
the timeline is that of a paced display even under Xvfb.  Spike trains are
drawn deterministically: a presentation's driven spikes from (seed, the
image's content hash, its event code), baseline spikes from (seed, 100 ms
bin), so a seeded session gives the same counts however the processes are
scheduled.  Keying the driven spikes on what is shown rather than on the onset
number means a presentation shown again (the same image with the same code,
as after a server restart) draws the same spikes, and nothing after it shifts:
a resumed session sees the responses an uninterrupted one would have.
Baseline spikes follow the rig's clock, which a re-showing does move.

With `spikes` (a simulators/scripted_spikes.ScriptedSpikes) the neuron is
replaced by a script: the same screen tap and clock, but no network pass and
no draws; exactly the scripted spikes go out, as integer ticks of the script's
rate, each once the watermark passes it (the exact-edge tests, a lab's replay
of a recorded spike train).

In-process source for the recorder (RigEvents); real rig wire formats are the
adapters' issue.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from fractions import Fraction

import numpy as np
import zmq

from recording_adapters.events import RigEvents
from simulators.neuron import ConvNetUnits, SimulatedUnits, build_units
from simulators.rig_clock import IDLE_GAP_S, RATE_HZ, RigClock
from simulators.scripted_spikes import ScriptedSpikes
from xdream import protocol
from xdream.errors import ProtocolError
from xdream.protocol import MsgType

log = logging.getLogger(__name__)

BIN_S = 0.1           # baseline spikes are drawn per bin of rig time
WORK_PER_POLL_S = 0.2  # a poll's budget of network passes (a few onsets on a CPU)


class SimulatedRig:
    def __init__(self, cfg, bind: str = "tcp://127.0.0.1:0", context: zmq.Context | None = None,
                 spikes: ScriptedSpikes | None = None):
        self.cfg = cfg
        self.script = spikes
        # a scripted rig has no neuron to build: its channels and sample clock are the script's
        self.units: ConvNetUnits | SimulatedUnits | None = None
        self.rate: Fraction = Fraction(RATE_HZ)
        if spikes is None:
            self.units = build_units(cfg, cfg.device)
            self.channels = self.units.channels
        else:
            self.channels, self.rate = spikes.channels, spikes.rate
        self.socket = (context or zmq.Context.instance()).socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(bind)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.latency = cfg.latency_ms / 1000.0
        self.duration = cfg.duration_ms / 1000.0
        self.onsets = 0
        self._clock = RigClock()
        self._baseline_bins = 0     # bins [0, n) of baseline spikes already drawn
        self._watermark = 0.0
        self._pending: deque = deque()   # frames received, not yet worked through
        self.seen: list[tuple[int, np.ndarray]] = []  # (code, RF view) kept for tests, if enabled
        self.keep_views = False

    def poll(self, timeout_s: float) -> RigEvents:
        if not self._pending:
            self.socket.poll(int(timeout_s * 1000))
        while self.socket.poll(0):
            try:
                self._pending.append(protocol.decode(self.socket.recv_multipart(copy=False)))
            except ProtocolError as exc:
                log.error("dropped a malformed screen frame: %s", exc)
        events = RigEvents()
        # in arrival order: an idle frame moves the clock on for the onsets after it, so how many
        # frames one poll happened to collect must not change any onset's time.  At most
        # WORK_PER_POLL_S of network passes per poll: the caller's peer keeps its heartbeats
        # going while a block's onsets are worked through (the rest waits for the next poll)
        started = time.monotonic()
        while self._pending and time.monotonic() - started < WORK_PER_POLL_S:
            m = self._pending.popleft()
            if m.type != MsgType.SCREEN_FRAME:
                continue
            if m.body.code != 0:
                if self.script is not None:     # no neuron: the code at its onset; the script fires
                    t = self._clock.time_of(m.body)
                    events.codes.append((t, m.body.code))
                    self.onsets += 1
                    self._watermark = max(self._watermark, t + self.latency)
                else:
                    self._fire([m], events)
                continue
            t = self._clock.time_of(m.body)   # screen idle: the clock runs on
            self._watermark = max(self._watermark, t + IDLE_GAP_S)
            self._clock.last_t = self._watermark
        if self.script is not None:
            return self._scripted(events)
        self._draw_baseline(self._watermark, events)
        # counts are final only where baseline spikes have been drawn too
        events.watermark = min(self._watermark, self._baseline_bins * BIN_S)
        # drawn in seconds, handed on as samples (nearest), as an acquisition system stamps them
        return events.in_ticks(self.rate)

    def _scripted(self, events: RigEvents) -> RigEvents:
        """Onsets (seconds of the frame clock) to the nearest tick, as in_ticks does; then every
        scripted spike before the watermark's tick, as the integer it was given."""
        script = self.script
        assert script is not None
        events.watermark = self._watermark
        out = events.in_ticks(script.rate)
        ticks, chans = script.take(int(out.watermark or 0))
        out.spike_times, out.spike_channels = ticks, chans
        return out

    @property
    def backlog(self) -> int:
        """Screen frames received and not yet worked through."""
        return len(self._pending)

    def _fire(self, onsets, events: RigEvents) -> None:
        assert self.units is not None      # a scripted rig fires no neuron
        views = np.stack([self._receptive_field(m.images()[0]) for m in onsets])
        # one view per forward pass: a batch's size (how many onsets one poll collected) may pick
        # another float kernel on some CPUs, and a rate that differs in its last bit can change a draw
        rates = np.concatenate([self.units.rates(view[None]) for view in views])
        times, chans = [events.spike_times], [events.spike_channels]
        for m, view, rate in zip(onsets, views, rates):
            t = self._clock.time_of(m.body)
            events.codes.append((t, m.body.code))
            rng = np.random.default_rng([self.cfg.seed, 1, _content_key(view), m.body.code])
            self.onsets += 1
            counts = rng.poisson(rate * self.duration)
            for ch, k in enumerate(counts):
                times.append(t + self.latency + rng.random(k) * self.duration)
                chans.append(np.full(k, ch))
            if self.keep_views:
                self.seen.append((m.body.code, view))
            # responses of later onsets start after their own latency: all before this is final
            self._watermark = max(self._watermark, t + self.latency)
        events.spike_times = np.concatenate(times)
        events.spike_channels = np.concatenate(chans)

    def _receptive_field(self, frame: np.ndarray) -> np.ndarray:
        h, w, _ = frame.shape
        s = min(self.cfg.rf_size_px, h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return frame[top:top + s, left:left + s]

    def _draw_baseline(self, until: float, events: RigEvents) -> None:
        n_bins = int(until / BIN_S)
        if n_bins <= self._baseline_bins:
            return
        times, chans = [events.spike_times], [events.spike_channels]
        for b in range(self._baseline_bins, n_bins):
            rng = np.random.default_rng([self.cfg.seed, 2, b])
            for ch in range(self.channels):
                k = rng.poisson(self.cfg.baseline_hz * BIN_S)
                times.append((b + rng.random(k)) * BIN_S)
                chans.append(np.full(k, ch))
        self._baseline_bins = n_bins
        events.spike_times = np.concatenate(times)
        events.spike_channels = np.concatenate(chans).astype(int)

    def close(self) -> None:
        self.socket.close()


def _content_key(view: np.ndarray) -> int:
    """64 bits of the pixels' hash: the same image seen again draws the same spikes."""
    digest = hashlib.blake2b(np.ascontiguousarray(view).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
