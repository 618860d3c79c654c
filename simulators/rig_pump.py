"""Pumps a simulated rig's events into a simulated wire peer, on a thread.

`xdream record --simulate CFG --rig NAME` runs the SimulatedRig (the screen
tap) here, and the recorder reads the real adapter, which decodes the bytes the
peer sends: the loop then runs through the rig's real wire format.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class RigPump(threading.Thread):
    def __init__(self, rig, peer, poll_s: float = 0.02):
        super().__init__(name="rig-pump", daemon=True)
        self.rig = rig          # SimulatedRig: .poll(timeout_s) -> RigEvents
        self.peer = peer        # a simulators.wire_peers peer: .send(RigEvents)
        self.poll_s = poll_s
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self.peer.send(self.rig.poll(self.poll_s))
        except BaseException as exc:   # reported by stop(): a dead pump must not pass silently
            self.error = exc
            log.exception("the simulated rig's pump stopped")

    def stop(self, timeout_s: float = 5.0) -> None:
        self._halt.set()
        self.join(timeout_s)
        if self.error is not None:
            log.error("the rig pump had failed: %s", self.error)
