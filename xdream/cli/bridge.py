"""`xdream bridge`: presenter and recorder for a rig on XDream's file handshake."""

from __future__ import annotations

import logging

from xdream.curve import add_peer_flags, peer_keys

log = logging.getLogger("xdream")


def add_parser(sub) -> None:
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
    add_peer_flags(br)
    br.set_defaults(func=run)


def run(args) -> int:
    from recording_adapters.file_handshake_bridge import FileHandshakeBridge
    from xdream.endpoints import check_connect

    check_connect(args.server)

    bridge = FileHandshakeBridge(args.server, args.dir, args.channels, name=args.name,
                               image_format=args.image_format, answer_timeout_s=args.answer_timeout,
                               corrupt_after_s=args.corrupt_after, curve=peer_keys(args))
    reported = bridge.run()
    log.info("reported %d presentations (%d missing)", reported, bridge.missing)
    return 0
