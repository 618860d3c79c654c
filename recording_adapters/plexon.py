"""Plexon OmniPlex through Plexon's own Python client, PyOPXClient.

PyOPXClient wraps OPXClient64.dll, so this runs on the Windows PC that runs
OmniPlex Server; it cannot run here, and the tests drive it with a fake of the
`pyopxclient` module shaped as below.  Read from Plexon's pyopxclient package
(pyopxclientapi.py and pyopxclientlib.py, (c) Plexon 2018-2019) and its
examples (the Strobe Monitor's model):

- PyOPXClientAPI(); connect() sets .connected, and every call sets
  .last_result (OPX_ERROR_NOERROR == 0 on success); disconnect().
- get_global_parameters().source_ids; get_source_info(number or name) ->
  (name or number, source_type, num_chans, linear_start_chan), source types
  SPIKE_TYPE = 1 and EVENT_TYPE = 4; opx_client.get_opx_system_status()
  (1 stopped, 2 started, 3 recording, 4 recording paused).
- opx_wait(timeout_ms), then get_new_data(timestamps_only=True) ->
  NewTimestamps(num_timestamps, timestamp, source_num_or_type, channel, unit):
  timestamps in SECONDS (doubles, OPX_GetNewTimestamps), source numbers (the
  default data format), channels 1-based within the source, unit 0 unsorted,
  1 = a, ...; on the digital-input source a strobed word sits in `unit`, with
  bit 15 set when it came in on port B (masked off, as the Strobe Monitor does).
  pyopxclientlib fills those lists to the buffer's full length (it ranges over
  self.num_timestamps, the buffer size): only the first num_timestamps entries
  are data.

A lost connection (an error result) opens a gap (recording_adapters/holdback.py):
codes whose windows overlap it are dropped and their presentations reported
missing; the adapter reconnects every reconnect_s.  An acquisition restart (the
clock going back) is handed on as the contract in base.py says.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np

from recording_adapters.base import RigSource
from recording_adapters.events import RigEvents
from recording_adapters.holdback import CodeHold
from recording_adapters.options import Hertz, Range, Seconds, SourceOptions
from xdream.errors import ConfigError, SessionError

log = logging.getLogger(__name__)

PORT_B_BIT_MASK = 0x7FFF
RESTART_BACK_S = 1.0   # a batch this far behind the clock is a restarted acquisition, not jitter


def _import_client():
    try:
        import pyopxclient
    except Exception as exc:  # ImportError, or the DLL/WinDLL failing to load off Windows
        raise ConfigError(
            "the Plexon adapter needs Plexon's PyOPXClient (`import pyopxclient`), which ships with "
            "Plexon's OmniPlex client SDK and runs only on the Windows PC that runs OmniPlex Server "
            f"(it loads OPXClient64.dll): {type(exc).__name__}: {exc}") from None
    return pyopxclient


@dataclass(frozen=True)
class PlexonOptions(SourceOptions):
    channels: Annotated[int, Range(1)] | None = None   # None: the spike source's channel count
    spike_source: str = "SPK"                          # by name or number
    event_source: str = "10"
    units: Literal["all", "sorted"] = "all"            # sorted: leave unsorted spikes (unit 0) out
    hold_s: Seconds = 0.3
    lag_s: Seconds = 0.05
    reconnect_s: Seconds = 1.0
    timestamp_hz: Hertz | None = None                  # None: OmniPlex's own (global parameters)


class PlexonSource(RigSource):
    name = "plexon"
    Options = PlexonOptions

    def _open(self, o: PlexonOptions) -> None:
        self.api = _import_client()
        self.ok = getattr(self.api, "OPX_ERROR_NOERROR", 0)
        self.sorted_only = o.units == "sorted"
        self.lag_s = o.lag_s
        self.reconnect_s = o.reconnect_s
        self.hold = CodeHold(o.hold_s, source="plexon")
        self.client = self.api.PyOPXClientAPI()
        self.client.connect()
        if not self.client.connected:
            raise SessionError(f"plexon: could not connect to OmniPlex Server (error {self.client.last_result}); "
                               "is OmniPlex Server running on this PC, with acquisition started?")
        self._warn_if_stopped()
        self.spike_source, n_spike = self._source(o.spike_source, getattr(self.api, "SPIKE_TYPE", 1), "spike")
        self.event_source, _ = self._source(o.event_source, getattr(self.api, "EVENT_TYPE", 4), "event")
        self.channels = o.channels if o.channels is not None else n_spike
        self.tick_hz = self._timestamp_frequency(o.timestamp_hz)
        self._last_t = -math.inf       # the latest timestamp delivered
        self._retry_at: float | None = None
        self._stash = None             # a batch after a clock jump, for the next poll
        self.dropped_spikes = 0

    # ------------------------------------------------------------- public
    def _poll(self, timeout_s: float) -> RigEvents:
        # the API gives seconds (doubles): rounded to the nearest tick of OmniPlex's timestamp clock
        # (get_global_parameters().timestamp_frequency, 40 kHz), which is where they came from
        return self._poll_seconds(timeout_s).in_ticks(self.tick_hz)

    def _poll_seconds(self, timeout_s: float) -> RigEvents:
        events = RigEvents()
        if self._stash is not None:
            batch, self._stash = self._stash, None
            self._take(batch, events)
        elif not self.client.connected:
            self._reconnect(timeout_s)
        else:
            self.client.opx_wait(int(timeout_s * 1000))
            data = self.client.get_new_data(timestamps_only=True)
            if self.client.last_result != self.ok:
                self._lost(f"get_new_data returned error {self.client.last_result}")
            else:
                n = int(data.num_timestamps)
                if n > 0:
                    batch = tuple(np.asarray(seq[:n]) for seq in
                                  (data.timestamp, data.source_num_or_type, data.channel, data.unit))
                    if batch[0].max() < self._last_t - RESTART_BACK_S:
                        return self._restart(batch, events)
                    self._take(batch, events)
        if math.isfinite(self._last_t):
            codes, watermark = self.hold.release(self._last_t - self.lag_s)
            events.codes.extend(codes)
            events.watermark = watermark
        return events

    def _close(self) -> None:
        client = getattr(self, "client", None)
        if client is None:           # the client library never loaded
            return
        try:
            client.disconnect()
        except Exception as exc:  # closing must not hide why we are closing
            log.warning("plexon: disconnect failed: %s", exc)

    # ------------------------------------------------------------ private
    def _timestamp_frequency(self, fixed: float | None) -> float:
        """The clock OmniPlex's timestamps count in: the option, else the server's global parameters."""
        if fixed is not None:
            return fixed
        hz = getattr(self.client.get_global_parameters(), "timestamp_frequency", None)
        if not isinstance(hz, (int, float)) or isinstance(hz, bool) or not hz > 0:
            raise SessionError(f"plexon: OmniPlex Server gave timestamp_frequency {hz!r}; set "
                               "--rig-option timestamp_hz=40000 (OmniPlex's timestamp clock)")
        return float(hz)

    def _take(self, batch, events: RigEvents) -> None:
        ts, src, ch, unit = batch
        ts = ts.astype(float)
        self.hold.close_gap(float(ts.min()))  # after a reconnect: the data is whole again from here
        spikes = src == self.spike_source
        if self.sorted_only:
            spikes &= unit >= 1
        channels = ch[spikes].astype(int) - 1          # OmniPlex channels are 1-based
        inside = (channels >= 0) & (channels < self.channels)
        if not inside.all():
            self.dropped_spikes += int((~inside).sum())
            log.warning("plexon: %d spikes on channels outside 1..%d dropped", int((~inside).sum()), self.channels)
        events.spike_times = ts[spikes][inside]
        events.spike_channels = channels[inside]
        words = src == self.event_source
        codes = [(float(t), int(w) & PORT_B_BIT_MASK) for t, w in zip(ts[words], unit[words])]
        self.hold.add([(t, c) for t, c in codes if c != 0])  # single-bit events carry no word
        self._last_t = max(self._last_t, float(ts.max()))

    def _restart(self, batch, events: RigEvents) -> RigEvents:
        log.warning("plexon: the clock went back from %.3f s to %.3f s (acquisition restarted)",
                    self._last_t, float(batch[0].max()))
        events.codes.extend(self.hold.restart(self._last_t))
        events.watermark = self._last_t
        self._last_t = -math.inf
        self._stash = batch
        return events

    def _lost(self, why: str) -> None:
        log.error("plexon: %s; reconnecting to OmniPlex Server every %.1f s", why, self.reconnect_s)
        if math.isfinite(self._last_t):
            self.hold.open_gap(self._last_t, why)
        try:
            self.client.disconnect()
        except Exception as exc:
            log.warning("plexon: disconnect failed: %s", exc)
        self.client.connected = False
        self._retry_at = time.monotonic() + self.reconnect_s

    def _reconnect(self, timeout_s: float) -> None:
        if self._retry_at is not None and time.monotonic() < self._retry_at:
            time.sleep(min(timeout_s, self._retry_at - time.monotonic()))  # poll's own timeout, no more
            return
        self.client.connect()
        if self.client.connected:
            log.warning("plexon: reconnected to OmniPlex Server")
            self._retry_at = None
            self._warn_if_stopped()
        else:
            self._retry_at = time.monotonic() + self.reconnect_s
            log.error("plexon: reconnecting failed (error %s); next try in %.1f s",
                      self.client.last_result, self.reconnect_s)

    def _source(self, wanted: str, source_type: int, what: str) -> tuple[int, int]:
        """(source number, channels) of a source given by name or number, checked against its type."""
        known = {}
        for number in self.client.get_global_parameters().source_ids:
            name, kind, n_chans, _ = self.client.get_source_info(int(number))
            known[int(number)] = (name, kind, n_chans)
        match = [num for num, (name, _, _) in known.items() if str(num) == wanted or name == wanted]
        if not match:
            listing = ", ".join(f"{num} {name}" for num, (name, _, _) in sorted(known.items()))
            raise ConfigError(f"plexon: no {what} source {wanted!r} in OmniPlex; its sources: {listing}")
        number = match[0]
        name, kind, n_chans = known[number]
        if kind != source_type:
            raise ConfigError(f"plexon: source {number} ({name}) is of type {kind}, not a {what} source "
                              f"(type {source_type})")
        return number, int(n_chans)

    def _warn_if_stopped(self) -> None:
        status = self.client.opx_client.get_opx_system_status()
        if status == getattr(self.api, "OPX_DAQ_STOPPED", 1):
            log.warning("plexon: OmniPlex acquisition is stopped: no data will come until it is started")
