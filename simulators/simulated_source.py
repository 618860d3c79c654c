"""The simulated neuron as a rig source, for a recorder in any process.

Without a rig name the SimulatedRig is the source itself; with one (openephys,
intan, lsl) a pump thread hands its events to that rig's simulated wire peer
and the source is the real adapter reading the peer's bytes on 127.0.0.1.
`endpoint` is the screen tap the presenter must be given (`--screen-tap`).
`neuron` replaces the SimulatedRig with another screen-watching rig (the
realtime replay's ReplayRig).  It offers what the recorder uses of the rig-source
contract (recording_adapters/base.py): channels, poll, an idempotent close.
"""

from __future__ import annotations

from recording_adapters.sources import build_source
from simulators.rig import SimulatedRig
from simulators.rig_pump import RigPump
from simulators.wire_peers import start_peer


class SimulatedSource:
    def __init__(self, sim_cfg=None, rig: str | None = None, rig_options: dict | None = None,
                 tap_bind: str = "tcp://127.0.0.1:0", *, neuron=None):
        self.rig = neuron if neuron is not None else SimulatedRig(sim_cfg, bind=tap_bind)
        self._closed = False
        self.endpoint = self.rig.endpoint
        self.peer = self.pump = None
        self.source = self.rig
        if rig is not None:
            try:
                self.peer = start_peer(rig, self.rig.channels)
                self.source = build_source(rig, {**self.peer.adapter_options(), **(rig_options or {})})
            except BaseException:
                self.close()
                raise
            self.pump = RigPump(self.rig, self.peer)
            self.pump.start()
        self.channels = self.source.channels

    def poll(self, timeout_s: float):
        return self.source.poll(timeout_s)

    def close(self) -> None:
        if self._closed:  # the recorder closes its source; so may the one who made it
            return
        self._closed = True
        if self.pump is not None:
            self.pump.stop()
        if self.source is not self.rig:
            self.source.close()
        if self.peer is not None:
            self.peer.close()
        self.rig.close()
