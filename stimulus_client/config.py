"""The stimulus PC's own config: monitor, geometry, markers, eye, trials, keys.

What the server decides (on/off durations, image size in pixels, event codes)
comes in the server's welcome and blocks; everything that depends on the rig in
front of the animal lives here, in a TOML file on the stimulus PC:

    xdream present --config rig.toml

Unknown keys and wrong types are errors that name the key, so a typo fails
before the animal is in the chair.  Every key has a default; with no file at
all the presenter behaves as `xdream dry-run` expects (800x600 window at
60 Hz, images at their own pixel size, centred, no markers, no eye).
stimulus_client/presenter.example.toml is a commented rig config.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from xdream.errors import ConfigError

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
MARKER_KINDS = ("none", "parallel", "serial", "lsl")
SERIAL_STROBES = ("byte", "u16le", "u16be", "ascii")
LSL_FORMATS = ("int32", "string")
EYE_SOURCES = ("none", "simulated")


@dataclass
class MonitorConfig:
    name: str = "xdream-stimulus"   # a PsychoPy Monitor name (a temporary one: nothing is saved)
    distance_cm: float = 57.0       # eye to screen
    width_cm: float = 40.0          # visible width of the screen
    resolution: list[int] = field(default_factory=lambda: [800, 600])  # [w, h] px: the window's size
    refresh_hz: float = 60.0        # durations are counted in frames of this rate
    fullscreen: bool = False
    screen: int = 0                 # which screen, for a multi-monitor stimulus PC


@dataclass
class StimulusConfig:
    # width of the image in degrees (its height keeps the image's aspect ratio);
    # omit it to draw each image at its own pixel size
    size_deg: float | None = None
    position_deg: list[float] = field(default_factory=lambda: [0.0, 0.0])  # centre; x right, y up
    background: int = 128           # gray level 0..255 of the whole screen


@dataclass
class FixationPointConfig:
    enabled: bool = False
    size_deg: float = 0.2           # diameter
    color: list[int] = field(default_factory=lambda: [255, 0, 0])  # RGB 0..255
    position_deg: list[float] = field(default_factory=lambda: [0.0, 0.0])


@dataclass
class PhotodiodeConfig:
    enabled: bool = False
    corner: str = "bottom-left"     # top-left | top-right | bottom-left | bottom-right
    size_px: int = 40               # white on each onset frame, black otherwise


@dataclass
class MarkersConfig:
    kind: str = "none"              # none | parallel | serial | lsl
    address: str = "0x0378"         # parallel: the port's address (Windows), or /dev/parport0 (Linux)
    port: str = ""                  # serial: e.g. COM3 or /dev/ttyUSB0
    baud: int = 115200              # serial
    strobe: str = "byte"            # serial: byte | u16le | u16be | ascii ("<code>\n")
    stream_name: str = "xdream-markers"  # lsl: the marker stream's name (type "Markers")
    lsl_format: str = "int32"       # lsl: int32 | string


@dataclass
class BreakConfig:
    trial: int                      # trial number in the session, from 0
    at_ms: float                    # after the trial's first onset


@dataclass
class EyeConfig:
    source: str = "none"            # none (no fixation control) | simulated
    seed: int = 0                   # simulated: seeds the per-trial breaks
    break_probability: float = 0.0  # simulated: chance that a trial has a break, at a uniform time in it
    breaks: list[BreakConfig] = field(default_factory=list)  # simulated: scripted breaks
    away_ms: float = 300.0          # simulated: how long the eye stays out after a break


@dataclass
class TrialConfig:
    presentations: int = 4          # presentations per trial (one fixation period)
    fixation_window_deg: float = 2.0  # radius around the fixation point
    fixation_ms: float = 300.0      # the eye must stay in the window this long before a trial
    inter_trial_ms: float = 0.0     # gray screen between trials


@dataclass
class KeysConfig:
    pause: str = "p"                # toggles pause (gray screen, heartbeats go on)
    quit: str = "escape"            # ends cleanly: reports flushed, the server told


@dataclass
class ConnectionConfig:
    server: str = ""                # the server's endpoint, e.g. tcp://192.168.1.10:5555
    name: str = "presenter"         # this peer's name in the journal
    welcome_timeout_s: float = 60.0
    flush_timeout_s: float = 5.0    # on quit: how long to wait for the last acks


@dataclass
class LogConfig:
    dir: str = "."                  # one JSONL file per run of the presenter goes here


@dataclass
class PresenterConfig:
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    stimulus: StimulusConfig = field(default_factory=StimulusConfig)
    fixation_point: FixationPointConfig = field(default_factory=FixationPointConfig)
    photodiode: PhotodiodeConfig = field(default_factory=PhotodiodeConfig)
    markers: MarkersConfig = field(default_factory=MarkersConfig)
    eye: EyeConfig = field(default_factory=EyeConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> PresenterConfig:
        m = self.monitor
        if m.distance_cm <= 0 or m.width_cm <= 0:
            raise ConfigError("monitor.distance_cm and monitor.width_cm must be > 0")
        if len(m.resolution) != 2 or min(m.resolution) < 1:
            raise ConfigError(f"monitor.resolution must be [width, height] in pixels, got {m.resolution}")
        if m.refresh_hz <= 0:
            raise ConfigError("monitor.refresh_hz must be > 0")
        s = self.stimulus
        if s.size_deg is not None and s.size_deg <= 0:
            raise ConfigError("stimulus.size_deg must be > 0 (omit it for the image's own pixel size)")
        _pair(s.position_deg, "stimulus.position_deg")
        _gray(s.background, "stimulus.background")
        f = self.fixation_point
        if f.size_deg <= 0:
            raise ConfigError("fixation_point.size_deg must be > 0")
        _rgb(f.color, "fixation_point.color")
        _pair(f.position_deg, "fixation_point.position_deg")
        p = self.photodiode
        _choice(p.corner, CORNERS, "photodiode.corner")
        if not 0 < p.size_px <= min(m.resolution):
            raise ConfigError(f"photodiode.size_px must be in 1..{min(m.resolution)}")
        k = self.markers
        _choice(k.kind, MARKER_KINDS, "markers.kind")
        _choice(k.strobe, SERIAL_STROBES, "markers.strobe")
        _choice(k.lsl_format, LSL_FORMATS, "markers.lsl_format")
        if k.kind == "parallel":
            parallel_address(k.address)
        if k.kind == "serial" and not k.port:
            raise ConfigError("markers.kind = 'serial' needs markers.port (e.g. COM3 or /dev/ttyUSB0)")
        if k.kind == "lsl" and not k.stream_name:
            raise ConfigError("markers.kind = 'lsl' needs markers.stream_name")
        e = self.eye
        _choice(e.source, EYE_SOURCES, "eye.source")
        if not 0.0 <= e.break_probability <= 1.0:
            raise ConfigError("eye.break_probability must be in 0..1")
        if e.away_ms < 0 or any(b.trial < 0 or b.at_ms < 0 for b in e.breaks):
            raise ConfigError("eye.away_ms and each eye.breaks' trial and at_ms must be >= 0")
        t = self.trial
        if t.presentations < 1:
            raise ConfigError("trial.presentations must be >= 1")
        if t.fixation_window_deg <= 0 or t.fixation_ms < 0 or t.inter_trial_ms < 0:
            raise ConfigError("trial.fixation_window_deg must be > 0, fixation_ms and inter_trial_ms >= 0")
        if not self.keys.pause or not self.keys.quit or self.keys.pause == self.keys.quit:
            raise ConfigError("keys.pause and keys.quit must be two different keys")
        c = self.connection
        if c.welcome_timeout_s <= 0 or c.flush_timeout_s < 0:
            raise ConfigError("connection.welcome_timeout_s must be > 0 and flush_timeout_s >= 0")
        return self


def load(path: str | Path | None = None) -> PresenterConfig:
    """Read a presenter TOML file (None: all defaults) and check it."""
    if path is None:
        return PresenterConfig().validate()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"presenter config {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"presenter config {path} is not valid TOML: {exc}") from None
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def from_dict(data: dict) -> PresenterConfig:
    return _build(PresenterConfig, data, "").validate()


def to_dict(cfg: PresenterConfig) -> dict:
    return dataclasses.asdict(cfg)


def parallel_address(text: str) -> int | str:
    """'0x0378' or '888' -> an int address (Windows); '/dev/parport0' -> the path (Linux)."""
    text = text.strip()
    if text.startswith("/"):
        return text
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(f"markers.address must be a port address like '0x0378' or a device like "
                          f"'/dev/parport0', got {text!r}") from None


# ------------------------------------------------------------------ helpers
def _build(cls, data, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown key {_join(where, key)!r}; known keys here: {sorted(fields)}")
    for name, f in fields.items():
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, name)!r} is missing")
    return cls(**{k: _convert(hints[k], v, _join(where, k)) for k, v in data.items()})


def _convert(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where!r} must be a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where!r} must be a string, got {value!r}")
        return value
    raise TypeError(f"no config conversion for {hint}")  # a bug in this module, not bad input


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _pair(value: list[float], where: str) -> None:
    if len(value) != 2:
        raise ConfigError(f"{where} must be [x, y], got {value}")


def _gray(value: int, where: str) -> None:
    if not 0 <= value <= 255:
        raise ConfigError(f"{where} must be in 0..255, got {value}")


def _rgb(value: list[int], where: str) -> None:
    if len(value) != 3 or not all(0 <= v <= 255 for v in value):
        raise ConfigError(f"{where} must be [r, g, b] in 0..255, got {value}")


def _choice(value: str, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{where} must be one of {list(allowed)}, got {value!r}")


def apply_overrides(cfg: PresenterConfig, *, server: str | None = None, window_size=None,
                    frame_rate: float | None = None, fullscreen: bool | None = None, name: str | None = None,
                    log_dir: str | None = None) -> PresenterConfig:
    """Command-line flags over the file: each one given replaces its key."""
    if server is not None:
        cfg.connection.server = server
    if window_size is not None:
        cfg.monitor.resolution = [int(v) for v in window_size]
    if frame_rate is not None:
        cfg.monitor.refresh_hz = float(frame_rate)
    if fullscreen is not None:
        cfg.monitor.fullscreen = fullscreen
    if name is not None:
        cfg.connection.name = name
    if log_dir is not None:
        cfg.log.dir = log_dir
    return cfg.validate()
