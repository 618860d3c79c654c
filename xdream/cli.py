"""The `xdream` command line.

    xdream dry-run                       the whole loop against a simulated neuron
    xdream serve CONFIG                  the evolution server
    xdream present --server ENDPOINT     the PsychoPy presentation client
    xdream record --server ENDPOINT ...  the recorder peer

Each role imports only what it needs: `present` never imports torch, and
`record` imports torch only to simulate a rig.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from xdream import config as config_mod
from xdream.errors import ConfigError, XdreamError

log = logging.getLogger("xdream")

LISTENING = "server listening on "
SESSION_FOLDER = "session folder: "
SCREEN_TAP = "screen tap on "


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose >= 2 else logging.INFO if args.verbose else logging.WARNING,
                        format=f"%(asctime)s {args.command:>7} %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return args.func(args)
    except XdreamError as exc:
        log.error("%s", exc)
        print(f"xdream {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xdream", description="Closed-loop image evolution for visual neurons.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v: info, -vv: debug log lines")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("dry-run", help="run server, presenter and a simulated rig+recorder as separate "
                                       "processes on 127.0.0.1, on the embedded default config")
    d.add_argument("config", nargs="?", help="config file (TOML/JSON); default: the embedded one")
    d.add_argument("--generations", type=int, help="override session.generations")
    d.add_argument("--out", help="override session.out_dir (where the session folder goes)")
    d.add_argument("--window", action="store_true",
                   help="present in a real PsychoPy window (needs a display) instead of headless")
    d.add_argument("--presenter-config", metavar="FILE",
                   help="the presenter's own config (monitor, simulated eye, markers, trials); "
                        "see stimulus_client/presenter.example.toml and configs/presenter-dry-run.toml")
    d.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    d.add_argument("--rig", metavar="NAME",
                   help="run the simulated neuron behind this rig's real wire format (openephys, intan, lsl, "
                        "...): the recorder uses the real adapter; default: the in-process simulated rig")
    d.add_argument("--recorder", choices=["process", "in-server"], default="process",
                   help="run the recorder as its own process (default, like `xdream record`) or as a thread "
                        "of the server's process (like `xdream serve --rig`)")
    d.set_defaults(func=_cmd_dry_run)

    s = sub.add_parser("serve", help="the evolution server: binds a ROUTER socket and runs the session")
    s.add_argument("config", nargs="?",
                   help="config file (TOML, or a session's config.json); 'default' for the embedded one")
    s.add_argument("--generations", type=int, help="override session.generations")
    s.add_argument("--out", help="override session.out_dir")
    s.add_argument("--bind", help="override network.bind, e.g. tcp://0.0.0.0:5555 for peers on other PCs; "
                                  "with --resume: instead of the endpoint the session last listened on")
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
    s.add_argument("--missing-after", type=float, default=30.0, metavar="S",
                   help="in-process recorder: as `xdream record --missing-after` (default 30)")
    s.set_defaults(func=_cmd_serve)

    pr = sub.add_parser("present", help="the presentation client (PsychoPy; needs no torch)")
    pr.add_argument("--config", metavar="FILE",
                    help="the stimulus PC's presenter config (TOML: monitor, geometry, markers, eye, trials, "
                         "keys); the flags below override it (see docs/presenter.md)")
    pr.add_argument("--server", help="the server's endpoint, e.g. tcp://192.168.1.10:5555 "
                                     "(default: connection.server in --config)")
    pr.add_argument("--headless", action="store_true",
                    help="no window: timestamp frames without drawing (for machines with no display)")
    pr.add_argument("--fullscreen", action="store_true", default=None, help="open the window full screen")
    pr.add_argument("--window-size", type=int, nargs=2, metavar=("W", "H"),
                    help="window size in pixels (monitor.resolution; default 800 600)")
    pr.add_argument("--frame-rate", type=float,
                    help="the monitor's refresh rate in Hz; durations are counted in its frames "
                         "(monitor.refresh_hz; default 60)")
    pr.add_argument("--screen-tap", help="send each onset frame as drawn to a simulated rig at this endpoint")
    pr.add_argument("--name", help="this peer's name in the journal (connection.name; default presenter)")
    pr.add_argument("--log-dir", help="folder for the presenter's JSONL log (log.dir; default: the current folder)")
    pr.set_defaults(func=_cmd_present)

    w = sub.add_parser("weights", help="list the known generator weights, check them, download missing ones")
    w.add_argument("--dir", help="the weights folder (default: $XDREAM_WEIGHTS, else ~/.cache/xdream/weights)")
    w.add_argument("--download", nargs="+", metavar="NAME",
                   help="download these generators' weights ('all' for every one) and verify the SHA-256")
    w.add_argument("--json", action="store_true", help="print the listing as JSON")
    w.set_defaults(func=_cmd_weights)

    cv = sub.add_parser("convert-caffe", help="convert an original DeePSiM caffemodel to a state dict "
                                              "(no Caffe needed)")
    cv.add_argument("caffemodel", help="generator.caffemodel of the original release")
    cv.add_argument("--layer", required=True, help="which generator: norm1, norm2, conv3, conv4, pool5, "
                                                  "fc6, fc7 or fc8")
    cv.add_argument("--out", required=True, help="where to write the state dict (.pt)")
    cv.set_defaults(func=_cmd_convert_caffe)

    b = sub.add_parser("bench", help="benchmarks: 'generators' (images per second against the compute bound), "
                                     "'optimizers' (the GECCO 2022 optimizer benchmark on AlexNet units)")
    b.add_argument("what", choices=["generators", "optimizers", "adapters"],
                   help="what to measure ('adapters': 384-channel rigs through each simulated wire format)")
    b.add_argument("--json", action="store_true", help="print the figures as JSON")
    b.add_argument("--batch", type=int, default=40, help="images per generation (default 40)")
    b.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    b.add_argument("--suite", choices=["quick", "gecco"], default="quick",
                   help="optimizers: 'quick' (2 units, under 20 min on 2 CPU cores) or 'gecco' (the published "
                        "protocol: 7 layers x 10 units x 5 seeds, for a GPU or a cluster)")
    b.add_argument("--optimizers", help="optimizers: comma-separated kinds (default: the suite's)")
    b.add_argument("--out", default="bench-optimizers", help="optimizers: results folder (default bench-optimizers)")
    b.add_argument("--list-jobs", action="store_true", help="optimizers: print one JSON job per line and exit")
    b.add_argument("--job", help="optimizers: run one job (a line of --list-jobs, or @FILE) into --out")
    b.add_argument("--workers", type=int, default=1, help="optimizers: worker processes (default 1)")
    b.add_argument("--device", default="auto", help="optimizers: auto, cpu or cuda (default auto)")
    b.add_argument("--generator-weights", metavar="FILE", help="optimizers: DeePSiM fc6 state dict "
                                                               "(default: seeded random weights)")
    b.add_argument("--alexnet-weights", metavar="FILE", help="optimizers: torchvision-style AlexNet state dict "
                                                             "(default: seeded random weights)")
    b.add_argument("--layers", help="optimizers: comma-separated AlexNet layers (overrides the suite's)")
    b.add_argument("--channels", type=int, help="optimizers: channels 0..N-1 of each layer")
    b.add_argument("--channel-list", help="optimizers: comma-separated channels of each layer")
    b.add_argument("--seeds", type=int, help="optimizers: seeds 0..N-1 per unit and noise level")
    b.add_argument("--sigmas", help="optimizers: comma-separated noise levels (default 0,0.2,0.5)")
    b.add_argument("--generations", type=int, help="optimizers: generations per run (default 75)")
    b.add_argument("--wb-norm", type=float, help="optimizers: white-box code-norm bound (default 512 = 8 x 64)")
    b.add_argument("--wb-restarts", type=int, help="optimizers: white-box restarts")
    b.add_argument("--wb-steps", type=int, help="optimizers: white-box Adam steps")
    b.add_argument("--seconds", type=float, default=20.0, help="adapters: rig seconds of codes per rig (default 20)")
    b.add_argument("--rigs", help="adapters: comma-separated rigs (default: every one with a simulated peer)")
    b.set_defaults(func=_cmd_bench)

    r = sub.add_parser("record", help="the recorder peer: rig events in, spike counts per presentation out")
    r.add_argument("--server", required=True, help="the server's endpoint")
    r.add_argument("--simulate", metavar="CONFIG",
                   help="simulate the rig with ConvNet units from CONFIG's [simulator] ('default' for the "
                        "embedded config); it listens for the presenter's --screen-tap")
    r.add_argument("--replay", metavar="SESSION",
                   help="instead of --simulate: a rig whose neuron is SESSION's journal; it fires the recorded "
                        "counts at each onset the presenter's --screen-tap shows (for `xdream replay --realtime`)")
    r.add_argument("--tap-bind", default="tcp://127.0.0.1:0", help="where the simulated rig listens")
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
    r.set_defaults(func=_cmd_record)

    br = sub.add_parser("bridge", help="join as presenter and recorder for a MATLAB/MonkeyLogic rig on XDream's "
                                       "file handshake (images out, block###.mat/.h5 in; docs/adapters.md)")
    br.add_argument("--server", required=True, help="the server's endpoint")
    br.add_argument("--dir", required=True, help="the handshake folder the rig watches (empty at start)")
    br.add_argument("--channels", type=int, required=True, help="columns of the rig's tEvokedResp")
    br.add_argument("--image-format", choices=["png", "bmp"], default="png", help="image files (default png)")
    br.add_argument("--answer-timeout", type=float, default=600.0,
                    help="seconds to wait for a block's answer before reporting it missing (default 600)")
    br.add_argument("--corrupt-after", type=float, default=5.0,
                    help="an answer unreadable and unchanged this long is corrupt (default 5 s)")
    br.add_argument("--name", default="xdream-files", help="this peer's name in the journal")
    br.set_defaults(func=_cmd_bridge)

    rp = sub.add_parser("replay", help="re-derive a session's every generation from its recorded responses "
                                       "and check the codes bit for bit; --realtime re-sends it to peers")
    rp.add_argument("session", help="the session folder")
    rp.add_argument("--realtime", action="store_true",
                    help="act as the server: re-send the recorded blocks at their recorded times to a presenter "
                         "(and a recorder fed by `xdream record --replay SESSION`), compare what comes back")
    rp.add_argument("--bind", default="tcp://127.0.0.1:0", help="--realtime: where to listen")
    rp.add_argument("--speed", type=float, default=1.0, help="--realtime: time runs this many times faster")
    rp.add_argument("--no-recorder", action="store_true",
                    help="--realtime: test a presenter alone (no counts are compared)")
    rp.add_argument("--out", help="--realtime: the replay's own session folder (default SESSION/replays/STAMP)")
    rp.set_defaults(func=_cmd_replay)

    ex = sub.add_parser("export", help="a session as NWB (pynwb) and/or CSV tables")
    ex.add_argument("session", help="the session folder")
    ex.add_argument("--nwb", metavar="OUT.nwb", help="write an NWB file")
    ex.add_argument("--csv", metavar="DIR", help="write presentations.csv and generations.csv into DIR")
    ex.add_argument("--no-images", action="store_true",
                    help="NWB: leave the images out (they are regenerated from the codes, which takes time)")
    ex.add_argument("--subject-id", help="NWB: the animal's id (default 'unknown')")
    ex.add_argument("--species", help="NWB: the animal's species, e.g. 'Macaca mulatta'")
    ex.add_argument("--sex", default="U", choices=["M", "F", "O", "U"], help="NWB: the animal's sex (default U)")
    ex.add_argument("--age", help="NWB: the animal's age, ISO 8601 (P7Y); default 'P0D/' (unknown)")
    ex.set_defaults(func=_cmd_export)
    return p


def _load(path: str | None) -> config_mod.Config:
    return config_mod.load(None if path in (None, "default") else path)


def _cmd_serve(args) -> int:
    import asyncio

    from server.app import EvolutionServer
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
        server_options = {"resume": True, "bind": args.bind}
    else:
        if not args.config:
            raise ConfigError("serve needs a CONFIG (or --resume SESSION)")
        cfg = _load(args.config)
        if args.generations is not None:
            cfg.session.generations = args.generations
        if args.out:
            cfg.session.out_dir = args.out
        if args.bind:
            cfg.network.bind = args.bind
        cfg.validate()
        folder = _new_session_folder(Path(cfg.session.out_dir), cfg.session.name)
        server_options = {}
    recorder = _in_server_recorder(args, cfg)   # first: a wrong rig option leaves no session folder behind
    try:
        server = EvolutionServer(cfg, folder, **server_options)
    except BaseException:
        if recorder is not None:
            recorder.stop()
        raise
    print(f"{SESSION_FOLDER}{folder}", flush=True)

    def on_endpoint(endpoint: str) -> None:
        print(f"{LISTENING}{endpoint}", flush=True)
        if recorder is not None:
            recorder.start(endpoint)   # only starts its thread: the loop never waits on the rig

    def on_generation(generation: int, records: list[dict]) -> None:
        parts = [f"{r['thread']}: mean {r['mean']:6.2f} max {r['max']:6.2f}" for r in records]
        print(f"gen {generation:3d} | " + " | ".join(parts) +
              f" | ref {records[0]['ref_mean']:6.2f} | {records[0]['seconds']:5.2f} s", flush=True)

    try:
        summary = asyncio.run(server.run(on_endpoint=on_endpoint, on_generation=on_generation))
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


def _in_server_recorder(args, cfg):
    """The recorder for `serve --rig/--simulate`, or None; a simulated rig's screen tap is printed."""
    if args.rig_option and not args.rig:
        raise ConfigError("--rig-option needs --rig NAME")
    if not args.rig and not args.simulate:
        return None
    from recording_adapters.in_process import InServerRecorder
    from recording_adapters.sources import ADAPTERS, build_source, check_options, load_class, parse_options

    options = parse_options(args.rig_option)
    counter = {"timeout_s": args.missing_after}
    if args.simulate:
        from simulators.simulated_source import SimulatedSource
        source = SimulatedSource(cfg.simulator, args.rig, options)
        print(f"{SCREEN_TAP}{source.endpoint}", flush=True)
        return InServerRecorder(source=source, counter_options=counter)
    check_options(load_class(ADAPTERS, args.rig, "rig adapter"), options, f"rig adapter {args.rig!r}")
    return InServerRecorder(make_source=lambda: build_source(args.rig, options), counter_options=counter)


def _new_session_folder(out_dir: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = out_dir / f"{name}-{stamp}"
    n = 1
    while folder.exists():
        n += 1
        folder = out_dir / f"{name}-{stamp}-{n}"
    return folder


def _cmd_present(args) -> int:
    from stimulus_client import config as presenter_config
    from stimulus_client import runner

    cfg = presenter_config.apply_overrides(
        presenter_config.load(args.config), server=args.server, window_size=args.window_size,
        frame_rate=args.frame_rate, fullscreen=args.fullscreen, name=args.name, log_dir=args.log_dir)
    result = runner.run(cfg, headless=args.headless, screen_tap=args.screen_tap)
    log.info("presented %d images, %d aborted (%s)", result.shown, result.aborted, result.reason)
    if result.reason.startswith("interrupted"):
        return 130
    return 0


def _cmd_record(args) -> int:
    from recording_adapters.recorder import Recorder
    from xdream.peer import PeerConnection

    from recording_adapters.sources import build_source, parse_options

    options = parse_options(args.rig_option)
    if not args.simulate and not args.replay:
        if not args.rig:
            print("xdream record: say which rig (--rig NAME, see docs/adapters.md) or --simulate CONFIG",
                  file=sys.stderr)
            return 2
        source = build_source(args.rig, options)
        conn = PeerConnection(args.server, "recorder", args.name, channels=source.channels)
        log.info("reported counts for %d presentations", Recorder(conn, source, _counter_options(args)).run())
        return 0
    if args.replay:  # the neuron is a recorded session's journal (xdream replay --realtime)
        from simulators.replay_rig import ReplayRig
        neuron = ReplayRig(args.replay, bind=args.tap_bind)
    else:
        from simulators.rig import SimulatedRig
        neuron = SimulatedRig(_load(args.simulate).simulator, bind=args.tap_bind)
    # with --rig, the neuron's events go through that rig's simulated wire peer to the real adapter
    from simulators.simulated_source import SimulatedSource
    try:
        source = SimulatedSource(rig=args.rig or None, rig_options=options, neuron=neuron)
    except BaseException:
        neuron.close()
        raise
    try:
        print(f"{SCREEN_TAP}{source.endpoint}", flush=True)  # only once the adapter is built
        conn = PeerConnection(args.server, "recorder", args.name, channels=source.channels)
        log.info("reported counts for %d presentations", Recorder(conn, source, _counter_options(args)).run())
    finally:
        source.close()
    return 0


def _cmd_bridge(args) -> int:
    from recording_adapters.xdream_bridge import XdreamFilesBridge

    bridge = XdreamFilesBridge(args.server, args.dir, args.channels, name=args.name,
                               image_format=args.image_format, answer_timeout_s=args.answer_timeout,
                               corrupt_after_s=args.corrupt_after)
    reported = bridge.run()
    log.info("reported %d presentations (%d missing)", reported, bridge.missing)
    return 0


def _counter_options(args) -> dict:
    lag = args.photodiode_max_lag_ms
    return {"timeout_s": args.missing_after, "photodiode_max_lag_s": None if lag is None else lag / 1000.0,
            "photodiode_miss": args.photodiode_miss}


def _cmd_weights(args) -> int:
    from server.weights import cli_weights
    return cli_weights(args)


def _cmd_convert_caffe(args) -> int:
    from server.generators.caffe import cli_convert
    return cli_convert(args)


def _cmd_bench(args) -> int:
    if args.what == "adapters":
        from recording_adapters.bench import cli_bench_adapters
        return cli_bench_adapters(args)
    if args.what == "optimizers":
        from server.bench_optimizers import cli_bench_optimizers
        return cli_bench_optimizers(args)
    from server.bench import cli_bench
    return cli_bench(args)


def _cmd_replay(args) -> int:
    from server.replay import cli_replay
    return cli_replay(args)


def _cmd_export(args) -> int:
    from server.export import cli_export
    return cli_export(args)


def _cmd_dry_run(args) -> int:
    from xdream.dryrun import run_dry_run

    return run_dry_run(args.config, generations=args.generations, out=args.out, window=args.window,
                       presenter_config=args.presenter_config, timeout_s=args.timeout, verbose=args.verbose,
                       rig=args.rig, recorder=args.recorder)


if __name__ == "__main__":
    sys.exit(main())
