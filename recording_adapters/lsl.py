"""Lab Streaming Layer: event codes from a marker stream, spikes from a spike-event stream.

Markers: what stimulus_client/markers.py's LslMarkers sends (type "Markers",
one sample per onset, int32 or a string holding an integer).  Spikes: LSL
has no standard spike format, so this project's convention: an irregular-rate
numeric stream, one sample per spike, [channel] or [channel, unit], the
sample's timestamp the spike's time (type "Spikes" by default).  Units are
not told apart: a channel's spikes are counted together.

One clock: both inlets post-process with proc_clocksync, so every timestamp
is in this machine's local_clock(), whichever machine stamped it.

The watermark: a producer stamps a sample when the event happens and pushes
it within latency_s (network, a spike sorter's processing), so a stream
drained at local time `now` is whole up to `now - latency_s`, busy or idle (a
quiet marker stream between blocks, a silent channel).  Not "up to its last
sample": a sorter may push one channel's spikes ahead of another's.  A sample
later than latency_s is dropped with a warning and the codes whose windows it
falls in go missing: raise latency_s for a slow sorter.

A stream that disappears (LostError) is searched for again in the background;
codes whose windows overlap its absence are dropped (reported missing).
liblsl reads LSLAPICFG when first used: tests and CI point it at
tests/lsl_api.cfg (ResolveScope = machine).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np

from recording_adapters.base import RigSource
from recording_adapters.events import RigEvents
from recording_adapters.holdback import CodeHold
from recording_adapters.options import Hertz, OptionError, Range, Seconds, SourceOptions
from xdream.errors import SessionError
from xdream.logs import RateLimitedLog

log = logging.getLogger(__name__)

_INT = re.compile(r"\s*[+-]?\d+\s*")
# an inlet's buffer, in liblsl's "seconds": x100 samples for an irregular-rate stream, so
# 3600 holds 360,000 spikes, about 19 s of a 384-channel rig at 50 Hz a channel
BUFFER_S = 3600


def predicate(name: str, type_: str, source_id: str) -> str:
    """An LSL XPath predicate from the options given (empty ones left out; LslOptions.check
    has made sure one is given and none holds a quote)."""
    return " and ".join(f"{key}='{value}'" for key, value in
                        (("name", name), ("type", type_), ("source_id", source_id)) if value)


class _Stream:
    """One inlet, the last timestamp it delivered, and how to find it again."""

    def __init__(self, lsl, what: str, pred: str, resolve_timeout: float, clock_sync: bool = True):
        self.lsl, self.what, self.pred = lsl, what, pred
        self.flags = lsl.proc_clocksync if clock_sync else 0
        found = lsl.resolve_bypred(pred, 1, resolve_timeout)
        if not found:
            raise SessionError(f"lsl: no {what} stream matches {pred} after {resolve_timeout:g} s: is its "
                               "producer running, and do both machines use the same LSLAPICFG "
                               "(ResolveScope, KnownPeers)?")
        if len(found) > 1:
            time.sleep(0.2)      # a second resolve: several producers, or one seen twice?
            ids = {(i.source_id(), i.hostname(), i.uid()) for i in lsl.resolve_bypred(pred, 2, 1.0)}
            if len(ids) > 1:
                raise SessionError(f"lsl: {len(ids)} {what} streams match {pred}; name the one to use with "
                                   "its source_id option")
        self.info = found[0]
        # pylsl's StreamInlet and ContinuousResolver (pylsl ships no type hints); None while lost
        self.inlet: Any | None = None
        self.last = -math.inf          # last timestamp delivered
        self.complete = -math.inf      # every sample before this local time has been delivered
        self.resolver: Any | None = None
        self.open(found[0])

    def open(self, info) -> None:
        lsl = self.lsl
        inlet = lsl.StreamInlet(info, max_buflen=BUFFER_S, recover=False, processing_flags=self.flags)
        self.inlet = inlet
        inlet.open_stream(5.0)
        if self.flags:
            inlet.time_correction(5.0)    # the first clock offset before any sample is trusted
        self.resolver = None

    def lost(self) -> None:
        self.inlet = None
        self.resolver = self.lsl.ContinuousResolver(pred=self.pred, forget_after=2.0)

    def pull(self):
        """(samples, timestamps); LostError passes through."""
        if self.inlet is None:
            raise SessionError(f"lsl: the {self.what} stream is lost; nothing to pull")
        samples, stamps = self.inlet.pull_chunk(timeout=0.0, max_samples=8192)
        return samples, np.asarray(stamps, float)


@dataclass(frozen=True)
class LslOptions(SourceOptions):
    marker_name: str = "xdream-markers"
    marker_type: str = "Markers"
    marker_source_id: str = ""
    spike_name: str = ""
    spike_type: str = "Spikes"
    spike_source_id: str = ""
    channels: Annotated[int, Range(1)] = 32
    latency_s: Seconds = 0.5
    hold_s: Seconds = 0.3
    resolve_timeout_s: Seconds = 10.0
    reconnect_s: Seconds = 1.0
    tick_hz: Hertz = 1_000_000.0    # LSL times are float seconds: rounded to the nearest tick of this
    clock_sync: bool = True         # liblsl's clock-offset correction; off only when every stream is local

    def check(self) -> None:
        for what in ("marker", "spike"):
            keys = [f"{what}_{k}" for k in ("name", "type", "source_id")]
            values = [getattr(self, k) for k in keys]
            if not any(values):
                raise OptionError("/".join(keys), "", "at least one of them, to find the stream by")
            for key, value in zip(keys, values):
                if "'" in value:
                    raise OptionError(key, value, "text without a quote (it goes into an LSL query)")


class LslSource(RigSource):
    name = "lsl"
    Options = LslOptions

    def _open(self, o: LslOptions) -> None:
        import pylsl  # only when an LSL rig is configured

        self._lsl = pylsl
        self._lost_error = pylsl.util.LostError
        self.channels = o.channels
        self.latency = o.latency_s
        self.reconnect_s = o.reconnect_s
        self.hold = CodeHold(o.hold_s, source="lsl")
        self.tick_hz = o.tick_hz
        timeout = o.resolve_timeout_s
        self.markers = _Stream(pylsl, "marker", predicate(o.marker_name, o.marker_type, o.marker_source_id), timeout,
                               o.clock_sync)
        self.spikes = _Stream(pylsl, "spike", predicate(o.spike_name, o.spike_type, o.spike_source_id), timeout,
                              o.clock_sync)
        info = self.spikes.info
        if info.channel_format() == pylsl.cf_string or info.channel_count() not in (1, 2):
            raise SessionError(f"lsl: the spike stream {info.name()!r} must be numeric with 1 or 2 channels "
                               f"([channel] or [channel, unit]); it has {info.channel_count()} channels of "
                               f"format {info.channel_format()}")
        self._handed = -math.inf       # the last watermark handed on
        self._next_search = 0.0
        self._warn = RateLimitedLog(log, burst=3).warning   # per key: the first 3, then one line per 10 s
        self.rejected_markers = 0
        self.late_samples = 0
        log.info("lsl: markers from %r, spikes from %r (%d channels), latency %.2f s",
                 self.markers.info.name(), info.name(), self.channels, self.latency)

    def _poll(self, timeout_s: float) -> RigEvents:
        # LSL stamps are float seconds: every time goes on as the nearest tick of tick_hz (1 us by
        # default; a sorter's sample rate to count on its grid), so that the counter's edges are
        # integers (docs/adapters.md, "The counter")
        return self._poll_seconds(timeout_s).in_ticks(self.tick_hz)

    def _poll_seconds(self, timeout_s: float) -> RigEvents:
        events = RigEvents()
        self._search()
        got = self._pull_spikes(events)
        got |= self._pull_markers(events)
        if not got and timeout_s > 0:
            time.sleep(min(timeout_s, 0.01))   # pull_chunk has no wait on two inlets at once
        now = self._lsl.local_clock()
        for s in (self.markers, self.spikes):
            if s.inlet is not None:    # drained: whole up to `now - latency`, quiet or not
                s.complete = max(s.complete, now - self.latency)
        codes, watermark = self.hold.release(min(self.markers.complete, self.spikes.complete))
        events.codes.extend(codes)
        if math.isfinite(watermark) and watermark > self._handed:
            self._handed = watermark
        if math.isfinite(self._handed):
            events.watermark = self._handed
        return events

    def _pull_spikes(self, events: RigEvents) -> bool:
        s = self.spikes
        if s.inlet is None:
            return False
        chunks_t, chunks_c = [], []
        try:
            while True:
                samples, stamps = s.pull()
                if not len(stamps):
                    break
                values = np.asarray(samples, float).reshape(len(stamps), -1)
                chunks_t.append(stamps)
                chunks_c.append(values[:, 0])
        except self._lost_error:
            self._lost(s)
        if not chunks_t:
            return False
        t, c = np.concatenate(chunks_t), np.concatenate(chunks_c)
        late = t < self._handed
        if late.any():
            self.late_samples += int(late.sum())
            self._warn("late-spikes", "lsl: %d spikes came stamped up to %.3f s before the time already "
                       "declared complete: dropped, and codes whose windows they fall in are dropped too "
                       "(raise latency_s if the producer is slower)", int(late.sum()), self._handed - t[late].min())
            self.hold.gap(float(t[late].min()), self._handed, "spikes arrived late")
        whole = np.isfinite(c) & (c == np.round(c))
        if not whole.all():
            self._warn("bad-channel", "lsl: %d spike samples with a channel that is not an integer: dropped",
                       int((~whole).sum()))
        keep = ~late & whole
        events.spike_times = t[keep]
        events.spike_channels = c[keep].astype(int)
        s.last = max(s.last, float(t.max()))
        return True

    def _pull_markers(self, events: RigEvents) -> bool:
        s = self.markers
        if s.inlet is None:
            return False
        codes = []
        try:
            while True:
                samples, stamps = s.pull()
                if not len(stamps):
                    break
                for sample, t in zip(samples, stamps):
                    code = self._code(sample[0] if len(sample) else None)
                    if code is None:
                        continue
                    if t < self._handed:
                        self._warn("late-marker", "lsl: marker %d stamped %.4f came after that time was declared "
                                   "complete: dropped, its presentation goes missing (raise latency_s?)", code, t)
                        continue
                    if t < s.last:
                        self._warn("back-marker", "lsl: marker %d stamped %.4f s, before the previous marker "
                                   "(%.4f s): timestamps going back; dropped", code, t, s.last)
                        continue
                    codes.append((float(t), code))
                    s.last = float(t)
        except self._lost_error:
            self._lost(s)
        self.hold.add(codes)
        return bool(codes)

    def _code(self, value) -> int | None:
        code = None
        if isinstance(value, str) and _INT.fullmatch(value):
            code = int(value)
        elif isinstance(value, (int, np.integer)):
            code = int(value)
        elif isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
            code = int(value)
        if code is None or code <= 0:
            self.rejected_markers += 1
            self._warn("bad-marker", "lsl: marker %r is not an event code (a positive integer): ignored", value)
            return None
        return code

    def _lost(self, s: _Stream) -> None:
        log.error("lsl: the %s stream %r is gone; searching for it again every %.1f s; presentations "
                  "whose windows overlap its absence will be reported missing", s.what, s.info.name(),
                  self.reconnect_s)
        self.hold.open_gap(max(s.complete, s.last), f"the {s.what} stream disappeared")
        s.lost()

    def _search(self) -> None:
        now = time.monotonic()
        if now < self._next_search:
            return
        self._next_search = now + self.reconnect_s
        for s in (self.markers, self.spikes):
            if s.inlet is None and s.resolver is not None:
                found = s.resolver.results()
                if found:
                    try:
                        s.open(found[0])
                    except Exception as exc:    # liblsl's errors on a stream that vanished again
                        log.warning("lsl: the %s stream %r was seen but could not be opened: %s",
                                    s.what, s.info.name(), exc)
                        s.inlet = None
                        continue
                    back = self._lsl.local_clock()
                    s.complete = s.last = back      # samples stamped before now were lost with the stream
                    if self.markers.inlet is not None and self.spikes.inlet is not None:
                        self.hold.close_gap(back)
                    log.warning("lsl: the %s stream %r is back", s.what, s.info.name())

    def _close(self) -> None:
        # after a failed start, the streams found so far
        for s in (getattr(self, "markers", None), getattr(self, "spikes", None)):
            if s is None:
                continue
            if s.inlet is not None:
                s.inlet.close_stream()
            s.inlet = None
            s.resolver = None
