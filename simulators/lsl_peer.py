"""A simulated Lab Streaming Layer rig: a marker outlet and a spike-event outlet (pylsl).

The marker stream is what stimulus_client/markers.py's LslMarkers publishes
(type "Markers", 1 channel, irregular rate, int32 or string).  The spike
stream follows this project's convention, since LSL has no standard spike
format: type "Spikes", 2 int32 channels [channel, unit], irregular rate,
one sample per spike, its timestamp the spike's time.

A real producer stamps each sample with its own local_clock() as the event
happens.  The simulated rig's clock (the presenter's frame count) drifts from
wall time, so rig time is mapped onto the LSL clock with an offset that moves
later whenever a batch would otherwise be stamped in the past, and moves
earlier only while no presentation is in flight (a homogeneous Poisson
baseline is unchanged by a shift; a presentation's driven spikes always share
their marker's batch, hence its offset).

liblsl reads LSLAPICFG when first used: point it at tests/lsl_api.cfg
(ResolveScope = machine) on a machine that must not send beyond itself.
"""

from __future__ import annotations

import logging
import uuid

import numpy as np

from recording_adapters.events import RigEvents

log = logging.getLogger(__name__)

_IN_FLIGHT_S = 0.5     # rig time after a marker during which the clock offset may not move back


class LslPeer:
    def __init__(self, channels: int, marker_format: str = "int32"):
        import pylsl

        self._lsl = pylsl
        self.channels = int(channels)
        self.string_markers = marker_format == "string"
        tag = uuid.uuid4().hex[:8]
        self.marker_name = f"xdream-sim-markers-{tag}"
        self.spike_name = f"xdream-sim-spikes-{tag}"
        markers = pylsl.StreamInfo(self.marker_name, "Markers", 1, pylsl.IRREGULAR_RATE,
                                   "string" if self.string_markers else "int32", f"sim-markers-{tag}")
        spikes = pylsl.StreamInfo(self.spike_name, "Spikes", 2, pylsl.IRREGULAR_RATE, "int32",
                                  f"sim-spikes-{tag}")
        chans = spikes.desc().append_child("channels")
        for label in ("channel", "unit"):
            chans.append_child("channel").append_child_value("label", label)
        self._spike_info = spikes
        self.markers = pylsl.StreamOutlet(markers)
        self.spikes = pylsl.StreamOutlet(spikes, chunk_size=0, max_buffered=3600)
        self._offset: float | None = None
        self._last_stamp = -np.inf
        self._last_marker_rig = -np.inf

    def adapter_options(self) -> dict[str, str]:
        return {"marker_name": self.marker_name, "spike_name": self.spike_name, "channels": str(self.channels)}

    def lsl_time(self, rig_time: float) -> float:
        return rig_time + (self._offset or 0.0)

    def send(self, events: RigEvents) -> None:
        grid = events.rate       # ticks: the offset is kept a whole number of ticks, so the
        events = events.in_seconds()   # adapter's rounding gives the ticks' spacing back
        times = [t for t, _ in events.codes] + list(np.asarray(events.spike_times, float))
        if not times:
            return
        first = min(times)
        now = self._lsl.local_clock()
        want = now - first                      # the batch's first event stamped "now"
        if self._offset is None or want > self._offset:
            self._offset = want                 # behind wall time: stamp later, never in the past
        elif first >= self._last_marker_rig + _IN_FLIGHT_S:
            self._offset = max(want, self._last_stamp - first)   # ahead, nothing in flight: come back
        if grid is not None:
            self._offset = float(np.ceil(self._offset * float(grid)) / float(grid))
        for t, code in sorted(events.codes):
            self.push_marker(str(code) if self.string_markers else int(code), self.lsl_time(t))
            self._last_marker_rig = max(self._last_marker_rig, t)
        if len(events.spike_times):
            order = np.argsort(events.spike_times, kind="stable")
            t = np.asarray(events.spike_times, float)[order]
            c = np.asarray(events.spike_channels, int)[order]
            self.push_spikes(c, np.zeros_like(c), t + self._offset)

    # -- raw pushes (also the tests' levers for bad input) ------------------------------------
    def push_marker(self, value, stamp: float) -> None:
        self.markers.push_sample([value], stamp)
        self._last_stamp = max(self._last_stamp, stamp)

    def push_spikes(self, channels, units, stamps) -> None:
        samples = np.stack([np.asarray(channels), np.asarray(units)], axis=1).astype(np.int32).tolist()
        self.spikes.push_chunk(samples, [float(s) for s in stamps])
        self._last_stamp = max(self._last_stamp, float(np.max(stamps)))

    def close_spikes(self) -> None:
        """The spike producer goes away (a crash, a closed program)."""
        if self.spikes is not None:
            del self.spikes
            self.spikes = None

    def reopen_spikes(self) -> None:
        """The spike producer comes back under the same name and source_id."""
        self.spikes = self._lsl.StreamOutlet(self._spike_info, chunk_size=0, max_buffered=3600)

    def close(self) -> None:
        self.close_spikes()
        if self.markers is not None:
            del self.markers
            self.markers = None
