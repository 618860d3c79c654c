"""`xdream record`: the recorder peer, on a real rig adapter or a simulated rig."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from xdream.cli.common import load_config
from xdream.curve import add_peer_flags, peer_keys
from xdream.stdout_lines import SCREEN_TAP

if TYPE_CHECKING:
    from simulators.replay_rig import ReplayRig
    from simulators.rig import SimulatedRig

log = logging.getLogger("xdream")


def add_parser(sub) -> None:
    r = sub.add_parser("record", help="the recorder peer: rig events in, spike counts per presentation out")
    r.add_argument("--server", required=True, help="the server's endpoint")
    r.add_argument("--simulate", metavar="CONFIG",
                   help="simulate the rig with ConvNet units from CONFIG's [simulator] ('default' for the "
                        "embedded config); it listens for the presenter's --screen-tap")
    r.add_argument("--replay", metavar="SESSION",
                   help="instead of --simulate: a rig whose neuron is SESSION's journal; it fires the recorded "
                        "counts at each onset the presenter's --screen-tap shows (for `xdream replay --realtime`)")
    r.add_argument("--tap-bind", default="tcp://127.0.0.1:0", help="where the simulated rig listens")
    add_peer_flags(r)
    r.add_argument("--name", default="recorder", help="this peer's name in the journal")
    r.add_argument("--rig", metavar="NAME",
                   help="the rig adapter (openephys, intan, lsl, plexon, blackrock; see docs/adapters.md); "
                        "with --simulate, a simulated peer speaks that rig's wire format to the real adapter")
    r.add_argument("--rig-option", action="append", metavar="KEY=VALUE",
                   help="an option of the rig adapter, e.g. host=192.168.1.20 (repeat for more)")
    r.add_argument("--missing-after", type=float, default=30.0, metavar="S",
                   help="report a presentation missing when its event code, or the end of its window, has not "
                        "come this many seconds (wall time) after it was due (default 30)")
    r.add_argument("--photodiode-max-lag-ms", type=float, metavar="MS",
                   help="take each onset from the first photodiode crossing at most MS after its event code "
                        "(needs an adapter that reports photodiode crossings)")
    r.add_argument("--photodiode-miss", choices=["missing", "code"], default="missing",
                   help="no crossing within the lag: report the presentation missing (default) or keep the "
                        "code's time as its onset")
    r.add_argument("--welcome-timeout", type=float, default=60.0, metavar="S",
                   help="give up when the server has not welcomed this recorder within S seconds (default 60)")
    r.set_defaults(func=run)


def run(args) -> int:
    from recording_adapters.recorder import Recorder
    from recording_adapters.sources import build_source, parse_options
    from xdream.endpoints import check_connect
    from xdream.errors import ConfigError
    from xdream.peer import PeerConnection

    check_connect(args.server)   # one clear line for a bad endpoint, before any rig is touched
    if not args.welcome_timeout > 0:
        raise ConfigError(f"--welcome-timeout {args.welcome_timeout}: must be > 0 seconds")
    options = parse_options(args.rig_option)
    if not args.simulate and not args.replay:
        if not args.rig:
            print("xdream record: say which rig (--rig NAME, see docs/adapters.md) or --simulate CONFIG",
                  file=sys.stderr)
            return 2
        source = build_source(args.rig, options)
        conn = PeerConnection(args.server, "recorder", args.name, channels=source.channels,
                              curve=peer_keys(args))
        reported = Recorder(conn, source, counter_options(args)).run(args.welcome_timeout)
        log.info("reported counts for %d presentations", reported)
        return 0
    neuron: ReplayRig | SimulatedRig
    if args.replay:  # the neuron is a recorded session's journal (xdream replay --realtime)
        from simulators.replay_rig import ReplayRig
        neuron = ReplayRig(args.replay, bind=args.tap_bind)
    else:
        from simulators.rig import SimulatedRig
        neuron = SimulatedRig(load_config(args.simulate).simulator, bind=args.tap_bind)
    # with --rig, the neuron's events go through that rig's simulated wire peer to the real adapter
    from simulators.simulated_source import SimulatedSource
    try:
        simulated = SimulatedSource(rig=args.rig or None, rig_options=options, neuron=neuron)
    except BaseException:
        neuron.close()
        raise
    try:
        print(f"{SCREEN_TAP}{simulated.endpoint}", flush=True)  # only once the adapter is built
        conn = PeerConnection(args.server, "recorder", args.name, channels=simulated.channels,
                              curve=peer_keys(args))
        reported = Recorder(conn, simulated, counter_options(args)).run(args.welcome_timeout)
        log.info("reported counts for %d presentations", reported)
    finally:
        simulated.close()
    return 0


def counter_options(args) -> dict:
    lag = args.photodiode_max_lag_ms
    return {"timeout_s": args.missing_after, "photodiode_max_lag_s": None if lag is None else lag / 1000.0,
            "photodiode_miss": args.photodiode_miss}
