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

With `http=True` it also serves the GUI's HTTP remote-control API
(`SimulatedGuiHttp`, at the end of this module): the GUI's mode and its
recording's folder and name, as plugin-GUI's OpenEphysHttpServer.h and
ControlPanel.cpp handle them.  That state is not tied to the ZMQ stream: a test
sends events whatever the mode.
"""

from __future__ import annotations

import heapq
import json
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import logging
import os
import struct
import tempfile
import threading
import time

import numpy as np
import zmq

log = logging.getLogger(__name__)


class OpenEphysPeer:
    def __init__(self, channels: int, plugin: str = "zmq-interface", sample_rate: float = 30000.0,
                 block_samples: int = 1024, strobe_line: int | None = 8, pulse_ms: float = 10.0,
                 photodiode_line: int | None = None, format: str = "json", waveform_samples: int = 40,
                 context: zmq.Context | None = None, http: bool = False):
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
        self.gui = SimulatedGuiHttp() if http else None

    def adapter_options(self) -> dict[str, str]:
        opts = {"host": "127.0.0.1", "port": str(self.port), "plugin": self.plugin,
                "channels": str(self.channels)}
        if self.strobe_line is not None:
            opts["strobe_line"] = str(self.strobe_line)
        if self.photodiode_line is not None:
            opts["photodiode_line"] = str(self.photodiode_line)
        if self.gui is not None:
            opts["http_port"] = str(self.gui.port)
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
        # frame by frame with SNDMORE: send_multipart checks each frame in Python (4.9 us a
        # 3-frame message here, against 2.6): the GUI sends from C++, so the peer's Python
        # should not be what an adapter benchmark measures
        send, more = self.pub.send, zmq.SNDMORE
        for frames in messages:
            for frame in frames[:-1]:
                send(frame, more)
            send(frames[-1])

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
        if self.gui is not None:
            self.gui.close()

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


# --- the GUI's HTTP remote-control API -------------------------------------------------------------
# Encoded from open-ephys/plugin-GUI (v1.0.1), independently of the adapter:
# Source/Utils/OpenEphysHttpServer.h (the endpoints, their replies, which fields a PUT reads and how it
# treats a field of the wrong type), Source/UI/ControlPanel.cpp (what RECORD / ACQUIRE / IDLE do, the
# recording folder's name = prepend + base + append text, regenerated when a new directory is needed),
# Source/UI/FilenameConfigWindow.cpp (FilenameFieldComponent: NONE / AUTO / CUSTOM fields, validate,
# getNextValue), Source/CoreServices.cpp (setRecordingParentDirectory only for a folder that exists).


class _NameField:
    """FilenameFieldComponent: one of prepend, main (base) and append text."""

    def __init__(self, kind: str, state: str, value: str):
        self.kind, self.state, self.value = kind, state, value
        self.index = 0
        self.new_directory_needed = True

    def validate(self, text: str, separator: str) -> str:
        if not text and self.state != "NONE":
            return "File name must have at least 1 character."
        if separator in text:
            return "File name cannot contain slashes."
        if "." in text:
            return "File name cannot contain periods."
        return ""

    def next_value(self, placeholder: bool) -> str:
        if not self.new_directory_needed:
            return self.value
        self.new_directory_needed = False
        if self.state == "NONE":
            self.value = ""
        elif self.state == "AUTO":
            if self.kind == "main":
                self.value = "YYYY-MM-DD_HH-MM-SS" if placeholder else time.strftime("%Y-%m-%d_%H-%M-%S")
            else:
                number = f"{self.index:03d}"
                self.value = "_" + number if self.kind == "append" else number + "_"
        return self.value


class SimulatedGuiHttp:
    """The GUI's state behind its HTTP API (IDLE / ACQUIRE / RECORD, the recording's folder and name), served
    on 127.0.0.1 at a random free port from a thread.  `recordings` lists each recording's folder as it
    starts; `requests` every request as (method, path, body text); `connections` every TCP connection."""

    def __init__(self, mode: str = "IDLE", parent_directory: str | None = None, record_nodes: tuple = (101,),
                 separator: str = "/"):
        self.lock = threading.Lock()
        self.acquiring = mode in ("ACQUIRE", "RECORD")
        self.recording = False
        self.parent_directory = parent_directory if parent_directory is not None else tempfile.gettempdir()
        self.record_nodes = list(record_nodes)
        self.separator = separator          # File::getSeparatorString() of the GUI's PC
        self.fields = [_NameField("prepend", "NONE", ""), _NameField("main", "AUTO", ""),
                       _NameField("append", "NONE", "")]
        self.new_directory_needed = True    # ControlPanel's newDirectoryButton
        self.directory_name = ""
        self.recordings: list[str] = []
        self.recording_number = 0
        self.requests: list[tuple[str, str, str]] = []
        self.connections = 0
        self._generate(placeholder=True)
        if mode == "RECORD":
            self._record_button(True)
        gui = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                gui._serve(self, "GET")

            def do_PUT(self):
                gui._serve(self, "PUT")

            def log_message(self, format, *args):   # noqa: A002 (the base class's name)
                log.debug("simulated GUI http: " + format, *args)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request, client_address):
                with gui.lock:
                    gui.connections += 1
                return True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="simulated-oe-http",
                                        daemon=True)
        self._thread.start()

    @property
    def mode(self) -> str:
        return "RECORD" if self.recording else "ACQUIRE" if self.acquiring else "IDLE"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- what a person does in the GUI -------------------------------------------------------------
    def click(self, mode: str) -> None:
        """The lab presses play / record / stop in the GUI itself."""
        with self.lock:
            self._set_mode(mode)

    # --- HTTP --------------------------------------------------------------------------------------
    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length).decode("utf-8", "replace") if length else ""
        with self.lock:
            self.requests.append((method, h.path, body))
            status, reply = self._route(method, h.path, body)
        data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
        h.send_response(status)
        h.send_header("Content-Type", "text/plain" if isinstance(reply, str) else "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, method: str, path: str, body: str):
        if (method, path) == ("GET", "/api/status"):
            return 200, {"mode": self.mode}
        if (method, path) == ("GET", "/api/recording"):
            return 200, self._recording_info()
        if method == "PUT" and path in ("/api/status", "/api/recording"):
            try:
                request = json.loads(body)
            except ValueError as exc:
                return 400, f"[json.exception.parse_error.101] {exc}"     # nlohmann's e.what()
            if path == "/api/status":
                mode = request.get("mode") if isinstance(request, dict) else None
                if not isinstance(mode, str):     # request_json["mode"] into a std::string: type_error
                    return 400, "[json.exception.type_error.302] type must be string"
                self._set_mode(mode)              # an unknown mode does nothing
                return 200, {"mode": self.mode}
            self._put_recording(request if isinstance(request, dict) else {})
            return 200, self._recording_info()
        return 404, ""                            # httplib: no handler, empty 404

    def _put_recording(self, request: dict) -> None:
        def text(key: str) -> str | None:         # a field missing or not a string is "not specified"
            value = request.get(key)
            return value if isinstance(value, str) else None
        parent = text("parent_directory")
        if parent is not None and os.path.isdir(parent) and not self.recording:
            self.parent_directory = parent
        for key, field in (("prepend_text", self.fields[0]), ("base_text", self.fields[1]),
                           ("append_text", self.fields[2])):
            value = text(key)
            if value is not None:
                self._set_field(field, value)
        if text("start_new_directory") == "true":
            self.new_directory_needed = True

    def _set_field(self, field: _NameField, value: str) -> None:
        """ControlPanel::setRecordingDirectory{Prepend,Base,Append}Text."""
        if field.value == value:
            return
        field.new_directory_needed = True
        if field.kind == "main" and value == "":
            pass                                  # the main text cannot be empty: keeps its state
        elif value == "":
            field.state = "NONE"
        elif value == "auto":
            field.state = "AUTO"
        else:
            if field.validate(value, self.separator):
                return                            # silently refused ("TODO: Notify user ... via HTTPServer")
            field.state, field.value = "CUSTOM", value
        self.new_directory_needed = True
        self._generate(placeholder=True)

    def _generate(self, placeholder: bool) -> str:
        return "".join(f.next_value(placeholder) for f in self.fields)

    def _recording_info(self) -> dict:
        nodes = [{"node_id": n, "parent_directory": self.parent_directory, "record_engine": "BINARY",
                  "experiment_number": 1, "recording_number": self.recording_number, "is_synchronized": True}
                 for n in self.record_nodes]
        return {"parent_directory": self.parent_directory, "base_text": self.fields[1].value,
                "prepend_text": self.fields[0].value, "append_text": self.fields[2].value,
                "default_record_engine": "BINARY", "record_nodes": nodes}

    # --- ControlPanel ------------------------------------------------------------------------------
    def _set_mode(self, mode: str) -> None:
        """The PUT /api/status handler: RECORD only when not recording; ACQUIRE stops a recording and
        acquires; IDLE stops both."""
        if mode == "RECORD" and not self.recording:
            self._record_button(True)
        elif mode == "ACQUIRE":
            self._record_button(False)
            self.acquiring = True
        elif mode == "IDLE":
            self._record_button(False)
            self.acquiring = False

    def _record_button(self, on: bool) -> None:
        if not on:
            self.recording = False                # stopRecording; the next one reuses the folder
            self.new_directory_needed = False
            return
        if not self.record_nodes:                 # "Insert at least one Record Node to start recording"
            return
        self.acquiring = True                     # startAcquisition(true) when idle
        self.recording = True
        if self.new_directory_needed:             # startRecording
            for f in self.fields:
                f.index += 1
                f.new_directory_needed = True
            self.directory_name = self._generate(placeholder=False)
            self.recordings.append(f"{self.parent_directory}/{self.directory_name}")
            self.recording_number = 0
        self.recording_number += 1
