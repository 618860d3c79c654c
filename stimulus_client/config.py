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

Types, choices (Literal) and ranges (msgspec.Meta) are declared on the fields
and checked by xdream.typed, the one converter of the project;
`PresenterConfig.validate` adds the rules that tie fields together.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta

from xdream import typed
from xdream.errors import ConfigError

Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
MarkerKind = Literal["none", "parallel", "serial", "lsl"]
SerialStrobe = Literal["byte", "u16le", "u16be", "ascii"]
LslFormat = Literal["int32", "string"]
EyeSource = Literal["none", "simulated", "iohub"]
EyeTracker = Literal["mouse", "eyelink", "tobii", "gazepoint"]
KeyBackend = Literal["auto", "ptb", "iohub", "event"]
CalibrationPoints = Literal["THREE_POINTS", "FIVE_POINTS", "NINE_POINTS", "THIRTEEN_POINTS"]
CORNERS = typing.get_args(Corner)
MARKER_KINDS = typing.get_args(MarkerKind)
SERIAL_STROBES = typing.get_args(SerialStrobe)
LSL_FORMATS = typing.get_args(LslFormat)
EYE_SOURCES = typing.get_args(EyeSource)
EYE_TRACKERS = typing.get_args(EyeTracker)
KEY_BACKENDS = typing.get_args(KeyBackend)

Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
Level = Annotated[int, Meta(ge=0, le=255)]                      # a gray or colour level
Pair = Annotated[list[float], Meta(min_length=2, max_length=2)]  # [x, y] in degrees


@dataclass
class MonitorConfig:
    name: str = "xdream-stimulus"   # a PsychoPy Monitor name (a temporary one: nothing is saved)
    # the name of a monitor saved in PsychoPy's Monitor Center: its width, distance, size in
    # pixels and gamma replace width_cm, distance_cm and resolution ("": use the keys below)
    calibration: str = ""
    distance_cm: Positive = 57.0    # eye to screen
    width_cm: Positive = 40.0       # visible width of the screen
    resolution: Annotated[list[Annotated[int, Meta(ge=1)]], Meta(min_length=2, max_length=2)] = field(
        default_factory=lambda: [800, 600])  # [w, h] px: the window's size
    refresh_hz: Positive = 60.0     # durations are counted in frames of this rate
    fullscreen: bool = False
    screen: int = 0                 # which screen, for a multi-monitor stimulus PC


@dataclass
class StimulusConfig:
    # width of the image in degrees (its height keeps the image's aspect ratio);
    # omit it to draw each image at its own pixel size
    size_deg: Positive | None = None
    position_deg: Pair = field(default_factory=lambda: [0.0, 0.0])  # centre; x right, y up
    background: Level = 128         # gray level 0..255 of the whole screen


@dataclass
class FixationPointConfig:
    enabled: bool = False
    size_deg: Positive = 0.2        # diameter
    color: Annotated[list[Level], Meta(min_length=3, max_length=3)] = field(
        default_factory=lambda: [255, 0, 0])  # RGB 0..255
    position_deg: Pair = field(default_factory=lambda: [0.0, 0.0])


@dataclass
class PhotodiodeConfig:
    enabled: bool = False
    corner: Corner = "bottom-left"  # top-left | top-right | bottom-left | bottom-right
    size_px: Annotated[int, Meta(ge=1)] = 40  # white on each onset frame, black otherwise


@dataclass
class MarkersConfig:
    kind: MarkerKind = "none"       # none | parallel | serial | lsl
    address: str = "0x0378"         # parallel: the port's address (Windows), or /dev/parport0 (Linux)
    port: str = ""                  # serial: e.g. COM3 or /dev/ttyUSB0
    baud: int = 115200              # serial
    strobe: SerialStrobe = "byte"   # serial: byte | u16le | u16be | ascii ("<code>\n")
    stream_name: str = "xdream-markers"  # lsl: the marker stream's name (type "Markers")
    lsl_format: LslFormat = "int32"  # lsl: int32 | string


@dataclass
class BreakConfig:
    trial: Annotated[int, Meta(ge=0)]   # trial number in the session, from 0
    at_ms: NonNegative                  # after the trial's first onset


@dataclass
class CalibrationConfig:
    """eye.source = iohub: the tracker's setup, as PsychoPy's EyetrackerCalibration takes it."""
    points: CalibrationPoints = "NINE_POINTS"  # THREE_POINTS | FIVE_POINTS | NINE_POINTS | THIRTEEN_POINTS
    auto_pace: bool = True          # next target after target_s (false: after the space key)
    target_s: Positive = 1.5        # how long each target stays
    delay_s: NonNegative = 1.0      # between targets
    target_deg: Positive = 1.0      # the target's outer diameter


VALIDATION_MIN_TARGET_S = 0.6   # PsychoPy takes the samples from 0.55 to 0.15 s before a target's end


@dataclass
class ValidationConfig:
    """eye.source = iohub: PsychoPy's ValidationProcedure (psychopy.iohub.client.eyetracker.validation),
    drawn in the presenter's window, one target after the other, paced by time."""
    # the targets' centres in degrees (x right, y up, 0 at the window's centre); each must fit the window
    positions_deg: Annotated[list[Pair], Meta(min_length=1, max_length=50)] = field(
        default_factory=lambda: [[0.0, 0.0], [-5.0, 5.0], [5.0, 5.0], [-5.0, -5.0], [5.0, -5.0]])
    randomize: bool = True          # show the targets in a random order (the first one stays first)
    target_s: Positive = 1.0        # how long each target stays (at least 0.6 s)
    delay_s: NonNegative = 0.5      # blank screen between targets
    target_deg: Positive = 1.0      # the target's outer diameter
    # a target passes when the mean distance of its gaze samples from it is at most this;
    # the validation passes when every target does
    threshold_deg: Positive = 1.0


@dataclass
class EyeConfig:
    source: EyeSource = "none"      # none (no fixation control) | simulated | iohub (a real tracker)
    seed: int = 0                   # simulated: seeds the per-trial breaks
    # simulated: chance that a trial has a break, at a uniform time in it
    break_probability: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0
    breaks: list[BreakConfig] = field(default_factory=list)  # simulated: scripted breaks
    away_ms: NonNegative = 300.0    # simulated: how long the eye stays out after a break
    # iohub: which tracker PsychoPy's ioHub drives (mouse = ioHub's MouseGaze, for tests and practice)
    tracker: EyeTracker = "mouse"
    # iohub: the tracker's ioHub device settings, passed through as they are (model_name,
    # runtime_settings, calibration, ...; see the tracker's default_eyetracker.yaml in psychopy/iohub)
    settings: dict[str, typing.Any] = field(default_factory=dict)
    max_sample_age_ms: Positive = 50.0  # iohub: an older newest sample counts as no sample (outside)
    calibrate_at_start: bool = False    # iohub: run the tracker's setup before connecting to the server
    validate_at_start: bool = False     # iohub: then validate it (after calibrate_at_start), before connecting
    datastore: bool = False         # iohub: ioHub also saves every event to an HDF5 file in log.dir
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)  # iohub: [eye.calibration]
    validation: ValidationConfig = field(default_factory=ValidationConfig)     # iohub: [eye.validation]


@dataclass
class TrialConfig:
    presentations: Annotated[int, Meta(ge=1)] = 4  # presentations per trial (one fixation period)
    fixation_window_deg: Positive = 2.0  # radius around the fixation point
    fixation_ms: NonNegative = 300.0     # the eye must stay in the window this long before a trial
    inter_trial_ms: NonNegative = 0.0    # gray screen between trials


@dataclass
class KeysConfig:
    pause: Annotated[str, Meta(min_length=1)] = "p"      # toggles pause (gray screen, heartbeats go on)
    quit: Annotated[str, Meta(min_length=1)] = "escape"  # ends cleanly: reports flushed, the server told
    calibrate: Annotated[str, Meta(min_length=1)] = "c"  # eye.source = iohub: the tracker's calibration
    validate: Annotated[str, Meta(min_length=1)] = "v"   # eye.source = iohub: PsychoPy's validation
    # psychopy.hardware.keyboard's backend: auto (PsychoPy's choice: iohub when ioHub runs, else
    # ptb when psychtoolbox loads, else event) | ptb | iohub | event
    backend: KeyBackend = "auto"

    def named(self) -> dict[str, str]:
        """The presenter's keys by what they do (each must be its own key)."""
        return {"pause": self.pause, "quit": self.quit, "calibrate": self.calibrate, "validate": self.validate}


@dataclass
class ConnectionConfig:
    server: str = ""                # the server's endpoint, e.g. tcp://192.168.1.10:5555
    name: str = "presenter"         # this peer's name in the journal
    welcome_timeout_s: Positive = 60.0
    flush_timeout_s: NonNegative = 5.0  # on quit: how long to wait for the last acks


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
        """The declared types and ranges (again: flags may have changed the file's values), then the
        rules across fields."""
        typed.check(self, root="", error=ConfigError)
        m = self.monitor
        if self.photodiode.size_px > min(m.resolution):
            raise ConfigError(f"photodiode.size_px must be in 1..{min(m.resolution)} (the window's smaller "
                              f"side), got {self.photodiode.size_px}")
        k = self.markers
        if k.kind == "parallel":
            parallel_address(k.address)
        if k.kind == "serial" and not k.port:
            raise ConfigError("markers.kind = 'serial' needs markers.port (e.g. COM3 or /dev/ttyUSB0)")
        if k.kind == "lsl" and not k.stream_name:
            raise ConfigError("markers.kind = 'lsl' needs markers.stream_name")
        named = self.keys.named()
        if len(set(named.values())) < len(named):
            raise ConfigError(f"keys.pause, keys.quit, keys.calibrate and keys.validate must be four different "
                              f"keys, got {named}")
        v = self.eye.validation
        if v.target_s < VALIDATION_MIN_TARGET_S:
            raise ConfigError(f"eye.validation.target_s must be at least {VALIDATION_MIN_TARGET_S} s (PsychoPy's "
                              f"ValidationProcedure takes each target's samples from 0.55 to 0.15 s before its "
                              f"end), got {v.target_s}")
        if self.eye.validate_at_start and self.eye.source != "iohub":
            raise ConfigError(f"eye.validate_at_start needs eye.source = 'iohub' (validation is PsychoPy's ioHub "
                              f"procedure), got eye.source = {self.eye.source!r}")
        if self.eye.calibrate_at_start and self.eye.source != "iohub":
            raise ConfigError(f"eye.calibrate_at_start needs eye.source = 'iohub' (the tracker's setup runs through "
                              f"ioHub), got eye.source = {self.eye.source!r}")
        if self.keys.backend == "iohub" and self.eye.source != "iohub":
            raise ConfigError("keys.backend = 'iohub' needs eye.source = 'iohub' (ioHub runs only for the tracker)")
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
    return typed.convert(data, PresenterConfig, root="", error=ConfigError).validate()


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
