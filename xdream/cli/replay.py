"""`xdream replay`: re-derive a session from its journal; --realtime re-sends it to peers."""

from __future__ import annotations

import time
from pathlib import Path

from xdream.stdout_lines import LISTENING


def add_parser(sub) -> None:
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
    rp.set_defaults(func=run)


def run(args) -> int:
    if args.realtime:
        return _realtime(args)
    from server.replay import replay

    result = replay(args.session)
    for line in result.lines():
        print(line, flush=True)
    return 0 if result.ok else 1


def _realtime(args) -> int:
    from server.replay_realtime import RealtimeReplay

    folder = Path(args.session)
    out = Path(args.out) if args.out else folder / "replays" / time.strftime("replay-%Y%m%d-%H%M%S")
    replay = RealtimeReplay(folder, out, bind=args.bind, speed=args.speed, with_recorder=not args.no_recorder)
    print(f"replay folder: {out}", flush=True)
    print(f"{LISTENING}{replay.endpoint}", flush=True)
    comparison = replay.run()
    for line in comparison.lines():
        print(line, flush=True)
    return 0 if comparison.ok else 1
