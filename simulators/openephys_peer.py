"""A simulated Open Ephys GUI: sends rig events the way its ZMQ Interface or
Event Broadcaster plugin does, on 127.0.0.1.

Encoded from the plugins' code (open-ephys-plugins/zmq-interface
Source/ZmqInterface.cpp; open-ephys-plugins/event-broadcaster
Source/EventBroadcaster.cpp; event packets from open-ephys/plugin-GUI
Source/Processors/Events/Event.h and Spike.cpp), independently of the adapter.

Like the GUI, it works in processing blocks of `block_samples`: a block's TTL
events and spikes go out first, then (ZMQ Interface) the block's continuous
data for one selected channel, which is what tells a client the block is done.
An event code becomes a parallel port's line changes: the code's bits on lines
0-7 and the strobe line (8) rise on the code's sample, all fall `pulse_ms` later.
"""

from __future__ import annotations

import heapq
import json
from fractions import Fraction
import logging
import struct
import time

import numpy as np
import zmq

log = logging.getLogger(__name__)


class OpenEphysPeer:
    def __init__(self, channels: int, plugin: str = "zmq-interface", sample_rate: float = 30000.0,
                 block_samples: int = 1024, strobe_line: int | None = 8, pulse_ms: float = 10.0,
                 photodiode_line: int | None = None, format: str = "json", waveform_samples: int = 40,
                 context: zmq.Context | None = None):
        if plugin not in ("zmq-interface", "event-broadcaster"):
            raise ValueError(f"unknown Open Ephys plugin {plugin!r}")
        self.channels = channels
        self.plugin = plugin
        self.rate = float(sample_rate)
        self.block = int(block_samples)
        self.strobe_line = strobe_line
        self.pulse = int(round(pulse_ms / 1000.0 * self.rate))
        self.photodiode_line = photodiode_line
        self.format = format
        self.waveform_samples = waveform_samples
        self.stream = "example_data"
        self.node = 100
        ctx = context or zmq.Context.instance()
        # XPUB puts the same frames on the wire as the GUI's PUB, and says when a subscriber is there
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        self.rep = None
        for _ in range(20):   # the heartbeat socket is on data port + 1: find a free pair
            port = self.pub.bind_to_random_port("tcp://127.0.0.1")
            if plugin != "zmq-interface":
                break
            try:
                self.rep = ctx.socket(zmq.REP)
                self.rep.setsockopt(zmq.LINGER, 0)
                self.rep.bind(f"tcp://127.0.0.1:{port + 1}")
                break
            except zmq.ZMQError:
                self.rep.close()
                self.rep = None
                self.pub.unbind(f"tcp://127.0.0.1:{port}")
        self.port = port
        self.heartbeats = 0
        self._subscribed = False
        self._message_num = 0
        self._sent_until = 0              # samples [0, this) are sent
        self._epoch = 0.0                 # rig time of sample 0 (moves on a restart)
        self._word = 0
        self._pending: list = []          # heap of (sample, order, kind, payload)
        self._order = 0
        self._capture: list | None = None  # encode(): messages kept here instead of sent
        self._tick_rate: Fraction | None = None   # the rate of the ticks in the events being sent

    def adapter_options(self) -> dict[str, str]:
        opts = {"host": "127.0.0.1", "port": str(self.port), "plugin": self.plugin,
                "channels": str(self.channels)}
        if self.strobe_line is not None:
            opts["strobe_line"] = str(self.strobe_line)
        if self.photodiode_line is not None:
            opts["photodiode_line"] = str(self.photodiode_line)
        return opts

    # --- what the rig recorded -> what the GUI sends -----------------------------------------
    def send(self, events) -> None:
        self._answer_heartbeats()
        self._wait_subscriber()
        self._tick_rate = events.rate      # None: float seconds; else ticks (the rig's sample numbers)
        for t, code in events.codes:
            s = self._sample(t)
            lines = [b for b in range(8) if code >> b & 1]
            if self.strobe_line is not None:
                lines.append(self.strobe_line)
            for line in lines:
                self._push(s, "ttl", (line, 1))
                self._push(s + self.pulse, "ttl", (line, 0))
        for t in events.photodiode:
            if self.photodiode_line is not None:
                self._push(self._sample(t), "ttl", (self.photodiode_line, 1))
                self._push(self._sample(t) + self.pulse, "ttl", (self.photodiode_line, 0))
        for t, ch in zip(np.asarray(events.spike_times).tolist(), np.asarray(events.spike_channels).tolist()):
            self._push(self._sample(t), "spike", int(ch))
        if events.watermark is not None:
            self._advance(self._sample(events.watermark))

    def restart(self, rig_time: float) -> None:
        """Acquisition stopped and started again: sample numbers count from 0 at rig_time."""
        self._advance(self._sample(rig_time))
        self._pending, self._sent_until, self._word, self._epoch = [], 0, 0, rig_time
        self._message_num = 0

    def encode(self, events) -> list[list[bytes]]:
        """The messages that send(events) would put on the wire, kept instead of sent: a benchmark
        encodes ahead and times send_encoded, as the GUI encodes in C++, not in Python."""
        self._capture = []
        try:
            self.send(events)
            return self._capture
        finally:
            self._capture = None

    def send_encoded(self, messages: list[list[bytes]]) -> None:
        self._answer_heartbeats()
        self._wait_subscriber()
        send = self.pub.send_multipart
        for frames in messages:
            send(frames)

    def lose_messages(self, n: int) -> None:
        """The GUI's PUB drops the next `n` messages (a slow subscriber; ZMQ drops at the high-water
        mark): the numbers are used up, nothing is sent for them (tests)."""
        self._message_num += int(n)

    def send_raw(self, frames: list[bytes]) -> None:
        """Any frames at all (tests: corrupt messages)."""
        self._wait_subscriber()
        self.pub.send_multipart(frames)

    def close(self) -> None:
        self.pub.close()
        if self.rep is not None:
            self.rep.close()

    # --- blocks -------------------------------------------------------------------------------
    def _sample(self, t) -> int:
        if self._tick_rate is None:
            return int(round((t - self._epoch) * self.rate))
        # ticks: exact integer arithmetic (the same rate: the tick is the sample number)
        scaled = Fraction(int(t)) * Fraction(repr(self.rate)) / self._tick_rate
        return int(round(scaled - Fraction(repr(self._epoch)) * Fraction(repr(self.rate))))

    def skip_to(self, sample: int) -> None:
        """Acquisition has run this long before the client looks: sample numbers go on from
        `sample` (tests: numbers past 2^31 and 2^32 without sending hours of blocks)."""
        self._sent_until = max(self._sent_until, int(sample))

    def _push(self, sample: int, kind: str, payload) -> None:
        self._order += 1
        heapq.heappush(self._pending, (max(sample, 0), self._order, kind, payload))

    def _advance(self, until: int) -> None:
        while self._sent_until < until:
            start = self._sent_until
            end = min(start + self.block, until)
            while self._pending and self._pending[0][0] < end:
                sample, _, kind, payload = heapq.heappop(self._pending)
                sample = max(sample, start)      # the GUI has no way to send into a finished block
                self._ttl(sample, *payload) if kind == "ttl" else self._spike(sample, payload)
            if self.plugin == "zmq-interface":
                self._data(start, end - start)
            self._sent_until = end

    # --- ZMQ Interface and Event Broadcaster encodings -------------------------------------------
    def _header(self, kind: str, key: str, body: dict, data_size: int | None) -> bytes:
        self._message_num += 1
        header = {"message_num": self._message_num, "type": kind, key: body}
        if data_size is not None:
            header["data_size"] = data_size
        header["timestamp"] = int(time.time() * 1000)
        return json.dumps(header).encode()

    def _data(self, start: int, n: int) -> None:
        body = {"stream": self.stream, "channel_num": 0, "num_samples": n, "sample_num": start,
                "sample_rate": self.rate}
        self._emit([b"DATA\0", self._header("data", "content", body, n * 4),
                    np.zeros(n, dtype="<f4").tobytes()])

    def _ttl(self, sample: int, line: int, state: int) -> None:
        self._word = self._word | (1 << line) if state else self._word & ~(1 << line)
        payload = struct.pack("<BB", line, state) + struct.pack("<Q", self._word)
        if self.plugin == "zmq-interface":
            body = {"stream": self.stream, "source_node": self.node, "type": 3, "sample_num": sample}
            self._emit([b"EVENT\0", self._header("event", "content", body, len(payload)), payload])
        elif self.format == "json":
            msg = {"event_type": "ttl", "stream": self.stream, "source_node": self.node,
                   "sample_rate": self.rate, "channel_name": "TTL Input", "sample_number": sample,
                   "line": line, "state": bool(state)}
            self._emit([struct.pack("<H", 0), json.dumps(msg).encode()])
        else:
            # base type PROCESSOR_EVENT (1), sub-type TTL (3), node, stream, channel, sample, timestamp
            head = struct.pack("<BBHHHqd", 1, 3, self.node, 0, 0, sample, sample / self.rate)
            self._emit([struct.pack("<H", 0), head + payload])

    def _spike(self, sample: int, channel: int) -> None:
        wave = np.zeros(self.waveform_samples, dtype="<f4")
        wave[self.waveform_samples // 4] = -80.0
        name = f"Electrode {channel + 1}"
        if self.plugin == "zmq-interface":
            body = {"stream": self.stream, "source_node": self.node, "electrode": name, "sample_num": sample,
                    "num_channels": 1, "num_samples": self.waveform_samples, "sorted_id": 0,
                    "threshold": [-50.0]}
            self._emit([b"EVENT\0", self._header("spike", "spike", body, None), wave.tobytes()])
        elif self.format == "json":
            msg = {"event_type": "spike", "stream": self.stream, "source_node": self.node, "electrode": name,
                   "num_channels": 1, "sample_rate": self.rate, "sample_number": sample, "sorted_id": 0,
                   "amp1": 80.0}
            self._emit([struct.pack("<H", 1), json.dumps(msg).encode()])
        else:
            # SPIKE_EVENT (2), spike channel type (1: single electrode), node, stream, channel index,
            # sample, timestamp, sorted id, then one threshold and the waveform
            head = struct.pack("<BBHHHqdH", 2, 1, self.node, 0, channel, sample, sample / self.rate, 0)
            self._emit([struct.pack("<H", 1), head + struct.pack("<f", -50.0) + wave.tobytes()])

    # --- sockets ---------------------------------------------------------------------------------
    def _emit(self, frames: list[bytes]) -> None:
        if self._capture is not None:
            self._capture.append(frames)
        else:
            self.pub.send_multipart(frames)

    def _wait_subscriber(self, timeout_s: float = 10.0) -> None:
        if self._subscribed:
            return
        if self.pub.poll(int(timeout_s * 1000)):
            self.pub.recv()                    # b"\x01": a SUB joined
            self._subscribed = True
        else:
            log.warning("no subscriber after %.0f s; sending anyway", timeout_s)
            self._subscribed = True

    def _answer_heartbeats(self) -> None:
        while self.rep is not None and self.rep.poll(0):
            msg = self.rep.recv()
            try:
                ok = isinstance(json.loads(msg), dict)
            except ValueError:
                ok = False
            self.heartbeats += ok
            self.rep.send(b"heartbeat received" if ok else b"JSON message could not be read")
