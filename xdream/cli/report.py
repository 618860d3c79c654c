"""`xdream report`: a session as one self-contained HTML page and PNG figures (server/report.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from xdream.errors import ConfigError

log = logging.getLogger("xdream")


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="a session as one self-contained HTML page (trajectories, best images, "
                                      "reference drift, rig health, config) with its PNG figures beside it")
    r.add_argument("session", help="the session folder")
    r.add_argument("--out", metavar="FILE.html",
                   help="the page (default SESSION/report/report.html); figures go beside it as FILE-NAME.png")
    r.add_argument("--every", type=int, metavar="N",
                   help="the montage shows the best image of every N-th generation (default: at most 16 a thread)")
    r.add_argument("--latest-images", type=int, default=None, metavar="N",
                   help="the latest generation's best N images per thread, made again from the codes on the CPU "
                        "(default 40; 0: none, no generator built)")
    r.set_defaults(func=run)


def run(args) -> int:
    from server.latest import LATEST_IMAGES
    from server.report import write_report

    if args.every is not None and args.every < 1:
        raise ConfigError("--every must be 1 or more")
    if args.latest_images is not None and args.latest_images < 0:
        raise ConfigError("--latest-images must be 0 or more")
    limit = LATEST_IMAGES if args.latest_images is None else args.latest_images
    report = write_report(args.session, Path(args.out) if args.out else None, args.every, limit)
    for note in report.notes:
        log.warning("report: %s", note)
        print(f"note: {note}", flush=True)
    for path in report.figures:
        print(f"wrote {path}", flush=True)
    print(f"wrote {report.html}", flush=True)
    return 0
