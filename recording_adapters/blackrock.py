"""Blackrock (Cerebus NSP / Gemini) through pycbsdk, Blackrock's pure-Python
client (CerebusOSS/pycbsdk).

It needs a live NSP (or nPlayServer) on the network, so the tests drive it
with a fake of the `pycbsdk` package shaped as below.  Read from upstream
CerebusOSS/pycbsdk:

- src/pycbsdk/cbsdk.py: create_params(inst_addr, inst_port, client_addr,
  client_port, recv_bufsize, protocol), get_device(params), connect(device,
  startup_sequence) -> the run level (50 = RUNNING is success, as
  examples/print_rates.py checks), get_config(device) -> dict with "sysfreq"
  and "channel_types" (1-based chid -> CBChannelType), register_spk_callback,
  register_event_callback(device, CBChannelType.DigitalIn, f),
  register_config_callback(device, CBPacketType.SYSHEARTBEAT, f), disconnect.
- src/pycbsdk/cbhw/device/nsp.py: callbacks run on pycbsdk's receiver thread,
  so this adapter copies each packet's fields into a locked buffer there.
- src/pycbsdk/cbhw/packet/header/v41.py and packets.py: every packet has
  header.time (ticks of sysfreq), header.chid (1-based); a spike packet's unit
  is header.type; a digital-input packet (v40.py CBPacketDIn) has valueRead,
  bitsChanged, eventType, with DINP_EVENT_ANYBIT = 1 and DINP_EVENT_STROBE = 2
  (CerebusOSS/CereLink cbproto.h).
- The NSP sends SYSHEARTBEAT packets every 10 ms: their time is the clock that
  advances the watermark (everything before it has been sent).

Heartbeats that stop for stall_s open a gap (recording_adapters/holdback.py):
codes whose windows overlap it are dropped and their presentations reported
missing; the adapter reconnects every reconnect_s until packets flow again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np

from recording_adapters.base import RigSource
from recording_adapters.events import RigEvents
from recording_adapters.holdback import CodeHold
from recording_adapters.options import (
    Port,
    PositiveSeconds,
    Range,
    Seconds,
    SourceOptions,
)
from xdream.errors import ConfigError, SessionError

log = logging.getLogger(__name__)

RUNLEVEL_RUNNING = 50
DINP_EVENT_ANYBIT = 1
DINP_EVENT_STROBE = 2
RESTART_BACK_S = 1.0
NOISE_UNIT = 255       # Central's "noise" unit: never counted (0 = unsorted, 1-5 = sorted units)


def _import_cbsdk():
    try:
        from pycbsdk import cbsdk
    except Exception as exc:
        raise ConfigError("the Blackrock adapter needs pycbsdk (`pip install pycbsdk`, CerebusOSS/pycbsdk) and "
                          f"an NSP or nPlayServer on the network: {type(exc).__name__}: {exc}") from None
    return cbsdk


@dataclass(frozen=True)
class BlackrockOptions(SourceOptions):
    inst_addr: str = ""
    inst_port: Port = 51002
    client_addr: str = ""
    client_port: Port = 51002
    protocol: str = "4.1"
    recv_bufsize: Annotated[int, Range(1)] | None = None   # None: pycbsdk's
    channels: Annotated[int, Range(1)] | None = None       # None: the FrontEnd channel count
    units: Literal["all", "sorted"] = "all"
    event_type: Literal["strobe", "anybit"] = "strobe"
    code_bits: Annotated[int, Range(1, 32)] = 16
    hold_s: Seconds = 0.3
    stall_s: PositiveSeconds = 1.0
    reconnect_s: Seconds = 2.0


class BlackrockSource(RigSource):
    name = "blackrock"
    Options = BlackrockOptions

    def _open(self, o: BlackrockOptions) -> None:
        self.sorted_only = o.units == "sorted"
        self.cbsdk = _import_cbsdk()
        self.event_type = DINP_EVENT_STROBE if o.event_type == "strobe" else DINP_EVENT_ANYBIT
        self.code_mask = (1 << o.code_bits) - 1
        self.hold = CodeHold(o.hold_s, source="blackrock")
        self.stall_s = o.stall_s
        self.reconnect_s = o.reconnect_s
        kwargs = dict(inst_addr=o.inst_addr, inst_port=o.inst_port, client_addr=o.client_addr,
                      client_port=o.client_port, protocol=o.protocol)
        if o.recv_bufsize is not None:
            kwargs["recv_bufsize"] = o.recv_bufsize
        self.device = self.cbsdk.get_device(self.cbsdk.create_params(**kwargs))
        self._lock = threading.Lock()
        self._spikes: list[tuple[int, int, int]] = []   # (time ticks, chid, unit), filled by pycbsdk's thread
        self._words: list[tuple[int, int]] = []         # (time ticks, code)
        self._beats: list[int] = []                     # heartbeat times (ticks) since the last poll
        self._last_packet = time.monotonic()
        self._connect(first=True)
        config = self.cbsdk.get_config(self.device)
        self.fs = float(config["sysfreq"])
        front_end = self.cbsdk.CBChannelType.FrontEnd
        self.channels = o.channels if o.channels is not None else sum(
            1 for kind in config["channel_types"].values() if kind == front_end)
        self.cbsdk.register_spk_callback(self.device, self._on_spike)
        self.cbsdk.register_event_callback(self.device, self.cbsdk.CBChannelType.DigitalIn, self._on_digital)
        self.cbsdk.register_config_callback(self.device, self.cbsdk.CBPacketType.SYSHEARTBEAT, self._on_heartbeat)
        self._clock = -math.inf          # seconds, the latest heartbeat handed on
        self._stalled = False
        self._retry_at = 0.0

    # --------------------------------------------- pycbsdk's receiver thread
    def _on_spike(self, pkt) -> None:
        with self._lock:
            self._spikes.append((int(pkt.header.time), int(pkt.header.chid), int(pkt.header.type)))
            self._last_packet = time.monotonic()

    def _on_digital(self, pkt) -> None:
        if int(pkt.eventType) != self.event_type:
            return
        code = int(pkt.valueRead) & self.code_mask
        if code:  # a word back to 0 is the line resetting, not a code
            with self._lock:
                self._words.append((int(pkt.header.time), code))
                self._last_packet = time.monotonic()

    def _on_heartbeat(self, pkt) -> None:
        with self._lock:
            self._beats.append(int(pkt.header.time))
            self._last_packet = time.monotonic()

    # ------------------------------------------------------------ public
    def _poll(self, timeout_s: float) -> RigEvents:
        # the NSP's times are ticks of sysfreq; the hold works in seconds (tick / sysfreq) and the
        # events go on as the NSP's ticks again: exact below 2^51 ticks (events.round_ticks)
        return self._poll_seconds(timeout_s).in_ticks(self.fs)

    def _poll_seconds(self, timeout_s: float) -> RigEvents:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                spikes, self._spikes = self._spikes, []
                words, self._words = self._words, []
                beats, self._beats = self._beats, []
                quiet = time.monotonic() - self._last_packet
            if spikes or words or beats or time.monotonic() >= deadline:
                break
            time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))  # callbacks fill the buffer
        events = RigEvents()
        self._check_stall(quiet)
        if spikes:
            arr = np.array(spikes, dtype=np.int64)
            t, ch, unit = arr[:, 0] / self.fs, arr[:, 1] - 1, arr[:, 2]
            keep = (ch >= 0) & (ch < self.channels) & (unit != NOISE_UNIT)
            if self.sorted_only:
                keep &= unit >= 1
            events.spike_times, events.spike_channels = t[keep], ch[keep].astype(int)
        codes = [(tick / self.fs, code) for tick, code in words]
        if beats:
            clock = beats[-1] / self.fs   # packets come in order: the last heartbeat is the clock
            if clock < self._clock - RESTART_BACK_S:
                log.warning("blackrock: the NSP clock went back from %.3f s to %.3f s (restarted)", self._clock, clock)
                events.codes.extend(self.hold.restart(self._clock))
                events.watermark = self._clock
                self._clock = -math.inf
                self.hold.add(codes)  # after the jump: released by later polls
                return events
            if self._stalled:  # packets flow again from the first new heartbeat on
                self.hold.close_gap(min(b for b in beats) / self.fs)
                self._stalled = False
            self._clock = max(self._clock, clock)
        self.hold.add(codes)
        if math.isfinite(self._clock):
            released, watermark = self.hold.release(self._clock)
            events.codes.extend(released)
            events.watermark = watermark
        return events

    def _close(self) -> None:
        device = getattr(self, "device", None)
        if device is None:           # pycbsdk never loaded, or no device was made
            return
        try:
            self.cbsdk.disconnect(device)
        except Exception as exc:
            log.warning("blackrock: disconnect failed: %s", exc)

    # ----------------------------------------------------------- private
    def _connect(self, first: bool = False) -> bool:
        level = self.cbsdk.connect(self.device, startup_sequence=True)
        if level == RUNLEVEL_RUNNING:
            return True
        if first:
            raise SessionError(f"blackrock: could not bring the NSP to RUNNING (run level {level}); check "
                               "inst_addr/client_addr and that the NSP (or nPlayServer) is up")
        return False

    def _check_stall(self, quiet: float) -> None:
        if quiet < self.stall_s:
            return
        if not self._stalled:
            self._stalled = True
            log.error("blackrock: no packets from the NSP for %.1f s; reconnecting every %.1f s",
                      quiet, self.reconnect_s)
            if math.isfinite(self._clock):
                self.hold.open_gap(self._clock, "the NSP went silent")
        if time.monotonic() >= self._retry_at:
            self._retry_at = time.monotonic() + self.reconnect_s
            try:
                self.cbsdk.disconnect(self.device)
                if self._connect():
                    log.warning("blackrock: reconnected; waiting for packets")
            except Exception as exc:  # pycbsdk raises socket errors while the network is down
                log.error("blackrock: reconnect failed: %s", exc)
