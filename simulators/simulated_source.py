"""The simulated neuron as a rig source, for a recorder in any process.

Without a rig name the SimulatedRig is the source itself; with one (openephys,
intan, lsl) a pump thread hands its events to that rig's simulated wire peer
and the source is the real adapter reading the peer's bytes on 127.0.0.1.
`endpoint` is the screen tap the presenter must be given (`--screen-tap`).
`neuron` replaces the SimulatedRig with another screen-watching rig (the
realtime replay's ReplayRig).  It offers what the recorder uses of the rig-source
contract (recording_adapters/base.py): channels, poll, an idempotent close.

`resegment_seed` (by default XDREAM_RESEGMENT_SEED from the environment, so
that it reaches the recorder process of `xdream dry-run`) puts a re-segmenting
proxy (simulators/resegmenting_proxy.py) in front of each TCP port of the peer:
the adapter then reads the rig's bytes cut and joined at random places, seeded,
as a real network may deliver them.  For tests; a lab never sets it.
"""

from __future__ import annotations

import logging
import os

from recording_adapters.sources import build_source
from simulators.resegmenting_proxy import DOWN, ENV_SEED, ResegmentingProxy, resegment
from simulators.rig import SimulatedRig
from simulators.rig_pump import RigPump
from simulators.wire_peers import start_peer
from xdream.errors import ConfigError

log = logging.getLogger(__name__)


def seed_from_environment() -> int | None:
    text = os.environ.get(ENV_SEED, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{ENV_SEED}={text!r}: must be an integer seed") from None


class SimulatedSource:
    def __init__(self, sim_cfg=None, rig: str | None = None, rig_options: dict | None = None,
                 tap_bind: str = "tcp://127.0.0.1:0", *, neuron=None, resegment_seed: int | None = None):
        self.rig = neuron if neuron is not None else SimulatedRig(sim_cfg, bind=tap_bind)
        self._closed = False
        self.endpoint = self.rig.endpoint
        self.peer = self.pump = None
        self.proxies: list[ResegmentingProxy] = []
        self.source = self.rig
        if resegment_seed is None:
            resegment_seed = seed_from_environment()
        if rig is not None:
            try:
                self.peer = start_peer(rig, self.rig.channels)
                options = self.peer.adapter_options()
                if resegment_seed is not None:
                    try:
                        options, self.proxies = resegment(self.peer, options, resegment_seed)
                    except ValueError as exc:
                        raise ConfigError(f"{ENV_SEED} set, but the simulated {rig} rig: {exc}") from None
                    log.warning("simulated %s rig: its TCP ports go through re-segmenting proxies (seed %d)",
                                rig, resegment_seed)
                self.source = build_source(rig, {**options, **(rig_options or {})})
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
        if self.proxies:
            log.warning("re-segmenting proxies: %d pieces (%d bytes) towards the adapter",
                        sum(p.pieces[DOWN] for p in self.proxies), sum(p.bytes[DOWN] for p in self.proxies))
        for proxy in self.proxies:
            proxy.close()
        if self.peer is not None:
            self.peer.close()
        self.rig.close()
