"""`xdream serve`: the evolution server (optionally with the recorder in its process)."""

from __future__ import annotations

import sys
from pathlib import Path

from xdream import config as config_mod
from xdream import curve
from xdream.cli.common import load_config
from xdream.errors import ConfigError
from xdream.files import time_stamp, unused_path
from xdream.stdout_lines import CONTROL_TOKEN, DASHBOARD, LISTENING, SCREEN_TAP, SESSION_FOLDER, STATUS


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="the evolution server: binds a ROUTER socket and runs the session")
    s.add_argument("config", nargs="?",
                   help="config file (TOML, or a session's config.json); 'default' for the embedded one")
    s.add_argument("--generations", type=int, help="override session.generations")
    s.add_argument("--out", help="override session.out_dir")
    s.add_argument("--bind", help="override network.bind, e.g. tcp://0.0.0.0:5555 for peers on other PCs; "
                                  "with --resume: instead of the endpoint the session last listened on")
    s.add_argument("--curve-server-secret-key", metavar="FILE",
                   help="override network.curve_server_secret_key: the server's CURVE key pair "
                        "(KEYS/server/server.key_secret from `xdream keys`; docs/protocol.md)")
    s.add_argument("--curve-allowed-clients", metavar="DIR",
                   help="override network.curve_allowed_clients: the allowed clients' public keys (KEYS/allowed)")
    s.add_argument("--insecure", action="store_true",
                   help="serve on a non-loopback address without CURVE (anyone who reaches the port can join)")
    s.add_argument("--resume", metavar="SESSION",
                   help="continue this session folder where its server stopped (killed, crashed, power cut): "
                        "its own config, the same endpoint, the same optimizer state (docs/journal.md)")
    s.add_argument("--rig", metavar="NAME",
                   help="run the recorder in this process (a thread with its own connection to this server) "
                        "on this rig adapter, e.g. Open Ephys or Intan on the server PC (docs/adapters.md); "
                        "with --simulate, the simulated neuron behind that rig's wire format")
    s.add_argument("--rig-option", action="append", metavar="KEY=VALUE",
                   help="an option of the rig adapter, as for `xdream record` (repeat for more)")
    s.add_argument("--simulate", action="store_true",
                   help="run the recorder in this process on the config's simulated neuron; prints where its "
                        "screen tap listens (the presenter's --screen-tap)")
    s.add_argument("--dashboard", nargs="?", const=0, type=int, metavar="PORT",
                   help="serve the live dashboard beside the server on http://127.0.0.1:PORT/ "
                        "(default: a free port, printed)")
    s.add_argument("--missing-after", type=float, default=30.0, metavar="S",
                   help="in-process recorder: as `xdream record --missing-after` (default 30)")
    s.set_defaults(func=run)


def run(args) -> int:
    import asyncio

    from server.app import EvolutionServer, SessionStopped
    from server.generators.fast import tune_cpu_allocator

    tune_cpu_allocator()  # before any thread allocates: keeps large activations' pages between generations

    if args.resume:
        if args.config or args.generations is not None or args.out:
            raise ConfigError("--resume takes the session's own config.json: give no CONFIG, "
                              "--generations or --out with it")
        folder = Path(args.resume)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"--resume {folder}: no config.json there; not a session folder")
        cfg = config_mod.load(folder / "config.json").validate()
        _curve_flags(args, cfg)
        server_options = {"resume": True, "bind": args.bind}
    else:
        if not args.config:
            raise ConfigError("serve needs a CONFIG (or --resume SESSION)")
        cfg = load_config(args.config)
        if args.generations is not None:
            cfg.session.generations = args.generations
        if args.out:
            cfg.session.out_dir = args.out
        if args.bind:
            cfg.network.bind = args.bind
        _curve_flags(args, cfg)
        cfg.validate()
        folder = unused_path(Path(cfg.session.out_dir), f"{cfg.session.name}-{time_stamp()}")
        server_options = {}
    recorder = _in_server_recorder(args, cfg)   # first: a wrong rig option leaves no session folder behind
    try:
        # builds and checks everything (threads, references, the bind endpoint; for a resume the
        # folder's lock and checkpoint); the folder itself is made by run(), once bound
        server = EvolutionServer(cfg, folder, insecure=args.insecure, **server_options)
    except BaseException:
        if recorder is not None:
            recorder.stop()
        raise

    def on_endpoint(endpoint: str) -> None:
        print(f"{SESSION_FOLDER}{folder}", flush=True)
        print(f"{LISTENING}{endpoint}", flush=True)
        if server.status.endpoint:
            print(f"{STATUS}{server.status.endpoint}", flush=True)
        if server.status.token:
            print(f"{CONTROL_TOKEN}{server.status.token}", flush=True)
        if args.dashboard is not None and server.status.endpoint:
            from xdream.dashboard.live import start_beside
            url = start_beside(server.status.endpoint, port=args.dashboard, token=server.status.token)
            print(f"{DASHBOARD}{url}", flush=True)
        if recorder is not None and server.curve_auth is not None and server.curve_keys is not None:
            # the in-process recorder gets a key pair of its own, admitted for this run only
            recorder.curve = curve.ephemeral_client(server.curve_keys)
            server.curve_auth.allow(recorder.curve.public)
        if recorder is not None:
            recorder.start(endpoint)   # only starts its thread: the loop never waits on the rig

    def on_generation(generation: int, records: list[dict]) -> None:
        parts = [f"{r['thread']}: mean {r['mean']:6.2f} max {r['max']:6.2f}" for r in records]
        print(f"gen {generation:3d} | " + " | ".join(parts) +
              f" | ref {records[0]['ref_mean']:6.2f} | {records[0]['seconds']:5.2f} s", flush=True)

    try:
        summary = asyncio.run(server.run(on_endpoint=on_endpoint, on_generation=on_generation))
    except SessionStopped as exc:   # SIGTERM / SIGINT: closed like an error, journaled, peers told
        print(f"xdream serve: {exc} (session folder {folder})", file=sys.stderr, flush=True)
        return exc.exit_status
    finally:
        if recorder is not None:
            recorder.stop()
    best = sorted({str(folder / r["best_image"]) for r in summary if "best_image" in r})
    finals = {t.name: t.best_score for t in server.threads}
    print(f"done: session folder {folder}", flush=True)
    for t in server.threads:
        print(f"best image of thread {t.name} (score {finals[t.name]:.2f}): {folder / 'best' / f'best_{t.name}.png'}",
              flush=True)
    return 0 if best else 1


def _curve_flags(args, cfg) -> None:
    if args.curve_server_secret_key:
        cfg.network.curve_server_secret_key = args.curve_server_secret_key
    if args.curve_allowed_clients:
        cfg.network.curve_allowed_clients = args.curve_allowed_clients


def _in_server_recorder(args, cfg):
    """The recorder for `serve --rig/--simulate`, or None; a simulated rig's screen tap is printed."""
    if args.rig_option and not args.rig:
        raise ConfigError("--rig-option needs --rig NAME")
    if not args.rig and not args.simulate:
        return None
    from recording_adapters.in_process import InServerRecorder
    from recording_adapters.sources import build_source, check_source, parse_options

    options = parse_options(args.rig_option)
    counter = {"timeout_s": args.missing_after}
    if args.simulate:
        from simulators.simulated_source import SimulatedSource
        source = SimulatedSource(cfg.simulator, args.rig, options)
        print(f"{SCREEN_TAP}{source.endpoint}", flush=True)
        return InServerRecorder(source=source, counter_options=counter)
    check_source(args.rig, options)   # name (built-in or plugin) and typed options, before the session folder
    return InServerRecorder(make_source=lambda: build_source(args.rig, options), counter_options=counter)
