"""The recorder peer: rig events in, spike counts per presentation out.

Runs as its own process (`xdream record`), e.g. on the recording PC, or on a
thread of the server's process (`xdream serve --rig NAME`:
recording_adapters/in_process.py); either way it talks to the server through
its own PeerConnection and reports every count reliably (kept until the server
acknowledges it).
"""

from __future__ import annotations

import logging
import threading
import time

from recording_adapters.base import RigStream
from recording_adapters.counting import SpikeCounter
from xdream.errors import SessionError
from xdream.peer import PeerConnection
from xdream import protocol
from xdream.protocol import MsgType

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, conn: PeerConnection, source: RigStream, counter_options: dict | None = None,
                 halt: threading.Event | None = None):
        self.conn = conn
        self.source = source
        self.counter_options = counter_options or {}   # SpikeCounter's: timeout_s, photodiode_max_lag_s, ...
        self.reported = 0
        self.missing = 0
        self.halt = halt or threading.Event()   # set from another thread: stop soon, as at END

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
            counter = SpikeCounter(self.source.channels, window, baseline, **self.counter_options)
            while not self.conn.ended and not self.halt.is_set():
                for msg in self.conn.poll(0.005):
                    if msg.type == MsgType.BLOCK_INFO:
                        counter.expect(msg.body.block_id, [(p.pid, p.code) for p in msg.body.presentations])
                for counts in counter.add(self.source.poll(0.02)):
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
