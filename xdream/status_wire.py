"""The status stream's wire format, shared by the server's publisher and its readers.

The server (server/status.py) publishes on a PUB socket and answers requests on
a ROUTER socket (docs/protocol.md, "Status stream").  Both carry msgpack maps;
this module has the constants, the encoder and the checked decoder, and
imports neither torch nor zmq, so a dashboard or a notebook needs neither.

PUB messages are two frames: the kind as bytes (a SUB can filter on it) and a
msgpack map `{"v": STATUS_VERSION, "kind", "seq", "t", ...}`.  Requests and
replies on the ROUTER are one msgpack map each (after the REQ envelope).
"""

from __future__ import annotations

import msgpack

from xdream.errors import ProtocolError

STATUS_VERSION = 1
MAX_REQUEST_BYTES = 4096   # a request is an op and a token: anything larger is refused unread

# what the PUB socket carries, one kind per topic frame
KINDS = ("session", "block", "presentation", "generation", "peers", "control", "warning", "end")
# what the ROUTER socket answers
OPS = ("snapshot", "run", "pause", "resume", "stop")
CONTROL_OPS = ("pause", "resume", "stop")
STATES = ("running", "paused", "stopping", "ended")


def pack(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def unpack_map(raw: bytes, limit: int | None = None) -> dict:
    """One msgpack map, checked: a ProtocolError with a readable reason otherwise."""
    if limit is not None and len(raw) > limit:
        raise ProtocolError(f"message of {len(raw)} bytes, more than {limit}")
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(f"not msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"not a msgpack map but {type(body).__name__}")
    return body


def check_request(raw: bytes) -> dict:
    """A request on the ROUTER: `{"v": 1, "op": one of OPS, "token": str (optional)}`."""
    body = unpack_map(raw, MAX_REQUEST_BYTES)
    if body.get("v") != STATUS_VERSION:
        raise ProtocolError(f"status protocol version {body.get('v')!r}, this server speaks {STATUS_VERSION}")
    op = body.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown op {str(op)[:40]!r}; known: {', '.join(OPS)}")
    token = body.get("token", "")
    if not isinstance(token, str):
        raise ProtocolError("token must be a string")
    return body


def decode_event(frames: list[bytes]) -> dict:
    """A PUB message as a subscriber reads it; ProtocolError if it is not one."""
    if len(frames) != 2:
        raise ProtocolError(f"a status message has 2 frames, this one {len(frames)}")
    body = unpack_map(frames[1])
    if body.get("v") != STATUS_VERSION:
        raise ProtocolError(f"status protocol version {body.get('v')!r}, this reader speaks {STATUS_VERSION}")
    if body.get("kind") != frames[0].decode(errors="replace"):
        raise ProtocolError(f"topic {frames[0][:40]!r} and kind {str(body.get('kind'))[:40]!r} differ")
    return body
