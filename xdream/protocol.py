"""The wire protocol between the evolution server and its peers.

Imports neither torch nor psychopy: a stimulus PC needs only numpy, pyzmq and
msgpack.  docs/protocol.md is the prose version of this module.

A message is a ZeroMQ multipart message:

    frame 0        msgpack map: the envelope (v, type, session, seq, t, body)
    frames 1..n    raw uint8 image buffers, only for BLOCK and SCREEN_FRAME

The ROUTER side sees the peer's routing id in front of these frames.  Every
message is checked on receipt by `decode`, which raises ProtocolError with a
sentence a person can act on: the types, choices and ranges declared on the
body dataclasses below are checked by xdream.typed (msgspec), the rules that
tie fields together by each body's `_cross_checks`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Literal

import msgspec
import numpy as np
from msgspec import Meta

from xdream import typed
from xdream.errors import ProtocolError

PROTOCOL_VERSION = 1
# Additions to version 1 that a peer uses only when the server's WELCOME lists them in
# settings["features"]: an older server lists none (and would refuse their fields as unknown),
# a server accepts peers that never use them (every field below has a default).  Bumping `v`
# instead would cut every version-1 peer off a newer server (decode refuses another v).
FEATURES = ("spike_times",   # COUNTS.spike_times, in settings["spike_times_ms"]
            "rig_clock",     # RIG_CLOCK: the recorder's (wall time, rig time) pairs
            "trial",         # SHOWN.trial: the presenter's fixation trial of the presentation
            "pause")         # PAUSE / RESUME to a presenter that took it up (FEATURES)
MAX_HEADER_BYTES = 1 << 20  # a header this large is a bug or an attack
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_BYTES = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE * 3   # one image frame at the largest legal size
# the largest frame a peer may be sent (ZMQ_MAXMSGSIZE, which libzmq applies to each frame)
MAX_FRAME_BYTES = max(MAX_HEADER_BYTES, MAX_IMAGE_BYTES)


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
    RIG_CLOCK = "rig_clock"    # recorder -> server: a (wall time, rig time) pair (feature "rig_clock")
    PAUSED = "paused"          # presenter -> server: the operator paused the presenter (its pause key)
    RESUMED = "resumed"        # presenter -> server: ... and resumed it
    FEATURES = "features"      # peer -> server: the welcome's features this peer takes up
    PAUSE = "pause"            # server -> presenter: pause after the presentation on screen (feature "pause")
    RESUME = "resume"          # server -> presenter: ... and go on


Role = Literal["presenter", "recorder"]
ShownStatus = Literal["shown", "aborted"]
CountStatus = Literal["ok", "missing"]
ROLES = typing.get_args(Role)
HELLO_FIRST = "say hello first"   # in an ERROR's reason: this server does not know you (restarted?)
SHOWN_STATUSES = typing.get_args(ShownStatus)
COUNT_STATUSES = typing.get_args(CountStatus)
NonNegative = Annotated[int, Meta(ge=0)]
# strings a peer sends are journaled with every report: short, whatever it tries
Name = Annotated[str, Meta(min_length=1, max_length=128)]
Pid = Annotated[str, Meta(min_length=1, max_length=64)]
Text = Annotated[str, Meta(max_length=2000)]
EventCode = Annotated[int, Meta(ge=1, le=65535)]
ImageSide = Annotated[int, Meta(ge=0, le=8192)]   # 0: a SCREEN_FRAME of an idle screen; a BLOCK's are >= 1


# --------------------------------------------------------------------- bodies
class _Body:
    """What every body can do: `check` runs all of its rules on a body built in code.

    `decode` has the declared ones (types, Literal choices, Meta ranges) checked
    on the way in by xdream.typed and then runs only `_cross_checks`.
    """

    def check(self) -> None:
        typed.check(self, root=_ROOTS.get(type(self), type(self).__name__), error=ProtocolError)
        self._cross_checks()

    def _cross_checks(self) -> None:
        """The rules that tie fields together (none unless a body says so)."""


@dataclass(frozen=True)
class Hello(_Body):
    role: Role
    name: Name
    channels: NonNegative = 0  # recorders: how many channels each COUNTS carries

    def _cross_checks(self) -> None:
        if self.role == "recorder" and self.channels < 1:
            raise ProtocolError("hello from a recorder must say channels >= 1")


@dataclass(frozen=True)
class Welcome(_Body):
    peer_id: str
    heartbeat_s: float
    peer_timeout_s: float
    settings: dict[str, typing.Any] = field(default_factory=dict)

    def _cross_checks(self) -> None:
        # a peer runs its liveness on these: NaN would never time out, 0 would spin
        if not (0 < self.heartbeat_s <= 3600 and 0 < self.peer_timeout_s <= 86400):
            raise ProtocolError(f"welcome's heartbeat_s {self.heartbeat_s!r} and peer_timeout_s "
                                f"{self.peer_timeout_s!r} must be in 0..3600 s and 0..86400 s, above 0")


@dataclass(frozen=True)
class Heartbeat(_Body):
    pass


@dataclass(frozen=True)
class PresentationSpec(_Body):
    pid: Pid          # presentation id, unique in the session
    code: EventCode   # event code sent to the rig at onset
    image_id: str     # stable id of the image (thread/generation/index or ref name)
    height: int
    width: int

    def _cross_checks(self) -> None:
        if not (0 < self.height <= 8192 and 0 < self.width <= 8192):   # one rule on two fields
            raise ProtocolError(f"image of {self.pid} has an impossible size {self.height}x{self.width}")


@dataclass(frozen=True)
class Block(_Body):
    block_id: int
    generation: int
    presentations: list[PresentationSpec]

    def _cross_checks(self) -> None:
        for p in self.presentations:
            if not (0 < p.height <= 8192 and 0 < p.width <= 8192):
                p._cross_checks()   # raises, naming the image
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
class Shown(_Body):
    block_id: int
    pid: Pid
    status: ShownStatus
    onset: float | None = None   # flip time of the first frame, presenter clock (s)
    frames: NonNegative = 0      # frames the image was on screen
    dropped: NonNegative = 0     # frames that took longer than 1.5 refresh periods
    trial: Annotated[int, Meta(ge=-1)] = -1   # its fixation trial, numbered by the presenter (-1: none, or
    #                                           a presenter without the "trial" feature)

    def _cross_checks(self) -> None:
        if self.status == "shown" and (self.onset is None or not math.isfinite(self.onset)):
            raise ProtocolError(f"presentation {self.pid} reported shown without a finite onset")


@dataclass(frozen=True)
class Counts(_Body):
    block_id: int
    pid: Pid
    status: CountStatus
    counts: list[float] = field(default_factory=list)     # spikes in the response window, per channel
    baseline: list[float] = field(default_factory=list)   # spikes in the baseline window, per channel
    onset: float | None = None                            # onset in the rig's clock (s)
    # feature "spike_times": per channel, the spikes in the welcome's spike_times_ms span around the
    # onset, as integer microseconds from the onset, ascending ([]: not sent)
    spike_times: list[list[int]] = field(default_factory=list)

    def _cross_checks(self) -> None:
        if self.status == "ok" and not self.counts:
            raise ProtocolError(f"counts for {self.pid} are 'ok' but empty")
        if self.spike_times and self.status != "ok":
            raise ProtocolError(f"counts for {self.pid} are {self.status!r} but carry spike times")
        for name, values in (("counts", self.counts), ("baseline", self.baseline)):
            # sum and min in C first: NaN and inf make the sum non-finite (384 channels per message)
            if values and math.isfinite(sum(values)) and min(values) >= 0:
                continue
            bad = [v for v in values if not math.isfinite(v) or v < 0]
            if bad:
                raise ProtocolError(f"{name} for {self.pid} hold values that are not finite and >= 0: {bad[:5]}")


@dataclass(frozen=True)
class Ack(_Body):
    ref_seq: int


@dataclass(frozen=True)
class Error(_Body):
    reason: Text
    ref_seq: int = -1


@dataclass(frozen=True)
class Bye(_Body):
    reason: Text = ""


@dataclass(frozen=True)
class End(_Body):
    reason: Text = ""


@dataclass(frozen=True)
class Paused(_Body):
    reason: Text = ""


@dataclass(frozen=True)
class Resumed(_Body):
    reason: Text = ""


@dataclass(frozen=True)
class Features(_Body):
    """Which of the features its welcome listed this peer takes up: the ones that change what
    the server may send it (an older peer never sends this, so it is never sent them)."""
    features: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=16)]


@dataclass(frozen=True)
class Pause(_Body):
    reason: Text = ""


@dataclass(frozen=True)
class Resume(_Body):
    reason: Text = ""


@dataclass(frozen=True)
class ScreenFrame(_Body):
    """What the presenter drew on an onset frame, for a simulated rig's 'eye'.

    The rig's clock is the presenter's frame count times the nominal frame
    period: under Xvfb flips are not paced, and a simulated neuron must see
    the onsets a real display would have produced.
    """
    code: int
    frame_index: int
    frame_period: float
    flip_time: float
    height: ImageSide
    width: ImageSide


@dataclass(frozen=True)
class RigClock(_Body):
    """One reading of both clocks on the recorder: `wall` its time.time() (s since the epoch) when
    the rig had delivered everything up to `rig` (s, the rig's own clock: the watermark)."""
    wall: float
    rig: float

    def _cross_checks(self) -> None:
        if not (math.isfinite(self.wall) and math.isfinite(self.rig)):
            raise ProtocolError(f"rig_clock pair ({self.wall!r}, {self.rig!r}) is not finite")


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
    MsgType.RIG_CLOCK: RigClock,
    MsgType.PAUSED: Paused,
    MsgType.RESUMED: Resumed,
    MsgType.FEATURES: Features,
    MsgType.PAUSE: Pause,
    MsgType.RESUME: Resume,
}
_ROOTS = {cls: t.value for t, cls in BODY_TYPES.items()} | {PresentationSpec: "presentation"}


# ------------------------------------------------------------------- envelope
@dataclass(frozen=True)
class _Envelope:
    """Frame 0 as it travels; `decode` has checked v and type before it builds one."""
    v: int
    type: str
    session: str
    seq: NonNegative
    t: float
    body: typing.Any   # converted on its own, by the type that `type` names


def _enc_hook(obj):
    """Subclasses of the builtins (PsychoPy's float Timestamp of a flip, numpy scalars) as the builtins."""
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} cannot travel in a message body")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


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
              "seq": seq, "t": time.time(), "body": _without_unused_additions(body)}
    frames: list = [_ENCODER.encode(header)]   # msgspec writes the dataclass body as a map, in C
    for img in images:
        img = np.ascontiguousarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"images travel as (H, W, 3) uint8, got {img.dtype} {img.shape}")
        frames.append(img.data)  # a memoryview: zmq sends it without a copy
    return frames


# Fields added to version 1 (FEATURES) and their defaults: left off the wire at their default, so
# that a peer that does not use a feature sends exactly what an older server accepts.
_ADDITIONS: dict[type, dict[str, typing.Any]] = {Shown: {"trial": -1}, Counts: {"spike_times": []}}


def _without_unused_additions(body):
    additions = _ADDITIONS.get(type(body))
    if additions is None or any(getattr(body, k) != v for k, v in additions.items()):
        return body
    return {f.name: getattr(body, f.name) for f in dataclasses.fields(body) if f.name not in additions}


def decode(frames: typing.Sequence) -> Message:
    """Parse and validate one multipart message (without the routing id)."""
    if not frames:
        raise ProtocolError("empty message")
    raw = _as_bytes(frames[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgspec.msgpack.decode(raw)   # untyped: the version and type decide what the body must be
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: a bomb of nested arrays
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
    envelope = typed.convert(header, _Envelope, root="envelope", error=ProtocolError)
    body: typing.Any = typed.convert(envelope.body, BODY_TYPES[msg_type], root=msg_type.value, error=ProtocolError)
    body._cross_checks()
    images = tuple(_as_buffer(b) for b in frames[1:])
    expected = _expected_image_bytes(msg_type, body)
    if len(images) != len(expected):
        raise ProtocolError(f"{msg_type.value} carries {len(images)} image frames, expected {len(expected)}")
    for i, (buf, nbytes) in enumerate(zip(images, expected)):
        if buf.nbytes != nbytes:
            raise ProtocolError(f"image frame {i} has {buf.nbytes} bytes, expected {nbytes}")
    return Message(msg_type, body, envelope.session, envelope.seq, envelope.t, images)


def _expected_image_bytes(msg_type: MsgType, body) -> list[int]:
    if msg_type == MsgType.BLOCK:
        return [p.height * p.width * 3 for p in body.presentations]
    if msg_type == MsgType.SCREEN_FRAME and body.height * body.width > 0:
        return [body.height * body.width * 3]
    return []  # a SCREEN_FRAME of size 0 marks the screen gone idle


def _as_bytes(frame) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _as_buffer(frame):
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
