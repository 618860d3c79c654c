"""Simulated rig peers: each speaks a real rig's wire format on 127.0.0.1.

A simulated peer is built as `Cls(channels, **options)`, binds or listens on
127.0.0.1 at random free ports, and offers

    adapter_options() -> dict[str, str]   what recording_adapters.sources.build_source
                                          needs to reach it (ports, channels, ...), as the
                                          command line's strings (`--rig-option key=value`)
    send(events: RigEvents)               encode and transmit these events in the
                                          rig's real wire format, including whatever
                                          the real rig sends that lets an adapter
                                          advance its watermark (e.g. continuous-data
                                          sample numbers up to events.watermark)
    close()

Each peer encodes its format on its own, from the upstream source, and never
imports the adapter's decoder or constants (tests/test_architecture.py checks).
tests/test_adapter_compliance.py runs every adapter that has a peer here through
the contract of recording_adapters/base.py.
"""

from __future__ import annotations

from recording_adapters.sources import check_options, load_class

# name -> "module:Class", imported only when asked for
PEERS: dict[str, str] = {
    "openephys": "simulators.openephys_peer:OpenEphysPeer",
    "intan": "simulators.intan_peer:IntanPeer",
    "lsl": "simulators.lsl_peer:LslPeer",
    # none for plexon and blackrock: their adapters read client APIs (a Windows DLL, pycbsdk's
    # UDP client), not a wire format we speak; tests/test_plexon_blackrock.py fakes those APIs
}


def start_peer(name: str, channels: int, **options):
    """The simulated peer `name`, bound and ready for an adapter to connect (options: typed keyword
    arguments of the peer's constructor, checked by name)."""
    cls = load_class(PEERS, name, "simulated rig peer")
    check_options(cls, options, f"simulated rig peer {name!r}", skip=1)
    return cls(channels, **options)
