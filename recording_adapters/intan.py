"""Intan RHX over TCP: spikes from the spike port, event codes from the
digital-in word on the waveform port, acquisition set up over the command port.

RHX (Intan-Technologies/Intan-RHX) streams, once a client is connected:
- spike port (default 5002), Engine/Threads/tcpdataoutputthread.cpp: one
  14-byte chunk per detected spike on each channel with spike output enabled:
  uint32 magic 0x3ae2710f, the channel's native name (5 chars, e.g. "A-010"),
  uint32 timestamp (samples), uint8 spike id (0x80: likely artifact).
- waveform port (default 5001), same file: blocks of a uint32 magic
  0x2ef07a08 and 128 frames; a frame is a uint32 timestamp, then one uint16
  per enabled band of each enabled channel, then one uint16 holding all 16
  digital inputs if any DIGITAL-IN channel is enabled.  The spike port
  carries no digital inputs, and nothing when no spike fires, so the
  waveform port gives both the event codes and the clock for the watermark.
- command port (default 5000), GUI/Widgets/tcpdisplay.cpp and
  Engine/Processing/commandparser.cpp: text commands separated by ';', each
  reply its own write with no end mark; recording_adapters/rhx_commands.py
  matches every reply to its command however the bytes arrive.
- each port takes one client and stops listening (Engine/Processing/
  tcpcommunicator.cpp); after a drop it listens again only on
  `execute ConnectTCP{Waveform,Spike}DataOutput` or a click on Connect.

With configure=true (default) the adapter clears RHX's TCP outputs, enables
spike output on the chosen channels and the DIGITAL-IN word, asks RHX to
listen on both data ports, connects, and runs RHX if it found it stopped
(recording_adapters/intan_control.py: never stops or restarts what ran
before the session; record_raw makes RHX record a file named after the
session).  The waveform frame is then a timestamp and the digital-in word.
"""

from __future__ import annotations

import functools
import logging
import select
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from recording_adapters.base import RigSource
from recording_adapters.events import RigEvents
from recording_adapters.holdback import CodeHold
from recording_adapters.intan_control import RhxControl
from recording_adapters.options import (
    Hertz,
    OptionError,
    Pattern,
    Port,
    PositiveSeconds,
    Range,
    Seconds,
    SourceOptions,
    labelled,
)
from xdream.errors import SessionError
from xdream.logs import RateLimitedLog

log = logging.getLogger(__name__)

WAVEFORM_MAGIC = 0x2EF07A08
SPIKE_MAGIC = 0x3AE2710F
FRAMES_PER_BLOCK = 128
SPIKE_CHUNK = np.dtype([("magic", "<u4"), ("name", "S5"), ("ts", "<u4"), ("id", "u1")])   # 14 bytes
SPIKE_ID_LIKELY_ARTIFACT = 0x80
_WAVE_MAGIC_BYTES = WAVEFORM_MAGIC.to_bytes(4, "little")
_SPIKE_MAGIC_BYTES = SPIKE_MAGIC.to_bytes(4, "little")
_READ_CAP = 8 << 20      # bytes read per port per poll, so one port cannot starve the other

ONE_CLIENT_HELP = ("Intan RHX accepts one client per TCP port and does not listen again after a client "
                   "drops. In RHX, Network > Remote TCP Control: click Connect on the Commands tab, and "
                   "Connect for the Waveform Output and Spike Output on the Data Output tab (or restart "
                   "the recorder, which asks RHX to listen again over the command port)")


NATIVE_NAME = Pattern(r"[A-H]-\d{3}", "A-010")     # RHX's native channel names, 128 a port
DigitalLine = Annotated[int, Range(1, 16)]           # DIGITAL-IN-01..16


def native_names(count: int) -> list[str]:
    """The first `count` amplifier channels: A-000..A-127, then B-000..."""
    return [f"{'ABCDEFGH'[i // 128]}-{i % 128:03d}" for i in range(count)]


@dataclass(frozen=True)
class IntanOptions(SourceOptions):
    host: str = "127.0.0.1"
    command_port: Port = 5000
    waveform_port: Port = 5001
    spike_port: Port = 5002
    # a count (A-000, A-001, ...) or native names in channel order
    channels: Annotated[int, Range(1, 1024)] | tuple[Annotated[str, NATIVE_NAME], ...] = 32
    code_lines: tuple[DigitalLine, ...] = tuple(range(1, 17))     # FIRST-LAST, lowest line = bit 0
    photodiode_line: DigitalLine | None = None
    sample_rate: Hertz | None = None            # asked from RHX unless configure is false
    configure: bool = True
    record_raw: bool = False    # RHX records its own file, named after the session (configure only)
    record_path: str = ""       # that file's folder on the PC running RHX; "": RHX's own Filename.Path
    hold_s: Seconds = 0.3
    count_artifacts: bool = False
    connect_timeout_s: Seconds = 5.0
    reconnect_s: Seconds = 1.0
    stall_s: PositiveSeconds = 2.0
    spike_grace_s: Seconds = 0.1

    def check(self) -> None:
        lines = self.code_lines
        if not lines or list(lines) != list(range(lines[0], lines[0] + len(lines))):
            raise OptionError("code_lines", _text(lines), "consecutive DIGITAL-IN lines FIRST-LAST within 1-16, "
                              "e.g. 1-8")
        if self.photodiode_line is not None and self.photodiode_line in lines:
            raise OptionError("photodiode_line", self.photodiode_line, "a DIGITAL-IN line 1-16 outside code_lines")
        names = self.channel_names()
        if len(set(names)) != len(names):
            raise OptionError("channels", _text(self.channels), "a count or distinct native names like A-010")
        if not self.configure and self.sample_rate is None:
            raise OptionError("sample_rate", None, "RHX's amplifier sample rate (Hz) when configure is false")
        if self.record_raw and not self.configure:
            raise OptionError("record_raw", True, "false when configure is false (RHX's recording is set "
                              "over the command port)")
        # RHX keeps the rest of a `set filename.path` line, words rejoined with one space; ';' ends it
        path = self.record_path
        if path and (path != path.strip() or "  " in path or any(c in path for c in ";\r\n")):
            raise OptionError("record_path", path, "a folder name without ';', line breaks, leading, "
                              "trailing or double spaces")

    def channel_names(self) -> list[str]:
        if isinstance(self.channels, int):
            return native_names(self.channels)
        return [n.upper() for n in self.channels]


def _text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


class IntanSource(RigSource):
    name = "intan"
    Options = IntanOptions

    def _open(self, o: IntanOptions) -> None:
        self.cmd: socket.socket | None = None
        self.control: RhxControl | None = None
        self.socks: dict[str, socket.socket | None] = {"waveform": None, "spike": None}
        self.record_raw = o.record_raw
        self.record_path = o.record_path
        self._data_seen = False
        self.host = o.host
        self.ports = {"command": o.command_port, "waveform": o.waveform_port, "spike": o.spike_port}
        self.names = o.channel_names()
        self.channels = len(self.names)
        self._index = {n.encode(): i for i, n in enumerate(self.names)}
        self._shift = o.code_lines[0] - 1
        self._mask = (1 << len(o.code_lines)) - 1
        self._first_line = o.code_lines[0]
        # a DIGITAL-IN line whose rising edges are crossings
        self._photodiode_bit = None if o.photodiode_line is None else o.photodiode_line - 1
        self._photodiode_level = 0
        self.configure = o.configure
        self.count_artifacts = o.count_artifacts
        self.connect_timeout = o.connect_timeout_s
        self.reconnect_s = o.reconnect_s
        self.stall_s = o.stall_s
        self.spike_grace = o.spike_grace_s
        self.hold = CodeHold(o.hold_s, source="intan")
        self.frame_words = 1               # the digital-in word: all the adapter enables on that port
        self._block = 4 + FRAMES_PER_BLOCK * (4 + 2 * self.frame_words)
        self._buf = {"waveform": bytearray(), "spike": bytearray()}
        self._last_ts: int | None = None         # last waveform timestamp of this clock segment
        self._level = 0                          # the code lines' value at the last frame
        self._wave_time: float | None = None     # every frame before this rig time has been read
        self._history: deque[tuple[float, float]] = deque()   # (monotonic, wave time) for the spike grace
        self._last_spike_time = -np.inf
        self._last_spike_ts: int | None = None
        self._spike_segment = 0                  # bumps when the spike clock goes back
        self._wave_segment = 0
        self._later_spikes: list[tuple[int, np.ndarray, np.ndarray]] = []  # spikes of a segment still ahead
        self._reopen_pending = False             # both data ports back: close the gap at the next data
        self._handed: float | None = None        # the last watermark handed on
        self._spike_gap_open = False             # corrupt spike bytes skipped: close at the next good chunk
        self._last_data = time.monotonic()
        self._stalled = False
        self._next_reconnect = 0.0
        self._gap_until_reconnect = False
        self._errors = RateLimitedLog(log)   # per key: the first, then one line per 10 s
        self.unknown_spikes = 0
        self.artifacts = 0
        self._connect(o.sample_rate)

    # -- set-up ------------------------------------------------------------------------------
    def _connect(self, sample_rate: float | None) -> None:
        # the sample rate: RHX's own when the adapter configures it, else the option (check() requires it)
        if self.configure:
            self.cmd = self._open_port("command")
            if self.cmd is None:
                raise SessionError(f"intan: cannot reach RHX's command port {self.host}:{self.ports['command']}. "
                                   + ONE_CLIENT_HELP)
            self.control = RhxControl(self.cmd, self.connect_timeout, record_raw=self.record_raw,
                                      record_path=self.record_path)
            self.fs: float = self.control.set_up(self.names, self._first_line)
        elif sample_rate is None:
            raise labelled(OptionError("sample_rate", None, "RHX's amplifier sample rate (Hz) when configure "
                                       "is false"), self.label())
        else:
            self.fs = sample_rate
        for port in ("waveform", "spike"):
            self.socks[port] = self._open_port(port)
            if self.socks[port] is None:
                raise SessionError(f"intan: cannot reach RHX's {port} port {self.host}:{self.ports[port]}. "
                                   + ONE_CLIENT_HELP)
        if self.control is not None:
            self.control.start()
        log.info("intan: connected to RHX at %s (%d channels, %.0f Hz, code on DIGITAL-IN %02d-%02d)",
                 self.host, self.channels, self.fs, self._first_line,
                 self._first_line + int(self._mask).bit_length() - 1)

    def session_started(self, session_id: str) -> None:
        """The recorder was welcomed into session `session_id` (recording_adapters/recorder.py):
        with record_raw, RHX's recording starts now, its file named after the session."""
        if not self.record_raw:
            return
        if self.control is None:
            log.error("intan: record_raw: RHX's command port is lost; RHX records nothing for session %s",
                      session_id)
            return
        self.control.start_recording(session_id)

    def _open_port(self, port: str, timeout: float | None = None) -> socket.socket | None:
        deadline = time.monotonic() + (self.connect_timeout if timeout is None else timeout)
        while True:
            try:
                s = socket.create_connection((self.host, self.ports[port]), timeout=1.0)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setblocking(port == "command")
                return s
            except OSError:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.05)   # RHX starts listening when it handles our command: poll for it

    # -- the stream (the contract: recording_adapters/base.py) ---------------------------------
    def _poll(self, timeout_s: float) -> RigEvents:
        # decoded in seconds (timestamp / rate) and handed on as RHX's sample numbers: for a uint32
        # timestamp the round trip gives the sample back exactly (events.round_ticks)
        return self._poll_seconds(timeout_s).in_ticks(self.fs)

    def _poll_seconds(self, timeout_s: float) -> RigEvents:
        self._maybe_reconnect()
        self._read(timeout_s)
        events = RigEvents()
        before_jump = self._parse_waveform(events)
        self._parse_spikes(events)
        if before_jump is not None:              # the clock went back: close the old segment
            events.codes.extend(self.hold.restart(before_jump))
            events.watermark = before_jump
            self._start_segment()
            return events
        if self._wave_time is None:
            return events
        now = time.monotonic()
        self._history.append((now, self._wave_time))
        while len(self._history) > 1 and self._history[1][0] <= now - self.spike_grace:
            self._history.popleft()
        # the spike port may lag the waveform port a little: trust it up to the waveform time
        # of `spike_grace` ago, or up to its own last spike
        settled = self._history[0][1] if self._history[0][0] <= now - self.spike_grace else -np.inf
        stream_time = min(self._wave_time, max(settled, self._last_spike_time))
        codes, watermark = self.hold.release(stream_time)
        events.codes.extend(codes)
        if np.isfinite(watermark):      # nothing promised before the spike port has settled once
            events.watermark = self._handed = watermark
        return events

    def _read(self, timeout_s: float) -> None:
        live = [s for s in self.socks.values() if s is not None]
        if self.cmd is not None:
            live.append(self.cmd)
        if not live:
            time.sleep(timeout_s)
            return
        ready, _, _ = select.select(live, [], [], timeout_s)
        for port, s in list(self.socks.items()):
            if s is None or s not in ready:
                continue
            got = 0
            while got < _READ_CAP:
                try:
                    data = s.recv(1 << 20)
                except BlockingIOError:
                    break
                except OSError as exc:
                    data = b""
                    log.error("intan: %s port: %s", port, exc)
                if not data:
                    self._lost(port)
                    break
                self._buf[port] += data
                got += len(data)
            if port == "waveform" and got:
                self._last_data = time.monotonic()
                if not self._data_seen and self.control is not None:
                    self._data_seen = True
                    self._command_lost_on(self.control.data_flows)
                if self._stalled:
                    log.warning("intan: RHX's waveform stream is back")
                    self._stalled = False
        if self.control is not None and (self.cmd in ready or self.control.port.waiting):
            self._command_lost_on(self.control.pump)
        if (not self._stalled and self.socks["waveform"] is not None
                and time.monotonic() - self._last_data > self.stall_s):
            self._stalled = True
            log.warning("intan: no data from RHX's waveform port for %.1f s: is RHX running? "
                        "Presentations wait, and are reported missing if it does not come back", self.stall_s)

    def _command_lost_on(self, action) -> None:
        """Run a command-port action; if RHX closed the port, say what that costs and go on."""
        try:
            action()
        except (OSError, SessionError) as exc:
            log.error("intan: %s; the adapter can no longer ask RHX to listen again after a data port "
                      "drops. %s", exc, ONE_CLIENT_HELP)
            if self.control is not None and self.control.started:
                log.error("intan: this session put RHX in run mode %r and can no longer stop it: stop it in "
                          "RHX when the session ends", self.control.started)
            if self.cmd is not None:
                self.cmd.close()
            self.cmd = None
            self.control = None

    def _lost(self, port: str) -> None:
        s = self.socks[port]
        if s is not None:
            s.close()
        self.socks[port] = None
        if self._buf[port]:         # a partial block or chunk can never be completed
            log.warning("intan: %d bytes of a partial %s discarded", len(self._buf[port]),
                        "block" if port == "waveform" else "spike chunk")
            self._buf[port].clear()
        # whatever came after the last watermark handed on may be incomplete
        start = self._handed if self._handed is not None else (self._wave_time or 0.0)
        self.hold.open_gap(start, f"RHX's {port} port connection dropped")
        self._gap_until_reconnect = True
        log.error("intan: lost the connection to RHX's %s port. %s. Reconnecting every %.1f s.",
                  port, ONE_CLIENT_HELP, self.reconnect_s)
        self._next_reconnect = 0.0

    def _maybe_reconnect(self) -> None:
        missing = [p for p, s in self.socks.items() if s is None]
        if not missing or time.monotonic() < self._next_reconnect:
            return
        self._next_reconnect = time.monotonic() + self.reconnect_s
        for port in missing:
            control = self.control
            if control is not None:
                self._command_lost_on(functools.partial(control.reconnect, port))
            s = self._open_port(port, timeout=min(0.5, self.reconnect_s))
            if s is None:
                log.warning("intan: RHX's %s port %s:%d still refuses; retrying. %s", port, self.host,
                            self.ports[port], ONE_CLIENT_HELP)
                continue
            self.socks[port] = s
            log.warning("intan: reconnected to RHX's %s port", port)
        if all(s is not None for s in self.socks.values()) and self._gap_until_reconnect:
            self._gap_until_reconnect = False
            self._reopen_pending = True

    def _error(self, key: str, message: str, *args) -> None:
        self._errors.error(key, "intan: " + message, *args)

    def _parse_waveform(self, events: RigEvents) -> float | None:
        """Decode whole blocks; codes go to the hold.  Returns the old clock's end at a jump back."""
        buf = self._buf["waveform"]
        frame = np.dtype([("ts", "<u4"), ("w", "<u2", (self.frame_words,))])
        block = np.dtype([("magic", "<u4"), ("frames", frame, (FRAMES_PER_BLOCK,))])
        while True:                   # until a good block leads the buffer, or too few bytes are left
            n_blocks = len(buf) // self._block
            if n_blocks == 0:
                return None
            blocks = np.frombuffer(bytes(buf[:n_blocks * self._block]), block)
            good = blocks["magic"] == WAVEFORM_MAGIC
            ts_all = blocks["frames"]["ts"].astype(np.int64)
            good &= np.all(np.diff(ts_all, axis=1) == 1, axis=1)
            if good[0]:
                break
            magic = int.from_bytes(bytes(buf[:4]), "little")
            self._error("wave-magic", "waveform port: %s (expected magic 0x%08x, 128 consecutive "
                        "timestamps a block, each frame a timestamp and %d word(s)): corrupt data, or RHX "
                        "streams other outputs than this adapter set up; resynchronising",
                        f"magic 0x{magic:08x}" if magic != WAVEFORM_MAGIC else "timestamps out of order",
                        WAVEFORM_MAGIC, self.frame_words)
            nxt = buf.find(_WAVE_MAGIC_BYTES, 1)
            del buf[:nxt if nxt > 0 else max(0, len(buf) - 3)]
        # the good run before the first bad block; the bad one is resynchronised next time
        n_good = n_blocks if good.all() else int(np.argmin(good))
        blocks, ts_all = blocks[:n_good], ts_all[:n_good]
        consumed = n_good * self._block
        if blocks.size == 0:
            return None
        ts = ts_all.reshape(-1)
        words = blocks["frames"]["w"][..., 0].reshape(-1)
        # a clock that goes back: hand on what came before, keep the rest for the next poll
        jump_at = None
        starts = ts[::FRAMES_PER_BLOCK]
        first_prev = self._last_ts if self._last_ts is not None else starts[0] - 1
        prev = np.concatenate([[first_prev], ts[FRAMES_PER_BLOCK - 1:-1:FRAMES_PER_BLOCK]])
        back = np.nonzero(starts <= prev)[0]
        if back.size:
            jump_at = int(back[0])
            if jump_at == 0:
                if self._last_ts is None:     # cannot be: with no block before, prev[0] is starts[0] - 1
                    raise RuntimeError("intan: a clock jump at the first block of a segment")
                old_end = (self._last_ts + 1) / self.fs
                log.warning("intan: RHX's clock went back from sample %d to %d (acquisition restarted?)",
                            self._last_ts, int(starts[0]))
                return old_end    # buffer untouched: the new clock's blocks are parsed next poll
            ts, words = ts[:jump_at * FRAMES_PER_BLOCK], words[:jump_at * FRAMES_PER_BLOCK]
            consumed = jump_at * self._block
        del buf[:consumed]
        # samples lost between blocks (corrupt bytes skipped, a reconnection): a gap
        ahead = np.nonzero(starts[:len(ts) // FRAMES_PER_BLOCK] > prev[:len(ts) // FRAMES_PER_BLOCK] + 1)[0]
        for i in ahead:
            if self._last_ts is None and i == 0:
                continue
            self.hold.gap((int(prev[i]) + 1) / self.fs, int(starts[i]) / self.fs,
                          "samples missing from RHX's waveform stream")
        if self._reopen_pending:      # the data ports are back: whole again a write's length later
            self._reopen_pending = False
            self.hold.close_gap(ts[-1] / self.fs + 0.1)
        level = ((words.astype(np.int64) >> self._shift) & self._mask)
        before = np.concatenate([[self._level], level[:-1]])
        onsets = np.nonzero((level != before) & (level != 0))[0]
        self.hold.add([(ts[i] / self.fs, int(level[i])) for i in onsets])
        self._level = int(level[-1])
        if self._photodiode_bit is not None:
            lit = (words.astype(np.int64) >> self._photodiode_bit) & 1
            rose = np.nonzero(lit > np.concatenate([[self._photodiode_level], lit[:-1]]))[0]
            events.photodiode.extend(float(ts[i]) / self.fs for i in rose)
            self._photodiode_level = int(lit[-1])
        self._last_ts = int(ts[-1])
        self._wave_time = (self._last_ts + 1) / self.fs
        return None

    def _start_segment(self) -> None:
        self._handed = None
        self._last_ts = None
        self._level = 0
        self._photodiode_level = 0
        self._wave_time = None
        self._history.clear()
        self._last_spike_time = -np.inf
        self._wave_segment += 1

    def _parse_spikes(self, events: RigEvents) -> None:
        buf = self._buf["spike"]
        out_t: list[np.ndarray] = []
        out_c: list[np.ndarray] = []
        while len(buf) >= SPIKE_CHUNK.itemsize:
            n = len(buf) // SPIKE_CHUNK.itemsize
            chunks = np.frombuffer(bytes(buf[:n * SPIKE_CHUNK.itemsize]), SPIKE_CHUNK)
            bad = np.nonzero(chunks["magic"] != SPIKE_MAGIC)[0]
            k = int(bad[0]) if bad.size else n
            self._take_spikes(chunks[:k], out_t, out_c)
            del buf[:k * SPIKE_CHUNK.itemsize]
            if k == n:
                break
            magic = int.from_bytes(bytes(buf[:4]), "little")
            self._error("spike-magic", "spike port: magic 0x%08x where a spike chunk should start (expected "
                        "0x%08x): corrupt data; resynchronising", magic, SPIKE_MAGIC)
            nxt = buf.find(_SPIKE_MAGIC_BYTES, 1)
            del buf[:nxt if nxt > 0 else max(0, len(buf) - 3)]
            last = self._last_spike_time if np.isfinite(self._last_spike_time) else (self._wave_time or 0.0)
            self.hold.open_gap(last, "corrupt bytes skipped on RHX's spike port")
            self._spike_gap_open = True
        for seg, t, c in list(self._later_spikes):
            if seg == self._wave_segment:
                out_t.append(t)
                out_c.append(c)
        self._later_spikes = [x for x in self._later_spikes if x[0] > self._wave_segment]
        if out_t:
            events.spike_times = np.concatenate(out_t)
            events.spike_channels = np.concatenate(out_c)

    def _take_spikes(self, chunks: np.ndarray, out_t: list[np.ndarray], out_c: list[np.ndarray]) -> None:
        if chunks.size == 0:
            return
        ts = chunks["ts"].astype(np.int64)
        if self._spike_gap_open and self.fs:
            self._spike_gap_open = False
            self.hold.close_gap(ts[0] / self.fs)
        # the spike clock going back marks the next acquisition segment
        prev = np.concatenate([[self._last_spike_ts if self._last_spike_ts is not None else ts[0]], ts[:-1]])
        segment = self._spike_segment + np.cumsum(ts < prev)
        self._spike_segment = int(segment[-1])
        self._last_spike_ts = int(ts[-1])
        chan = np.array([self._index.get(bytes(name), -1) for name in chunks["name"]], dtype=np.int64)
        unknown = chan < 0
        if unknown.any():
            self.unknown_spikes += int(unknown.sum())
            self._error("spike-name", "spike port: spikes on channels this adapter did not enable (%s): "
                        "dropped", ", ".join(sorted({bytes(n).decode('latin-1', 'replace') for n in
                                                     chunks['name'][unknown]})))
        keep = ~unknown
        artifact = (chunks["id"] & SPIKE_ID_LIKELY_ARTIFACT) != 0
        if not self.count_artifacts:
            self.artifacts += int((artifact & keep).sum())
            keep &= ~artifact
        for seg in np.unique(segment):
            pick = keep & (segment == seg)
            t, c = ts[pick] / self.fs, chan[pick]
            if seg == self._wave_segment:
                out_t.append(t)
                out_c.append(c)
                if t.size:
                    self._last_spike_time = max(self._last_spike_time, float(t[-1]))
            elif seg > self._wave_segment:
                self._later_spikes.append((int(seg), t, c))
            elif t.size:
                self._error("spike-late", "spike port: %d spikes from before RHX's clock went back came "
                            "after it; dropped", int(t.size))

    def _close(self) -> None:
        control = getattr(self, "control", None)     # None after a failed start, or a lost command port
        if control is not None:
            control.close()
        for s in list(self.socks.values()) + [self.cmd]:
            if s is not None:
                s.close()
        self.socks = {"waveform": None, "spike": None}
        self.cmd = None
