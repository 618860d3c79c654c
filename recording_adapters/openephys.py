"""Open Ephys GUI: its "ZMQ Interface" and "Event Broadcaster" plugins.

Wire formats as the plugins' code sends them (docs/adapters.md section 3 cites
the files and lists where their docs disagree):

ZMQ Interface (open-ephys-plugins/zmq-interface, Source/ZmqInterface.cpp):
PUB on the data port (default 5556), REP heartbeat socket on data port + 1.
Each message has three frames, or two for an event without payload:
  1. envelope: b"DATA\\0" or b"EVENT\\0" (strlen + 1: the NUL is sent)
  2. a JSON header: {"message_num", "type": "data"|"event"|"spike", ..., "data_size", "timestamp"}
     data:  "content": {"stream", "channel_num", "num_samples", "sample_num", "sample_rate"}
     event: "content": {"stream", "source_node", "type" (3 = TTL), "sample_num"}
     spike: "spike":   {"stream", "source_node", "electrode" (a name), "sample_num",
                        "num_channels", "num_samples", "sorted_id", "threshold"}
  3. data: float32 samples of one channel; event: the TTL payload (uint8 line,
     uint8 state, uint64 word, little-endian); spike: the float32 waveform.

Event Broadcaster (open-ephys-plugins/event-broadcaster, Source/EventBroadcaster.cpp):
PUB (default port 5557), two frames: a uint16 (0 TTL, 1 spike), then JSON
  TTL:   {"event_type": "ttl", "stream", "source_node", "sample_rate", "channel_name",
          "sample_number", "line", "state"}
  spike: {"event_type": "spike", "stream", "source_node", "electrode", "num_channels",
          "sample_rate", "sample_number", "sorted_id", "amp1", ...}
or raw binary (the GUI's event packet, plugin-GUI Source/Processors/Events/Event.h, Spike.cpp):
  uint8 base type (1 processor event, 2 spike), uint8 sub-type (3 TTL), uint16 node,
  uint16 stream, uint16 channel index, int64 sample number, float64 timestamp, then
  TTL: uint8 line, uint8 state, uint64 word; spike: uint16 sorted id, thresholds, waveform.

Event codes: OE sends one TTL event per line change, all changes of one sample
with the same sample number.  The adapter applies a sample's changes together,
then reads the code lines (`code_lines`, default 0-7) from the resulting word:
with `strobe_line`, a code is read when the strobe line rises; without, a code
is read whenever the code lines go from 0 (or another value) to a new nonzero
value.  `photodiode_line`: its rising edges are photodiode crossings.

Watermark: the ZMQ Interface sends a block's events before the block's
continuous data, so a data message for samples [s, s+n) means every event
before s+n has been sent (at least one channel must be selected in the plugin),
except a spike whose peak lies just before the block (a detector needs samples
after the peak): the watermark trails s+n by `lag_ms` (default 20 ms).  The
Event Broadcaster sends no continuous data: the watermark trails the latest
event by `lag_ms` (default 100 ms, more than one processing block), and stalls
when no events come.

The GUI's own recording (`record_raw`, off by default): over the GUI's HTTP
remote-control API (port `http_port`, 37497), the session starts a recording
named after it and stops only that one; recording_adapters/openephys_control.py
says how and cites the upstream code.  Off, nothing is sent to that port.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import zmq

from recording_adapters.base import RigSource
from recording_adapters.events import RigEvents, as_rate
from recording_adapters.holdback import CodeHold
from recording_adapters.openephys_control import DEFAULT_HTTP_PORT, GuiHttp, GuiRecording
from recording_adapters.options import Hertz, OptionError, Port, PositiveSeconds, Range, Seconds, SourceOptions
from xdream.logs import RateLimitedLog


def _json_loads(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8"))


_fast_loads: Callable[[bytes], Any]
try:    # a ZMQ Interface header per spike: orjson parses one in ~0.6 us, json in ~2.3 us
    from orjson import loads as _fast_loads
except ImportError:   # the `record` extra pins it; without it, json does the same, slower
    _fast_loads = _json_loads

log = logging.getLogger(__name__)

PLUGINS = ("zmq-interface", "event-broadcaster")
DEFAULT_PORT = {"zmq-interface": 5556, "event-broadcaster": 5557}
DEFAULT_LAG_MS = {"zmq-interface": 20, "event-broadcaster": 100}
Line = Annotated[int, Range(0, 63)]          # a TTL line of the GUI's 64-bit word
TTL_PAYLOAD = struct.Struct("<BBQ")          # line, state, word
EVENT_HEAD = struct.Struct("<BBHHHqd")       # base type, sub-type, node, stream, channel, sample, timestamp
SORTED_ID = struct.Struct("<H")
PROCESSOR_EVENT, SPIKE_EVENT, TTL = 1, 2, 3
HEARTBEAT_S = 2.0
STALL_WARN_S = 5.0
MAX_MESSAGES_PER_POLL = 20000


class BadPacket(Exception):
    """A message that does not follow the plugin's format."""


@dataclass
class _Batch:
    codes: list = field(default_factory=list)       # (sample, code)
    spike_samples: list = field(default_factory=list)
    spike_channels: list = field(default_factory=list)
    photodiode: list = field(default_factory=list)  # samples

    def empty(self) -> bool:
        return not (self.codes or self.spike_samples or self.photodiode)


@dataclass(frozen=True)
class OpenEphysOptions(SourceOptions):
    host: str = "127.0.0.1"
    port: Port | None = None                      # None: the plugin's default (5556, 5557)
    plugin: Literal["zmq-interface", "event-broadcaster"] = "zmq-interface"
    channels: Annotated[int, Range(1)] = 32
    electrodes: tuple[str, ...] = ()              # electrode names in channel order
    electrode_base: int = 1
    code_lines: tuple[Line, ...] = tuple(range(8))
    strobe_line: Line | None = None
    photodiode_line: Line | None = None
    sample_rate: Hertz | None = None              # None: from the stream
    lag_ms: Annotated[int, Range(0)] | None = None   # None: the plugin's default (20, 100)
    heartbeat: bool = True
    hold_s: Seconds = 0.3                         # a code goes on once the stream is whole this far past it
    record_raw: bool = False                      # the GUI records the session (HTTP API), named after it
    http_port: Port = DEFAULT_HTTP_PORT           # the GUI's HTTP remote-control port (record_raw only)
    record_dir: str = ""                          # the recording's parent folder on the GUI's PC; "": the GUI's
    http_timeout_s: PositiveSeconds = 5.0         # one HTTP request to the GUI (RECORD waits for the GUI to start)

    def check(self) -> None:
        if not self.code_lines:
            raise OptionError("code_lines", self.code_lines, "at least one line, e.g. 0-7")
        if self.record_dir and not self.record_raw:
            raise OptionError("record_dir", self.record_dir, "empty unless record_raw is true (it is the folder "
                              "of the GUI's own recording)")


class OpenEphysSource(RigSource):
    name = "openephys"
    Options = OpenEphysOptions

    def _open(self, o: OpenEphysOptions) -> None:
        self.plugin = o.plugin
        self.channels = o.channels
        self.port = o.port if o.port is not None else DEFAULT_PORT[o.plugin]
        self.electrodes = {name: i for i, name in enumerate(o.electrodes)}
        self.electrode_base = o.electrode_base
        self.code_lines = list(o.code_lines)
        self.strobe_line = o.strobe_line
        self.photodiode_line = o.photodiode_line
        self.fixed_rate = o.sample_rate
        self.lag_s = (o.lag_ms if o.lag_ms is not None else DEFAULT_LAG_MS[o.plugin]) / 1000.0
        self.rate: float | None = self.fixed_rate
        self._rate_wait_since: float | None = None   # events waiting for the rate since (ZMQ Interface)
        self.bad_packets = 0
        self._bad_log = RateLimitedLog(log, burst=20)   # the first 20, then one line per 10 s
        self.dropped_spikes = 0
        self.clock_jumps = 0
        self._unknown_electrodes: set = set()
        self._wm_sample: int | None = None        # every event before this sample has arrived
        self._word = 0                            # TTL word after the last applied sample group
        self._group: list[tuple[int, int, int]] = []   # (line, state, word|-1) of the open sample
        self._group_sample: int | None = None
        self._batch = _Batch()
        self._stash: list = []                    # messages from a clock jump on, for the next poll
        self._last_message = time.monotonic()
        self._stalled = False
        self.stall_warn_s = STALL_WARN_S
        self.recording: GuiRecording | None = None
        if o.record_raw:    # a GUI that cannot be reached fails the start, and says where
            recording = GuiRecording(GuiHttp(o.host, o.http_port, o.http_timeout_s), o.record_dir)
            log.info("openephys: record_raw: the GUI's HTTP server at %s answers, mode %s; its recording starts "
                     "with the session", recording.http.base, recording.status())
            self.recording = recording
        ctx: zmq.Context = zmq.Context.instance()
        self.socket = ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.setsockopt(zmq.RCVHWM, 0)      # queue rather than drop here; the GUI's own PUB may drop
        self.lost_messages = 0
        self._message_num: int | None = None
        self.hold_s = o.hold_s
        self.hold: CodeHold | None = None         # made once the sample rate is known (it counts in samples)
        self._data_end: int | None = None         # end of the latest data message: the block before it is whole
        self._lost_from: int | None = None        # a message_num gap opened here, before the hold existed
        self._channel_of: dict[str, int] = {}
        self.socket.connect(f"tcp://{o.host}:{self.port}")
        self._hb = None
        if o.plugin == "zmq-interface" and o.heartbeat:
            # the plugin lists clients that send heartbeats; it sends data whether or not we do
            self._hb = ctx.socket(zmq.REQ)
            self._hb.setsockopt(zmq.LINGER, 0)
            self._hb.setsockopt(zmq.REQ_RELAXED, 1)
            self._hb.setsockopt(zmq.REQ_CORRELATE, 1)
            self._hb.connect(f"tcp://{o.host}:{self.port + 1}")
            self._hb_uuid = str(uuid.uuid4())
            self._hb_next = 0.0
        log.info("openephys (%s) on tcp://%s:%d", o.plugin, o.host, self.port)

    # --- the source contract (recording_adapters/base.py) --------------------------------------
    def _poll(self, timeout_s: float) -> RigEvents:
        self._heartbeat()
        messages, self._stash = self._stash, []      # what followed a clock jump, first
        if messages or self.socket.poll(int(timeout_s * 1000)):
            self._drain(messages)
        now = time.monotonic()
        if messages:
            if self._stalled:
                log.warning("openephys: the stream is back after %.1f s", now - self._last_message)
            self._last_message, self._stalled = now, False
        elif not self._stalled and now - self._last_message > self.stall_warn_s:
            self._stalled = True
            log.warning("openephys: no message for %.1f s: has acquisition stopped? (waiting; presentations "
                        "whose windows cannot complete will be reported missing)", self.stall_warn_s)
        fast = self._spike_fast if self.plugin == "zmq-interface" else None
        for i, frames in enumerate(messages):
            if fast is not None and fast(frames):
                continue
            try:
                if self._handle(frames) == "jump":
                    self._stash = messages[i:]       # the next poll starts in the new clock
                    break
            except BadPacket as exc:
                self._bad(str(exc))
        return self._flush()

    def _drain(self, messages: list) -> None:
        """Take what has arrived, up to MAX_MESSAGES_PER_POLL messages, each as a list of frames."""
        # recv(copy=False) returns a Frame that knows whether more frames follow; recv_multipart
        # asks the socket with getsockopt per frame, which costs more than the Frame (3.6 vs 2.6 us
        # per 3-frame message here).  A multipart message arrives whole, so no frame is left behind.
        # Only the first two frames (envelope and header) are copied to bytes; a third and later
        # (a spike's waveform, a TTL payload, continuous samples) stay zmq Frames, read through
        # len() and the buffer protocol when needed at all (a spike's waveform never is).
        recv, append, nowait = self.socket.recv, messages.append, zmq.NOBLOCK
        try:
            while len(messages) < MAX_MESSAGES_PER_POLL:
                frame = recv(nowait, copy=False)
                frames = [frame.bytes]
                if frame.more:
                    frame = recv(nowait, copy=False)
                    frames.append(frame.bytes)
                    while frame.more:
                        frame = recv(nowait, copy=False)
                        frames.append(frame)
                append(frames)
        except zmq.Again:
            pass

    def session_started(self, session_id: str) -> None:
        """The recorder was welcomed into session `session_id` (recording_adapters/recorder.py):
        with record_raw, the GUI's recording starts now, named after the session."""
        if self.recording is not None:
            self.recording.start(session_id)

    def _close(self) -> None:
        recording = getattr(self, "recording", None)    # None after a failed start, or without record_raw
        if recording is not None:
            recording.close()
        for sock in (getattr(self, "socket", None), getattr(self, "_hb", None)):   # after a failed start too
            if sock is not None:
                sock.close()

    # --- decoding ----------------------------------------------------------------------------
    def _handle(self, frames: list[bytes]) -> str | None:
        if self.plugin == "zmq-interface":
            kind, sample, payload = self._zmq_interface(frames)
            if kind == "spike" and (self._wm_sample is None or sample >= self._wm_sample):
                batch = self._batch          # the common case, ~19,200 a second on 384 channels: no
                batch.spike_samples.append(sample)     # clock jump, and a spike moves no watermark here
                batch.spike_channels.append(payload)
                return None
        else:
            kind, sample, payload = self._event_broadcaster(frames)
        if kind is None:
            return None
        # a restarted acquisition counts from 0 again (a data message may repeat its block per channel)
        if self._wm_sample is not None and (payload if kind == "data" else sample) < self._wm_sample:
            self._close_group()      # its line changes were all before the jump
            if not self._batch.empty():
                return "jump"        # deliver what came before the jump first
            self._clock_jump(sample)
        if kind == "data":
            self._close_group(before=payload)   # TTL events of a block all precede its data
            self._data_end = payload if self._data_end is None else max(self._data_end, payload)
            if self.hold is not None:
                self.hold.close_gap(payload)    # a gap's span ends with the first whole block after it
        elif kind == "ttl":
            line, state, word = payload
            if self._group_sample is not None and sample != self._group_sample:
                self._close_group()
            self._group_sample = sample
            self._group.append((line, state, word))
        elif kind == "spike":
            self._batch.spike_samples.append(sample)
            self._batch.spike_channels.append(payload)
        # the watermark trails the data (ZMQ Interface) or the latest event (Event Broadcaster) by lag_ms:
        # a spike detector emits a spike near a block's end with the next block's events
        latest = payload if kind == "data" else sample if self.plugin == "event-broadcaster" else None
        if latest is not None and self.rate:
            lagged = latest - int(self.lag_s * self.rate)
            if self._wm_sample is None or lagged > self._wm_sample:
                self._close_group(before=lagged)
                self._wm_sample = lagged
        return None

    def _spike_fast(self, frames: list[bytes]) -> bool:
        """The common message, ~19,200 a second on 384 channels: a well-formed ZMQ Interface spike
        of a known electrode, numbered next, at or after the watermark.  Handled here in one call
        (True), changing nothing unless it is all of that; anything else returns False and goes
        the full, checking way (_handle)."""
        if len(frames) != 3 or frames[0] != b"EVENT\0":
            return False
        try:
            header = _fast_loads(frames[1])
        except ValueError:
            return False
        if header.__class__ is not dict or header.get("type") != "spike":
            return False
        num, body = header.get("message_num"), header.get("spike")
        if num.__class__ is not int or self._message_num is None or num != self._message_num + 1 \
                or body.__class__ is not dict:
            return False
        sample, name = body.get("sample_num"), body.get("electrode")
        if sample.__class__ is not int or sample < 0 or (self._wm_sample is not None and sample < self._wm_sample):
            return False
        channel = self._channel_of.get(name) if name.__class__ is str else None
        if channel is None:
            return False
        self._message_num = num
        batch = self._batch
        batch.spike_samples.append(sample)
        batch.spike_channels.append(channel)
        return True

    def _zmq_interface(self, frames):
        if len(frames) not in (2, 3):
            raise BadPacket(f"{len(frames)} frames (2 or 3 expected)")
        envelope = frames[0].rstrip(b"\0")
        header = self._json(frames[1])
        num = header.get("message_num")
        if num.__class__ is int and self._message_num is not None and num == self._message_num + 1:
            self._message_num = num          # the next one, as almost always
        else:
            self._check_sequence(num)
        kind = header.get("type")
        if kind == "spike" and envelope == b"EVENT":    # the same checks as below, fewer calls
            body = header.get("spike")
            if not isinstance(body, dict):
                raise BadPacket("header without its spike object")
            sample = body.get("sample_num")
            if sample.__class__ is not int or sample < 0:
                sample = self._sample(sample)
            name = body.get("electrode")
            channel = self._channel_of.get(name) if name.__class__ is str else None
            return "spike", sample, self._electrode(body) if channel is None else channel
        body = header.get("spike" if kind == "spike" else "content")
        if not isinstance(body, dict):
            raise BadPacket(f"header without its {'spike' if kind == 'spike' else 'content'} object")
        data = frames[2] if len(frames) == 3 else b""
        size = header.get("data_size")
        if kind != "spike" and (not isinstance(size, int) or size != len(data)):
            raise BadPacket(f"data_size {size!r} but {len(data)} bytes of payload")
        sample = self._sample(body.get("sample_num"))
        if envelope == b"DATA" and kind == "data":
            n = body.get("num_samples")
            if not isinstance(n, int) or n < 0 or n * 4 != len(data):
                raise BadPacket(f"num_samples {n!r} does not match {len(data)} bytes of float32")
            self._learn_rate(body.get("sample_rate"))
            return "data", sample, sample + n
        if envelope == b"EVENT" and kind == "event":
            if body.get("type") != TTL:
                return None, 0, None          # text or binary events: not ours
            if len(data) < TTL_PAYLOAD.size:
                raise BadPacket(f"TTL payload of {len(data)} bytes ({TTL_PAYLOAD.size} expected)")
            return "ttl", sample, TTL_PAYLOAD.unpack_from(data)
        if envelope == b"EVENT" and kind == "spike":
            return "spike", sample, self._electrode(body)
        raise BadPacket(f"envelope {frames[0][:16]!r} with type {kind!r}")

    def _event_broadcaster(self, frames):
        if len(frames) != 2 or len(frames[0]) != 2:
            raise BadPacket(f"{len(frames)} frames, first of {len(frames[0]) if frames else 0} bytes "
                            "(2 frames, a uint16 type first, expected)")
        (base,) = struct.unpack("<H", frames[0])
        if base not in (0, 1):
            raise BadPacket(f"type {base} (0 TTL or 1 spike expected)")
        body = frames[1]
        if body[:1] in (b"{", b" "):
            msg = self._json(body)
            self._learn_rate(msg.get("sample_rate"))
            sample = self._sample(msg.get("sample_number"))
            if base == 0:
                line, state = msg.get("line"), msg.get("state")
                if not isinstance(line, int) or not isinstance(state, (bool, int)) or not 0 <= line < 256:
                    raise BadPacket(f"TTL line {line!r} / state {state!r}")
                return "ttl", sample, (line, int(bool(state)), -1)
            return "spike", sample, self._electrode(msg)
        if len(body) < EVENT_HEAD.size + 2:
            raise BadPacket(f"binary event of {len(body)} bytes")
        btype, sub, _node, _stream, chan, sample, _ts = EVENT_HEAD.unpack_from(body)
        sample = self._sample(sample)
        if base == 0:
            if btype != PROCESSOR_EVENT or sub != TTL or len(body) < EVENT_HEAD.size + TTL_PAYLOAD.size:
                raise BadPacket(f"binary TTL event with base type {btype}, sub-type {sub}, {len(body)} bytes")
            return "ttl", sample, TTL_PAYLOAD.unpack_from(body, EVENT_HEAD.size)
        if btype != SPIKE_EVENT:
            raise BadPacket(f"binary spike with base type {btype}")
        return "spike", sample, chan          # the spike channel's index in its stream

    def _json(self, raw: bytes) -> dict:
        try:
            msg = _fast_loads(raw)
        except (ValueError, RecursionError):   # orjson refuses NaN, a float beyond float64, ...: json decides
            try:
                msg = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError) as exc:   # UnicodeDecodeError is a ValueError
                raise BadPacket(f"JSON header unreadable: {exc}") from None
        if not isinstance(msg, dict):
            raise BadPacket("JSON header is not an object")
        return msg

    @staticmethod
    def _sample(value) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadPacket(f"sample number {value!r}")
        return value

    def _learn_rate(self, value) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise BadPacket(f"sample_rate {value!r}")
        if self.rate is None:
            self.rate = float(value)
            self._get_hold(self.rate)    # before this message's data closes any gap already seen
        elif abs(value - self.rate) > 1e-6 * self.rate and not getattr(self, "_rate_warned", False):
            self._rate_warned = True
            log.warning("openephys: the stream says %.3f Hz, using %.3f Hz", value, self.rate)

    def _electrode(self, body: dict) -> int:
        name = body.get("electrode")
        channel = self._channel_of.get(name) if isinstance(name, str) else None
        if channel is not None:
            return channel
        if name is None and isinstance(body.get("electrode_id"), int):   # the plugin's older versions
            return body["electrode_id"]
        if not isinstance(name, str):
            raise BadPacket(f"spike without an electrode name ({name!r})")
        if self.electrodes:
            channel = self.electrodes.get(name, -1)
        else:
            m = re.search(r"(\d+)\s*$", name)
            channel = int(m.group(1)) - self.electrode_base if m else -1
        if len(self._channel_of) < 10000:
            self._channel_of[name] = channel
        return channel

    def _check_sequence(self, num) -> None:
        """message_num counts every message the plugin sends: a gap means the GUI's PUB dropped some."""
        if not isinstance(num, int):
            return
        if self._message_num is not None and num > self._message_num + 1:
            self.lost_messages += num - self._message_num - 1
            self._lose_span()
            log.warning("openephys: %d messages lost before message %d (the GUI drops what a slow client "
                        "does not take in time); %d lost so far", num - self._message_num - 1, num,
                        self.lost_messages)
        self._message_num = num

    def _lose_span(self) -> None:
        """Messages were lost: the samples from the last whole block (less the spike lag) to the end
        of the next data message may miss events or spikes; codes whose windows overlap that span
        are dropped by the hold, so their presentations are reported missing, never counted short."""
        lag = int(self.lag_s * self.rate) if self.rate else 0
        start = max(0, (self._data_end if self._data_end is not None else 0) - lag)
        if self.hold is not None:
            self.hold.open_gap(start, "Open Ephys message_num gap: messages lost")
        elif self._lost_from is None:
            self._lost_from = start

    def _get_hold(self, rate: float) -> CodeHold:
        if self.hold is None:
            self.hold = CodeHold(self.hold_s, source="openephys", rate=rate)
            if self._lost_from is not None:
                self.hold.open_gap(self._lost_from, "Open Ephys message_num gap: messages lost")
                self._lost_from = None
        return self.hold

    # --- event codes from TTL lines ----------------------------------------------------------
    def _close_group(self, before: int | None = None) -> None:
        """Apply the open sample's line changes once no more can come for it."""
        if self._group_sample is None or (before is not None and self._group_sample >= before):
            return
        old = self._word
        word = old
        for line, state, full in self._group:
            word = full if full >= 0 else (word | (1 << line)) if state else (word & ~(1 << line))
        sample, self._group, self._group_sample, self._word = self._group_sample, [], None, word
        rose = word & ~old
        value = sum(((word >> line) & 1) << i for i, line in enumerate(self.code_lines))
        before_value = sum(((old >> line) & 1) << i for i, line in enumerate(self.code_lines))
        if self.photodiode_line is not None and rose >> self.photodiode_line & 1:
            self._batch.photodiode.append(sample)
        if self.strobe_line is not None:
            if rose >> self.strobe_line & 1:
                if value == 0:
                    log.warning("openephys: strobe at sample %d with code lines all low; ignored", sample)
                else:
                    self._batch.codes.append((sample, value))
        elif value != 0 and value != before_value:
            self._batch.codes.append((sample, value))

    # --- output ------------------------------------------------------------------------------
    def _flush(self) -> RigEvents:
        if self.rate is None:           # nothing can be timed before the sample rate is known
            if not self._batch.empty() and not getattr(self, "_rate_unknown_warned", False):
                if self.plugin == "event-broadcaster":
                    self._rate_unknown_warned = True
                    log.warning("openephys: events but no sample rate yet (the Event Broadcaster's binary "
                                "format carries none: set --rig-option sample_rate=HZ)")
                else:   # a block's events precede its data message: warn only if no data message comes
                    if self._rate_wait_since is None:
                        self._rate_wait_since = time.monotonic()
                    if time.monotonic() - self._rate_wait_since > self.stall_warn_s:
                        self._rate_unknown_warned = True
                        log.warning("openephys: events but no continuous data message for %.0f s: select at "
                                    "least one continuous channel in the ZMQ Interface (its data messages carry "
                                    "the sample rate and say when a block is complete)", self.stall_warn_s)
            return RigEvents()
        b, self._batch, rate = self._batch, _Batch(), self.rate
        chans = np.array(b.spike_channels, dtype=int)
        bad = (chans < 0) | (chans >= self.channels)
        if bad.any():
            self.dropped_spikes += int(bad.sum())
            log.warning("openephys: dropped %d spikes from electrodes outside channels 0..%d (electrodes=%s)",
                        int(bad.sum()), self.channels - 1, "by name" if self.electrodes else "by number")
        hold = self._get_hold(rate)
        hold.add(b.codes)
        codes, horizon = hold.release(self._wm_sample if self._wm_sample is not None else -math.inf)
        # sample numbers as they came, with the stream's rate: the counter counts on them
        return RigEvents(codes=codes, spike_times=np.array(b.spike_samples, dtype=np.int64)[~bad],
                         spike_channels=chans[~bad], watermark=int(horizon) if math.isfinite(horizon) else None,
                         photodiode=b.photodiode, rate=as_rate(rate))

    def _clock_jump(self, sample: int) -> None:
        self.clock_jumps += 1
        log.warning("openephys: sample numbers went back from %d to %d (acquisition restarted?); "
                    "following the new clock", self._wm_sample, sample)
        self._wm_sample, self._word = None, 0
        self._group, self._group_sample = [], None
        self._data_end = self._lost_from = None
        if self.hold is not None:   # codes whose windows the old clock did not complete: dropped (missing)
            self.hold.restart(-math.inf)

    def _bad(self, why: str) -> None:
        self.bad_packets += 1
        self._bad_log.warning("bad", "openephys: bad message #%d skipped: %s", self.bad_packets, why)

    def _heartbeat(self) -> None:
        if self._hb is None:
            return
        try:
            while self._hb.poll(0):
                self._hb.recv(zmq.NOBLOCK)          # "heartbeat received"
            now = time.monotonic()
            if now >= self._hb_next:
                self._hb_next = now + HEARTBEAT_S
                self._hb.send(json.dumps({"application": "xdream", "uuid": self._hb_uuid,
                                          "type": "heartbeat"}).encode(), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass                                    # no GUI listening yet: the data socket is what matters
