"""The wire protocol between the evolution server and its peers.

Imports neither torch nor psychopy: a stimulus PC needs only numpy, pyzmq and
msgpack.  docs/protocol.md is the prose version of this module.

A message is a ZeroMQ multipart message:

    frame 0        msgpack map: the envelope (v, type, session, seq, t, body)
    frames 1..n    raw uint8 image buffers, only for BLOCK and SCREEN_FRAME

The ROUTER side sees the peer's routing id in front of these frames.  Every
message is checked on receipt by `decode`, which raises ProtocolError with a
sentence a person can act on.
"""

from __future__ import annotations

import dataclasses
import math
import time
import types
import typing
from dataclasses import dataclass, field
from enum import Enum

import msgpack
import numpy as np

from xdream.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20  # a header this large is a bug or an attack


class MsgType(str, Enum):
    HELLO = "hello"            # peer -> server: who I am
    WELCOME = "welcome"        # server -> peer: session id and settings
    HEARTBEAT = "heartbeat"    # both ways, when nothing else was sent
    BLOCK = "block"            # server -> presenter: presentations + image frames
    BLOCK_INFO = "block_info"  # server -> recorder: the same presentations, no images
    SHOWN = "shown"            # presenter -> server: one presentation's report
    COUNTS = "counts"          # recorder -> server: one presentation's spike counts
    ACK = "ack"                # server -> peer: a SHOWN/COUNTS is on the journal
    ERROR = "error"            # server -> peer: your message was rejected, and why
    BYE = "bye"                # peer -> server: leaving on purpose
    END = "end"                # server -> peers: the session is over
    SCREEN_FRAME = "screen_frame"  # presenter -> simulated rig: what was drawn


ROLES = ("presenter", "recorder")
HELLO_FIRST = "say hello first"   # in an ERROR's reason: this server does not know you (restarted?)
SHOWN_STATUSES = ("shown", "aborted")
COUNT_STATUSES = ("ok", "missing")


# --------------------------------------------------------------------- bodies
@dataclass(frozen=True)
class Hello:
    role: str
    name: str
    channels: int = 0  # recorders: how many channels each COUNTS carries

    def check(self) -> None:
        if self.role not in ROLES:
            raise ProtocolError(f"hello.role must be one of {ROLES}, got {self.role!r}")
        if self.role == "recorder" and self.channels < 1:
            raise ProtocolError("hello from a recorder must say channels >= 1")


@dataclass(frozen=True)
class Welcome:
    peer_id: str
    heartbeat_s: float
    peer_timeout_s: float
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat:
    pass


@dataclass(frozen=True)
class PresentationSpec:
    pid: str          # presentation id, unique in the session
    code: int         # event code sent to the rig at onset
    image_id: str     # stable id of the image (thread/generation/index or ref name)
    height: int
    width: int

    def check(self) -> None:
        if not self.pid:
            raise ProtocolError("presentation id is empty")
        if not 0 < self.code < 65536:
            raise ProtocolError(f"event code {self.code} of {self.pid} is outside 1..65535")
        if not (0 < self.height <= 8192 and 0 < self.width <= 8192):
            raise ProtocolError(f"image of {self.pid} has an impossible size {self.height}x{self.width}")


@dataclass(frozen=True)
class Block:
    block_id: int
    generation: int
    presentations: list[PresentationSpec]

    def check(self) -> None:
        pids = [p.pid for p in self.presentations]
        if len(set(pids)) != len(pids):
            raise ProtocolError(f"block {self.block_id} repeats a presentation id")
        codes = [p.code for p in self.presentations]
        if len(set(codes)) != len(codes):
            raise ProtocolError(f"block {self.block_id} repeats an event code")


@dataclass(frozen=True)
class BlockInfo(Block):
    pass


@dataclass(frozen=True)
class Shown:
    block_id: int
    pid: str
    status: str
    onset: float | None = None   # flip time of the first frame, presenter clock (s)
    frames: int = 0              # frames the image was on screen
    dropped: int = 0             # frames that took longer than 1.5 refresh periods

    def check(self) -> None:
        if self.status not in SHOWN_STATUSES:
            raise ProtocolError(f"shown.status must be one of {SHOWN_STATUSES}, got {self.status!r}")
        if self.status == "shown" and (self.onset is None or not math.isfinite(self.onset)):
            raise ProtocolError(f"presentation {self.pid} reported shown without a finite onset")
        if self.frames < 0 or self.dropped < 0:
            raise ProtocolError(f"presentation {self.pid} reports negative frame counts")


@dataclass(frozen=True)
class Counts:
    block_id: int
    pid: str
    status: str
    counts: list[float] = field(default_factory=list)     # spikes in the response window, per channel
    baseline: list[float] = field(default_factory=list)   # spikes in the baseline window, per channel
    onset: float | None = None                            # onset in the rig's clock (s)

    def check(self) -> None:
        if self.status not in COUNT_STATUSES:
            raise ProtocolError(f"counts.status must be one of {COUNT_STATUSES}, got {self.status!r}")
        if self.status == "ok" and not self.counts:
            raise ProtocolError(f"counts for {self.pid} are 'ok' but empty")
        for name, values in (("counts", self.counts), ("baseline", self.baseline)):
            bad = [v for v in values if not math.isfinite(v) or v < 0]
            if bad:
                raise ProtocolError(f"{name} for {self.pid} hold values that are not finite and >= 0: {bad[:5]}")


@dataclass(frozen=True)
class Ack:
    ref_seq: int


@dataclass(frozen=True)
class Error:
    reason: str
    ref_seq: int = -1


@dataclass(frozen=True)
class Bye:
    reason: str = ""


@dataclass(frozen=True)
class End:
    reason: str = ""


@dataclass(frozen=True)
class ScreenFrame:
    """What the presenter drew on an onset frame, for a simulated rig's 'eye'.

    The rig's clock is the presenter's frame count times the nominal frame
    period: under Xvfb flips are not paced, and a simulated neuron must see
    the onsets a real display would have produced.
    """
    code: int
    frame_index: int
    frame_period: float
    flip_time: float
    height: int
    width: int


BODY_TYPES: dict[MsgType, type] = {
    MsgType.HELLO: Hello,
    MsgType.WELCOME: Welcome,
    MsgType.HEARTBEAT: Heartbeat,
    MsgType.BLOCK: Block,
    MsgType.BLOCK_INFO: BlockInfo,
    MsgType.SHOWN: Shown,
    MsgType.COUNTS: Counts,
    MsgType.ACK: Ack,
    MsgType.ERROR: Error,
    MsgType.BYE: Bye,
    MsgType.END: End,
    MsgType.SCREEN_FRAME: ScreenFrame,
}


# ------------------------------------------------------------------- envelope
@dataclass(frozen=True)
class Message:
    type: MsgType
    body: typing.Any
    session: str = ""
    seq: int = 0
    sent_at: float = 0.0
    frames: tuple = ()   # raw image buffers (bytes or memoryview)

    def images(self) -> list[np.ndarray]:
        """The image frames of a BLOCK or SCREEN_FRAME as (H, W, 3) uint8 views."""
        if self.type == MsgType.SCREEN_FRAME:
            shapes = [(self.body.height, self.body.width)]
        else:
            shapes = [(p.height, p.width) for p in self.body.presentations]
        return [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
                for buf, (h, w) in zip(self.frames, shapes)]


def encode(msg_type: MsgType, body, *, session: str = "", seq: int = 0,
           images: typing.Sequence[np.ndarray] = ()) -> list:
    """Envelope + raw image frames, ready for send_multipart(copy=False)."""
    if not isinstance(body, BODY_TYPES[msg_type]):
        raise TypeError(f"{msg_type.value} needs a {BODY_TYPES[msg_type].__name__} body")
    header = {"v": PROTOCOL_VERSION, "type": msg_type.value, "session": session,
              "seq": seq, "t": time.time(), "body": dataclasses.asdict(body)}
    frames = [msgpack.packb(header, use_bin_type=True)]
    for img in images:
        img = np.ascontiguousarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"images travel as (H, W, 3) uint8, got {img.dtype} {img.shape}")
        frames.append(img.data)  # a memoryview: zmq sends it without a copy
    return frames


def decode(frames: typing.Sequence) -> Message:
    """Parse and validate one multipart message (without the routing id)."""
    if not frames:
        raise ProtocolError("empty message")
    raw = _as_bytes(frames[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a map")
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not {PROTOCOL_VERSION}")
    try:
        msg_type = MsgType(header.get("type"))
    except ValueError:
        raise ProtocolError(f"unknown message type {header.get('type')!r}") from None
    session, seq, sent_at = header.get("session"), header.get("seq"), header.get("t")
    if not isinstance(session, str):
        raise ProtocolError("envelope.session must be a string")
    if not _is_int(seq) or seq < 0:
        raise ProtocolError("envelope.seq must be a non-negative integer")
    if not isinstance(sent_at, (int, float)) or isinstance(sent_at, bool):
        raise ProtocolError("envelope.t must be a number")
    body = _build(BODY_TYPES[msg_type], header.get("body"), msg_type.value)
    if hasattr(body, "check"):
        body.check()
    images = tuple(frames[1:])
    expected = _expected_image_bytes(msg_type, body)
    if len(images) != len(expected):
        raise ProtocolError(f"{msg_type.value} carries {len(images)} image frames, expected {len(expected)}")
    for i, (buf, nbytes) in enumerate(zip(images, expected)):
        if len(_as_buffer(buf)) != nbytes:
            raise ProtocolError(f"image frame {i} has {len(_as_buffer(buf))} bytes, expected {nbytes}")
    return Message(msg_type, body, session, seq, float(sent_at), tuple(_as_buffer(b) for b in images))


def _expected_image_bytes(msg_type: MsgType, body) -> list[int]:
    if msg_type == MsgType.BLOCK:
        return [p.height * p.width * 3 for p in body.presentations]
    if msg_type == MsgType.SCREEN_FRAME and body.height * body.width > 0:
        return [body.height * body.width * 3]
    return []  # a SCREEN_FRAME of size 0 marks the screen gone idle


def _build(cls, data, where: str):
    """Build dataclass `cls` from decoded msgpack `data`, checking every type."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{where} must be a map")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ProtocolError(f"{where} has unknown fields {sorted(unknown)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{where} is missing field {f.name!r}")
            continue
        kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
    return cls(**kwargs)


def _convert(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError(f"{where} must be a list")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        item = _build(hint, value, where)
        if hasattr(item, "check"):
            item.check()
        return item
    if hint is int:
        if not _is_int(value):
            raise ProtocolError(f"{where} must be an integer, got {type(value).__name__}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"{where} must be a number, got {type(value).__name__}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ProtocolError(f"{where} must be a string, got {type(value).__name__}")
        return value
    if hint is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where} must be a map")
        return value
    raise TypeError(f"no wire conversion for {hint}")  # a bug in this module, not bad input


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_bytes(frame) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _as_buffer(frame):
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
