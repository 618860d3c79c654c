"""The `xdream` command line: one module per command in this package.

    xdream dry-run                       the whole loop against a simulated neuron
    xdream serve CONFIG                  the evolution server
    xdream present --server ENDPOINT     the PsychoPy presentation client
    xdream record --server ENDPOINT ...  the recorder peer

Each role imports only what it needs: `present` never imports torch, and
`record` imports torch only to simulate a rig.  This package is the top layer
(docs/architecture.md): library modules never import it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from xdream.cli import (bench, bridge, convert_caffe, dashboard, dry_run, export, keys, present, record,
                        replay, report, serve, weights)
from xdream.errors import XdreamError

log = logging.getLogger("xdream")

COMMANDS = (dry_run, serve, present, weights, convert_caffe, bench, record, bridge, replay, export, keys, dashboard,
            report)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xdream", description="Closed-loop image evolution for visual neurons.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v: info, -vv: debug log lines")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p
