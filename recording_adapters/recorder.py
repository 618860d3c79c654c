"""The recorder peer: rig events in, spike counts per presentation out.

Runs as its own process (`xdream record`), e.g. on the recording PC, or on a
thread of the server's process (`xdream serve --rig NAME`:
recording_adapters/in_process.py); either way it talks to the server through
its own PeerConnection and reports every count reliably (kept until the server
acknowledges it).

What the server's WELCOME asks for (docs/protocol.md, "Features"): with the
feature "spike_times", each COUNTS also carries the presentation's spike times
in `settings["spike_times_ms"]` (recording_adapters/spike_times.py); with
"rig_clock", the recorder sends a RIG_CLOCK pair (its wall time, the rig's time)
at the first poll that brings a watermark and every `RIG_CLOCK_EVERY_S` after,
which the server journals so that raw rig files line up with the session
(docs/adapters.md, "Aligning raw data with the session"). With "pause" (taken up
with FEATURES after the welcome), the server's PAUSE / RESUME say when the session
is paused: no event code is due meanwhile, so a long pause loses no presentation
to the aligner's timeout.  An older server asks for none of these, and gets counts
only.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from recording_adapters.base import RigStream
from recording_adapters.counting import SpikeCounter
from xdream.errors import SessionError
from xdream.peer import PeerConnection
from xdream import protocol
from xdream.protocol import MsgType

log = logging.getLogger(__name__)

RIG_CLOCK_EVERY_S = 60.0   # enough pairs to fit a drift between the two clocks over a session


class Recorder:
    def __init__(self, conn: PeerConnection, source: RigStream, counter_options: dict | None = None,
                 halt: threading.Event | None = None):
        self.conn = conn
        self.source = source
        self.counter_options = counter_options or {}   # SpikeCounter's: timeout_s, photodiode_max_lag_s, ...
        self.reported = 0
        self.missing = 0
        self.halt = halt or threading.Event()   # set from another thread: stop soon, as at END
        conn.take_up(("pause",))                 # PAUSE / RESUME from a server that offers them

    def run(self, welcome_timeout_s: float = 60.0) -> int:
        try:
            welcome = self._wait_welcome(welcome_timeout_s)
            if welcome is None:
                return self.reported
            # an adapter that acts on the session: Intan's record_raw names RHX's file after it
            session_started = getattr(self.source, "session_started", None)
            if callable(session_started):
                session_started(self.conn.session)
            window = [ms / 1000.0 for ms in welcome.settings["window_ms"]]
            baseline = [ms / 1000.0 for ms in welcome.settings["baseline_ms"]]
            features = welcome.settings.get("features") or ()
            span_ms = welcome.settings.get("spike_times_ms") if "spike_times" in features else None
            span = [ms / 1000.0 for ms in span_ms] if span_ms else None
            counter = SpikeCounter(self.source.channels, window, baseline, spike_span_s=span,
                                   **self.counter_options)
            next_clock = 0.0 if "rig_clock" in features else math.inf
            while not self.conn.ended and not self.halt.is_set():
                for msg in self.conn.poll(0.005):
                    if msg.type == MsgType.BLOCK_INFO:
                        counter.expect(msg.body.block_id, [(p.pid, p.code) for p in msg.body.presentations])
                    elif msg.type in (MsgType.PAUSE, MsgType.RESUME):
                        log.info("the session is %s: %s", "paused" if msg.type == MsgType.PAUSE else "resumed",
                                 msg.body.reason)
                        counter.hold(msg.type == MsgType.PAUSE)
                events = self.source.poll(0.02)
                wall = time.time()
                rig_s = events.watermark_s()
                if rig_s is not None and wall >= next_clock:
                    self.conn.send(MsgType.RIG_CLOCK, protocol.RigClock(wall, rig_s), reliable=True)
                    next_clock = wall + RIG_CLOCK_EVERY_S
                for counts in counter.add(events):
                    self.conn.send(MsgType.COUNTS, counts, reliable=True)
                    self.reported += 1
                    self.missing += counts.status == "missing"
            if not self.conn.ended:   # halted: hear the acks (and END) already on their way
                self.conn.flush(1.0)
        finally:
            self.source.close()
            self.conn.close()
        return self.reported

    def _wait_welcome(self, timeout_s: float) -> protocol.Welcome | None:
        """The server's welcome, or None if halted first (in steps, so a halt is heard)."""
        deadline = time.monotonic() + timeout_s
        while not self.halt.is_set():
            try:
                return self.conn.wait_welcome(min(0.5, max(deadline - time.monotonic(), 0.01)))
            except SessionError:
                if time.monotonic() >= deadline:   # the whole wait, not the last step's (0 s)
                    raise SessionError(f"no welcome from the server at {self.conn.endpoint} within "
                                       f"{timeout_s:.0f} s: is it running, and is that its endpoint?") from None
        return None
