"""A simulated Intan RHX on 127.0.0.1: its TCP command, waveform and spike ports.

Written from Intan RHX's own source (Intan-Technologies/Intan-RHX), on its
own, never with recording_adapters/intan.py's decoder or constants:

- Engine/Threads/tcpdataoutputthread.cpp: a waveform block is a uint32 magic
  0x2ef07a08, then 128 frames; a frame is a uint32 timestamp, one uint16 per
  enabled band of each enabled channel, and one uint16 digital-in word (all
  16 lines) if any DIGITAL-IN channel is enabled.  A spike is a 14-byte
  chunk: uint32 magic 0x3ae2710f, 5 bytes of native channel name, uint32
  timestamp, uint8 spike id.  The waveform bytes of a write go out before
  its spike bytes.  Little-endian (x86), packed.
- Engine/Processing/tcpcommunicator.cpp: a port accepts one client, then
  stops listening; after a drop it listens again only when told to
  (`execute ConnectTCPSpikeDataOutput`, or Connect in the GUI).
- GUI/Widgets/tcpdisplay.cpp: readClientCommand parses whatever one read of
  the socket returns (TCPCommunicator::read: readAll) with parseCommands:
  split on ';' (a trailing ';' accepted, blank commands dropped), words on
  spaces; `set` of note1-3 and Filename.* keeps the rest of the line, spaces
  and case included.  Engine/Processing/commandparser.cpp answers: `get`
  with "Return: <Parameter> <value>", errors as plain text, a `set` or
  `execute` that succeeds with nothing.  Each reply is its own write
  (TCPDisplay::TCPReturn / TCPError -> TCPCommunicator::writeQString:
  socket->write, waitForBytesWritten); nothing ends a reply.
- CommandParser::setRunModeCommand: `set runmode run` and `record` call
  runController(), which returns only when the board stops, so what follows
  in the same read waits until then; `record` needs Filename.Path and
  Filename.BaseFilename (SystemState::filename, not settable while running);
  getRunModeCommand answers Record, Run or Stop.  A channel's TCP outputs can
  be set while running (not restricted; TCPDataOutputThread::run re-reads
  them when SignalSources::getTcpFilterBands changes).

Only what the adapter uses is modelled: amplifier channels on ports A-H (128
each, "A-000"), DIGITAL-IN-01..16, spike and wideband outputs, run/record/stop (not
trigger), the recording's file name.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading

import numpy as np

from recording_adapters.events import RigEvents

log = logging.getLogger(__name__)

_WAVE_MAGIC = 0x2EF07A08
_SPIKE_MAGIC = 0x3AE2710F
_FRAMES = 128
_SPIKE_TYPE1 = 0x01
_SPIKE_CHUNK = np.dtype([("magic", "<u4"), ("name", "S5"), ("ts", "<u4"), ("id", "u1")])


def native_names(channels: int) -> list[str]:
    """RHX's native names of the first `channels` amplifier channels, 128 a port."""
    return [f"{'ABCDEFGH'[i // 128]}-{i % 128:03d}" for i in range(channels)]


class _Port:
    """One TCP port as RHX runs it: one client, no listening again until told."""

    def __init__(self, name: str, port: int = 0):
        self.name = name
        self.port = port
        self.listener: socket.socket | None = None
        self.client: socket.socket | None = None
        self._lock = threading.Lock()
        self.listen()

    def listen(self) -> None:
        with self._lock:
            if self.listener is not None:
                return
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen(1)
            self.port = s.getsockname()[1]
            self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True, name=f"rhx-{self.name}").start()

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            old, self.client = self.client, conn
            self.listener = None       # RHX closes its server once a client is in
        listener.close()
        if old is not None:
            old.close()
        self.on_client(conn)

    def on_client(self, conn: socket.socket) -> None:
        pass

    def drop(self) -> None:
        """The client goes away (cable, crash): RHX does not listen again."""
        with self._lock:
            client, self.client = self.client, None
        if client is not None:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()

    def close(self) -> None:
        self.drop()
        with self._lock:
            listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()


class _Writer(threading.Thread):
    """RHX's TCP output thread: one thread writes every port, a write's waveform bytes
    before its spike bytes, so the spike port never runs ahead of the waveform port."""

    def __init__(self):
        super().__init__(daemon=True, name="rhx-tcp-output")
        self.queue: queue.Queue = queue.Queue()
        self.start()

    def run(self) -> None:
        while True:
            conn, data = self.queue.get()
            if conn is None:
                data.set()
                continue
            try:
                conn.sendall(data)
            except OSError:   # RHX keeps writing into a dead socket; the bytes are lost
                pass


class _DataPort(_Port):
    def __init__(self, name: str, writer: _Writer):
        self.writer = writer
        super().__init__(name)

    damage: tuple[int, int] | None = None   # test lever: bytes [a, b) of the next write are lost

    def write(self, data: bytes) -> None:
        if self.damage and data:
            (a, b), self.damage = self.damage, None
            data = data[:a] + data[b:]
        if data and self.client is not None:
            self.writer.queue.put((self.client, data))

    def flush(self, timeout: float = 10.0) -> None:
        done = threading.Event()
        self.writer.queue.put((None, done))
        done.wait(timeout)


class IntanPeer:
    """Cls(channels, **options) per simulators.wire_peers: RigEvents in, RHX's TCP bytes out."""

    # the adapter options naming its TCP ports, for simulators/resegmenting_proxy.py: towards the
    # command port a read may end only after a ';' (readClientCommand parses each read whole, so a
    # command cut in two is broken in RHX itself); the data ports may be cut anywhere
    TCP_PORTS = {"command_port": b";", "waveform_port": None, "spike_port": None}

    def __init__(self, channels: int, sample_rate: str = "30000", pulse_ms: str = "10",
                 photodiode_line: str = ""):
        self.channels = int(channels)
        # a photodiode on DIGITAL-IN-<line>: codes then use lines 1-8 only
        self.photodiode_line = int(photodiode_line) if photodiode_line else None
        self._photodiode: list[int] = []       # absolute samples of crossings not yet fully sent
        self.sample_rate = int(sample_rate)
        self.pulse = max(1, round(float(pulse_ms) * self.sample_rate / 1000))
        self.names = native_names(self.channels)
        self._name_bytes = np.array([n.encode() for n in self.names], dtype="S5")
        self.running = False
        self.recording = False                  # RunMode Record: RHX writes its own data file
        self.filename_path = ""                 # Filename.Path and Filename.BaseFilename (SystemState)
        self.base_filename = ""
        self.recordings: list[str] = []         # path/base of every recording started (for tests)
        self.spike_enabled: set[str] = set()
        self.wide_enabled: set[str] = set()
        self.digital_in_enabled: set[str] = set()
        self.commands: list[str] = []            # every command received, lower case (for tests)
        self._held_back: list[str] = []          # commands that came behind `set runmode run`
        self._lock = threading.RLock()
        self._sent = 0          # absolute samples already turned into blocks
        self._origin = 0        # absolute sample of timestamp 0 (the last run start)
        self._codes: list[tuple[int, int]] = []      # (absolute sample, code) not yet fully sent
        self._spikes = (np.empty(0, np.int64), np.empty(0, np.int64))
        writer = _Writer()
        self.waveform = _DataPort("waveform", writer)
        self.spike = _DataPort("spike", writer)
        self.command = _Port("command")
        self.command.on_client = self._serve_commands

    # -- the contract -------------------------------------------------------------------
    def adapter_options(self) -> dict[str, str]:
        opts = {"host": "127.0.0.1", "command_port": str(self.command.port),
                "waveform_port": str(self.waveform.port), "spike_port": str(self.spike.port),
                "channels": str(self.channels)}
        if self.photodiode_line is not None:
            opts.update(code_lines="1-8", photodiode_line=str(self.photodiode_line))
        return opts

    def send(self, events: RigEvents) -> None:
        fs = self.sample_rate
        if events.rate is not None:     # ticks: the rig's sample numbers (rescaled if another rate)
            events = events.in_ticks(fs)

            def sample(t):
                return np.asarray(t, dtype=np.int64)
        else:                           # float seconds: the sample they fall in
            def sample(t):
                return np.floor(np.asarray(t, dtype=float) * fs).astype(np.int64)
        with self._lock:
            for t, code in events.codes:
                self._codes.append((int(sample(t)), int(code) & (0xFF if self.photodiode_line else 0xFFFF)))
            if self.photodiode_line is not None:
                self._photodiode += [int(sample(t)) for t in events.photodiode]
            if len(events.spike_times):
                samples = sample(events.spike_times)
                self._spikes = (np.concatenate([self._spikes[0], samples]),
                                np.concatenate([self._spikes[1], np.asarray(events.spike_channels, np.int64)]))
            if events.watermark is None:
                return
            # whole blocks only, counted from the run's first sample
            end = int(sample(events.watermark))
            end = self._origin + (end - self._origin) // _FRAMES * _FRAMES
            if end <= self._sent:
                return
            if self.running:
                self._emit(self._sent, end)
            self._sent = end
            self._codes = [(s, c) for s, c in self._codes if s + self.pulse > end]
            self._photodiode = [s for s in self._photodiode if s + self.pulse > end]
            keep = self._spikes[0] >= end
            self._spikes = (self._spikes[0][keep], self._spikes[1][keep])

    def close(self) -> None:
        for port in (self.command, self.waveform, self.spike):
            port.close()

    # -- test levers ---------------------------------------------------------------------
    def send_raw(self, port: str, data: bytes) -> None:
        """Bytes as they are, on 'waveform' or 'spike' (corrupt data for tests)."""
        getattr(self, port).write(data)

    def lose_bytes(self, port: str, start: int, end: int) -> None:
        """Bytes [start, end) of the next write on 'waveform' or 'spike' never arrive."""
        getattr(self, port).damage = (start, end)

    def flush(self) -> None:
        self.waveform.flush()

    def start_in_gui(self, mode: str = "run", path: str = "D:/lab", base_filename: str = "monkey_day1") -> None:
        """Someone clicked Run (or Record) in RHX's window before any client came."""
        with self._lock:
            if mode == "record":
                self.filename_path, self.base_filename = path, base_filename
            self._start(mode)

    def skip_to(self, sample: int) -> None:
        """Sample numbers jump ahead to `sample` before anything is sent (tests: a run that has been
        going for hours, timestamps past 2^31; RHX's are uint32, so below 2^32)."""
        with self._lock:
            self._origin = 0
            self._sent = sample - sample % _FRAMES

    def restart_acquisition(self) -> None:
        """Stop and run again, as a user in RHX's GUI would: timestamps restart at 0."""
        with self._lock:
            self._origin = self._sent

    # -- the wire ------------------------------------------------------------------------
    def _emit(self, start: int, end: int) -> None:
        n = end - start
        words: list[np.ndarray] = []
        for name in self.names:          # RHX's order: enabled bands of each amplifier channel
            if name in self.wide_enabled:
                words.append(np.full(n, 32768, np.uint16))    # offset binary: 0 uV
        if self.digital_in_enabled:      # then one word for all 16 lines, however many are enabled
            din = np.zeros(n, np.uint16)
            for s, code in sorted(self._codes):
                a, b = max(s, start), min(s + self.pulse, end)
                if s < start and s + self.pulse <= start:
                    log.warning("simulated RHX: code %d at sample %d came after its time was sent", code, s)
                if a < b:
                    din[a - start:b - start] = code & 0xFFFF
            for s in self._photodiode:
                a, b = max(s, start), min(s + self.pulse, end)
                if a < b:
                    din[a - start:b - start] |= 1 << (self.photodiode_line - 1)
            words.append(din)
        frame = np.dtype([("ts", "<u4"), ("w", "<u2", (len(words),))]) if words else np.dtype([("ts", "<u4")])
        frames = np.zeros(n, frame)
        frames["ts"] = (np.arange(start, end) - self._origin).astype(np.uint32)
        if words:
            frames["w"] = np.stack(words, axis=1)
        block = np.dtype([("magic", "<u4"), ("frames", frame, (_FRAMES,))])
        blocks = np.zeros(n // _FRAMES, block)
        blocks["magic"] = _WAVE_MAGIC
        blocks["frames"] = frames.reshape(-1, _FRAMES)
        self.waveform.write(blocks.tobytes())

        samples, chans = self._spikes
        enabled = np.array([n in self.spike_enabled for n in self.names] + [False])
        pick = (samples >= start) & (samples < end) & (chans >= 0) & (chans < self.channels)
        pick &= enabled[np.clip(chans, 0, self.channels)]
        samples, chans = samples[pick], chans[pick]
        order = np.lexsort((chans, samples))          # frame by frame, channels in RHX's order
        samples, chans = samples[order], chans[order]
        if len(samples) > 1:                          # one spike id per channel per sample
            keep = np.ones(len(samples), bool)
            keep[1:] = (samples[1:] != samples[:-1]) | (chans[1:] != chans[:-1])
            samples, chans = samples[keep], chans[keep]
        chunks = np.zeros(len(samples), _SPIKE_CHUNK)
        chunks["magic"] = _SPIKE_MAGIC
        chunks["name"] = self._name_bytes[chans] if len(chans) else chunks["name"]
        chunks["ts"] = (samples - self._origin).astype(np.uint32)
        chunks["id"] = _SPIKE_TYPE1
        self.spike.write(chunks.tobytes())

    # -- the command port ----------------------------------------------------------------
    def _serve_commands(self, conn: socket.socket) -> None:
        def reply(text: str) -> None:
            # TCPDisplay::TCPReturn / TCPError -> TCPCommunicator::writeQString: one
            # socket->write (and waitForBytesWritten) per reply, nothing to end it
            try:
                conn.sendall(text.encode("latin-1"))
            except OSError:
                pass

        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                log.info("simulated RHX: command client gone; not listening again")
                if self.command.client is conn:
                    self.command.client = None
                return
            # TCPDisplay::readClientCommand: whatever one read returns (readAll) is parsed at once
            with self._lock:
                self._parse_commands(data.decode("latin-1"), reply)

    def _parse_commands(self, text: str, reply) -> None:
        """TCPDisplay::parseCommands: split on ';', a trailing ';' accepted, blank commands dropped."""
        commands = text.split(";")
        if commands[-1] == "":
            commands.pop()
        self._run_commands([c for c in commands if c.strip()], reply)

    def _run_commands(self, commands: list[str], reply) -> None:
        for i, command in enumerate(commands):
            words = [w for w in (w.strip() for w in command.split(" ")) if w]
            self.commands.append(" ".join(words).lower())
            verb = words[0].lower()
            error = None
            if verb == "set":
                # note1-3 and the file names take a value with spaces (rejoined with one space)
                if len(words) >= 2 and words[1].lower().startswith(("filename", "note1", "note2", "note3")):
                    error = self._set(words[1].lower(), " ".join(words[2:]))
                elif len(words) == 3:
                    error = self._set(words[1].lower(), words[2])
                else:
                    error = f"Error - Command {i + 1}: Set commands require a parameter and a value"
            elif verb == "get":
                if len(words) == 2:
                    reply(self._get(words[1].lower()))
                else:
                    error = f"Error - Command {i + 1}: Get commands require a parameter"
            elif verb == "execute":
                if len(words) == 2:
                    error = self._execute(words[1].lower())
                elif len(words) == 3:
                    error = "Unrecognized action"      # the actions with a file name: not modelled
                else:
                    error = f"Error - Command {i + 1}: Execute commands require an action"
            else:
                error = f"Error - Command {i + 1}: Unrecognized command"
            if error:
                reply(error)
            elif verb == "set" and words[1].lower() == "runmode" and words[2].lower() in ("run", "record"):
                # CommandParser::setRunModeCommand calls runController(), which returns only when
                # the board stops: the rest of this read is parsed only then
                self._held_back += commands[i + 1:]
                return
            elif verb == "set" and words[1].lower() == "runmode" and self._held_back:
                held, self._held_back = self._held_back, []
                self._run_commands(held, reply)

    def _get(self, parameter: str) -> str:
        if parameter in ("filename.path", "filename.basefilename"):
            # CommandParser::getStateFilenameItemCommand: the item's name, then the part as typed
            value = self.filename_path if parameter.endswith("path") else self.base_filename
            return f"Return: Filename.{parameter.split('.', 1)[1]} {value}"
        if parameter == "sampleratehertz":
            return f"Return: SampleRateHertz {self.sample_rate}"
        if parameter == "runmode":          # CommandParser::getRunModeCommand
            mode = "Record" if self.recording else ("Run" if self.running else "Stop")
            return f"Return: RunMode {mode}"
        if parameter in ("tcpwaveformdataoutputconnectionstatus", "tcpspikedataoutputconnectionstatus"):
            port = self.waveform if "waveform" in parameter else self.spike
            state = "Connected" if port.client else ("Pending" if port.listener else "Disconnected")
            kind = "Waveform" if port is self.waveform else "Spike"
            return f"Return: TCP{kind}DataOutputConnectionStatus {state}"
        return "Unrecognized parameter"

    def _set(self, parameter: str, value: str) -> str | None:
        if parameter in ("filename.path", "filename.basefilename"):
            # SystemState: filename->setRestricted(RestrictIfRunning, RunningErrorMessage)
            if self.running:
                return "Filename cannot be set while controller is running."
            if parameter.endswith("path"):
                self.filename_path = value
            else:
                self.base_filename = value
            return None
        value = value.lower()
        if parameter == "runmode":          # CommandParser::setRunModeCommand
            if value in ("run", "record"):
                if self.running:
                    return ("Board must be stopped in order to start running" if value == "run"
                            else "Board must be stopped in order to start recording")
                if value == "record" and not (self.filename_path and self.base_filename):
                    return ("Filename.BaseFilename and Filename.Path must both be specified before "
                            "recording can occur")
                self._start(value)
                return None
            if value == "stop":
                if not self.running:
                    return "Board must be running in order to stop"
                self.running = self.recording = False
                return None
            return "Invalid value for SetRunMode command"       # trigger: not modelled
        if "." not in parameter:
            return "Unrecognized parameter"
        channel, item = parameter.split(".", 1)
        channel = channel.upper()
        digital = [f"DIGITAL-IN-{i:02d}" for i in range(1, 17)]
        if channel in digital and item == "tcpdataoutputenabled":
            target, name = self.digital_in_enabled, "TCPDataOutputEnabled"
        elif channel in self.names and item == "tcpdataoutputenabledspike":
            target, name = self.spike_enabled, "TCPDataOutputEnabledSpike"
        elif channel in self.names and item == "tcpdataoutputenabled":
            target, name = self.wide_enabled, "TCPDataOutputEnabled"
        else:
            return "Unrecognized parameter"
        # BooleanItem::setValue; a channel's TCP outputs are not restricted while running
        # (TCPDataOutputThread::run re-reads them when SignalSources::getTcpFilterBands changes)
        if value not in ("true", "false"):
            return f"Invalid value for {name} command. Acceptable: True;False"
        (target.add if value == "true" else target.discard)(channel)
        return None

    def _start(self, mode: str) -> None:
        self.running = True
        self.recording = mode == "record"
        self._origin = self._sent     # timestamps restart at each run
        if self.recording:
            self.recordings.append(f"{self.filename_path}/{self.base_filename}")

    def _execute(self, action: str) -> str | None:
        if action == "clearalldataoutputs":
            self.spike_enabled.clear()
            self.wide_enabled.clear()
            self.digital_in_enabled.clear()
        elif action == "connecttcpwaveformdataoutput":
            self.waveform.listen()
        elif action == "connecttcpspikedataoutput":
            self.spike.listen()
        elif action == "disconnecttcpwaveformdataoutput":
            self.waveform.close()
        elif action == "disconnecttcpspikedataoutput":
            self.spike.close()
        else:
            return "Unrecognized action"
        return None
