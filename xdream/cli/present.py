"""`xdream present`: the PsychoPy presentation client (imports no torch)."""

from __future__ import annotations

import logging

from xdream.curve import add_peer_flags, peer_keys

log = logging.getLogger("xdream")


def add_parser(sub) -> None:
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
    add_peer_flags(pr)
    pr.set_defaults(func=run)


def run(args) -> int:
    from stimulus_client import config as presenter_config
    from stimulus_client import runner
    from xdream.endpoints import check_connect

    cfg = presenter_config.apply_overrides(
        presenter_config.load(args.config), server=args.server, window_size=args.window_size,
        frame_rate=args.frame_rate, fullscreen=args.fullscreen, name=args.name, log_dir=args.log_dir)
    if cfg.connection.server:   # (none: the runner says so)
        check_connect(cfg.connection.server, "--server" if args.server else "connection.server")
    result = runner.run(cfg, headless=args.headless, screen_tap=args.screen_tap, curve=peer_keys(args))
    log.info("presented %d images, %d aborted (%s)", result.shown, result.aborted, result.reason)
    if result.reason.startswith("interrupted"):
        return 130
    return 0
