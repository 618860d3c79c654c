"""The recorder peer: rig events in, spike counts per presentation out.

Runs as its own process (`xdream record`), e.g. on the recording PC, and
reports every count reliably (kept until the server acknowledges it).  It
needs nothing of the server's process, so it could equally run there as a
thread with its own PeerConnection (the server does not do so yet).
"""

from __future__ import annotations

import logging

from recording_adapters.counting import SpikeCounter
from xdream.peer import PeerConnection
from xdream.protocol import MsgType

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, conn: PeerConnection, source, counter_options: dict | None = None):
        self.conn = conn
        self.source = source   # recording_adapters.sources: .channels, .poll(timeout_s) -> RigEvents, .close()
        self.counter_options = counter_options or {}   # SpikeCounter's: timeout_s, photodiode_max_lag_s, ...
        self.reported = 0
        self.missing = 0

    def run(self, welcome_timeout_s: float = 60.0) -> int:
        settings = self.conn.wait_welcome(welcome_timeout_s).settings
        window = [ms / 1000.0 for ms in settings["window_ms"]]
        baseline = [ms / 1000.0 for ms in settings["baseline_ms"]]
        counter = SpikeCounter(self.source.channels, window, baseline, **self.counter_options)
        try:
            while not self.conn.ended:
                for msg in self.conn.poll(0.005):
                    if msg.type == MsgType.BLOCK_INFO:
                        counter.expect(msg.body.block_id, [(p.pid, p.code) for p in msg.body.presentations])
                for counts in counter.add(self.source.poll(0.02)):
                    self.conn.send(MsgType.COUNTS, counts, reliable=True)
                    self.reported += 1
                    self.missing += counts.status == "missing"
        finally:
            self.source.close()
            self.conn.close()
        return self.reported
