"""Event-marker outputs: the presentation's event code, sent to the rig on its onset flip.

The presenter calls `send(code)` from inside the flip (PsychoPy's
`win.callOnFlip`), right after the buffer swap of the onset frame, and
`clear()` on the flip after it.  Both must be short: they run between flips.

    MarkerOutput          the interface; also the 'none' output
     +-- ParallelMarkers  8 data lines of a parallel port (psychopy.parallel):
     |                    the code on the onset flip, 0 on the next flip
     +-- SerialMarkers    a serial TTL strobe box (pyserial): the code as bytes
     +-- LslMarkers       a Lab Streaming Layer marker stream (pylsl), one
                          sample per onset, int32 or string

The hardware classes take the port object as an argument, so tests can hand
them a fake that records the writes; by default they open the real port.
pylsl: liblsl reads its config when first used.  On a rig, multicast lets the
recording PC find the stream.  On a machine that must not send beyond itself,
set LSLAPICFG to a config with `ResolveScope = machine` (see tests/lsl_api.cfg)
before this module creates an outlet.
"""

from __future__ import annotations

import logging
import struct

from stimulus_client.config import MarkersConfig, parallel_address
from xdream.errors import ConfigError

log = logging.getLogger(__name__)


class MarkerOutput:
    """No markers at all ('none'); the base of the real outputs."""
    kind = "none"
    max_code = 65535

    def send(self, code: int) -> None:
        """The onset flip of a presentation with this event code has just happened."""

    def clear(self) -> None:
        """The flip after an onset has just happened (end of a pulse)."""

    def close(self) -> None:
        pass


class ParallelMarkers(MarkerOutput):
    kind = "parallel"
    max_code = 255

    def __init__(self, address: int | str, port=None):
        if port is None:
            from psychopy import parallel  # the stimulus PC's psychopy; only when a port is configured
            port = parallel.ParallelPort(address=address)
        self.port = port
        self.port.setData(0)

    def send(self, code: int) -> None:
        self.port.setData(code)

    def clear(self) -> None:
        self.port.setData(0)

    def close(self) -> None:
        self.port.setData(0)


def strobe_bytes(code: int, strobe: str) -> bytes:
    """One code as a serial strobe box reads it."""
    if strobe == "byte":
        return bytes([code])
    if strobe == "u16le":
        return struct.pack("<H", code)
    if strobe == "u16be":
        return struct.pack(">H", code)
    if strobe == "ascii":
        return f"{code}\n".encode("ascii")
    raise ConfigError(f"unknown serial strobe format {strobe!r}")


class SerialMarkers(MarkerOutput):
    kind = "serial"

    def __init__(self, port_name: str, baud: int, strobe: str, port=None):
        strobe_bytes(1, strobe)  # refuse an unknown format before opening anything
        if port is None:
            import serial  # pyserial, only when a serial port is configured
            port = serial.Serial(port_name, baudrate=baud, timeout=0, write_timeout=0.005)
        self.port = port
        self.strobe = strobe
        self.max_code = 255 if strobe == "byte" else 65535

    def send(self, code: int) -> None:
        self.port.write(strobe_bytes(code, self.strobe))

    def close(self) -> None:
        self.port.close()


class LslMarkers(MarkerOutput):
    kind = "lsl"

    def __init__(self, stream_name: str, fmt: str = "int32", source_id: str = ""):
        import pylsl  # only when an LSL stream is configured
        self._string = fmt == "string"
        info = pylsl.StreamInfo(stream_name, "Markers", 1, pylsl.IRREGULAR_RATE,
                                "string" if self._string else "int32", source_id or stream_name)
        info.desc().append_child_value("producer", "xdream-lab presenter")
        self.outlet = pylsl.StreamOutlet(info)
        log.info("LSL marker stream %r open (%s markers)", stream_name, fmt)

    def send(self, code: int) -> None:
        self.outlet.push_sample([str(code)] if self._string else [code])

    def close(self) -> None:
        del self.outlet


def make_markers(cfg: MarkersConfig, peer_name: str = "presenter") -> MarkerOutput:
    if cfg.kind == "none":
        return MarkerOutput()
    if cfg.kind == "parallel":
        return ParallelMarkers(parallel_address(cfg.address))
    if cfg.kind == "serial":
        return SerialMarkers(cfg.port, cfg.baud, cfg.strobe)
    if cfg.kind == "lsl":
        return LslMarkers(cfg.stream_name, cfg.lsl_format, source_id=f"xdream-{peer_name}-{cfg.stream_name}")
    raise ConfigError(f"unknown markers.kind {cfg.kind!r}")
