"""`xdream keys`: CURVE key pairs for a server on a lab LAN and its peers (xdream/curve.py)."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    k = sub.add_parser("keys", help="make CURVE keys: a server key pair and one key pair per client "
                                    "(presenter, recorder, ...) for a server bound beyond loopback")
    k.add_argument("folder", help="the keys folder (created; an existing server key is kept)")
    k.add_argument("--client", action="append", metavar="NAME", required=True,
                   help="a client's name, e.g. presenter or recorder (repeat for more)")
    k.set_defaults(func=run)


def run(args) -> int:
    from xdream.curve import make_keys

    folder = Path(args.folder)
    made = make_keys(folder, args.client)
    print(f"server key pair (keep on the server PC): {made['server']}")
    print(f"server public key (give to each client):  {folder / 'server' / 'server.key'}")
    print(f"allowed clients (the server's --curve-allowed-clients): {folder / 'allowed'}")
    for name in args.client:
        print(f"client {name}: copy {made[name].parent} to its PC; --curve-key {made[name]} "
              f"--curve-server-key {made[name].parent / 'server.key'}")
    return 0
