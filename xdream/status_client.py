"""The reader's side of the status stream: a request (snapshot or control) and a subscriber.

A late joiner first subscribes, then asks for a snapshot, then applies the
events whose `seq` is larger than the snapshot's (zguide's "clone" pattern):
nothing published between the two is lost, nothing is applied twice.
"""

from __future__ import annotations

import zmq

from xdream.endpoints import split_tcp
from xdream.errors import ProtocolError, SessionError
from xdream.status_wire import STATUS_VERSION, pack, unpack_map


def request(ctx: zmq.Context, endpoint: str, op: str, token: str = "", by: str = "", timeout_s: float = 5.0) -> dict:
    """One request on the server's status socket; its reply (SessionError if none came,
    ProtocolError if the server refused it)."""
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.MAXMSGSIZE, 256 << 20)
    try:
        sock.connect(endpoint)
        sock.send(pack({"v": STATUS_VERSION, "op": op, "token": token, "by": by}))
        try:
            reply = unpack_map(sock.recv())
        except zmq.Again:
            raise SessionError(f"no answer from the status socket {endpoint} within {timeout_s:.0f} s") from None
    finally:
        sock.close(0)
    if not reply.get("ok"):
        raise ProtocolError(f"the server refused {op}: {reply.get('error')}")
    return reply


def pub_endpoint(status_endpoint: str, reply: dict) -> str:
    """Where to subscribe: the PUB port the snapshot reply names, on the host we reached."""
    host, _ = split_tcp(status_endpoint, "--server")
    _, port = split_tcp(str(reply["pub"]), "the server's status PUB endpoint")
    return f"tcp://{host}:{port}"


def subscriber(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 10_000)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock
