"""A real eye tracker through PsychoPy's ioHub common eye-tracker interface.

ioHub (psychopy.iohub) runs each tracker's driver in its own server process
and hands samples to this process over a local socket.  `launchHubServer`
(psychopy/iohub/client/connect.py) takes one keyword per device, named by the
device's class path; the tracker is chosen by `eye.tracker`:

    mouse      eyetracker.hw.mouse.EyeTracker           ioHub's MouseGaze: the X/OS pointer is the eye
    eyelink    eyetracker.hw.sr_research.eyelink.EyeTracker   (plugin psychopy-eyetracker-sr-research)
    tobii      eyetracker.hw.tobii.EyeTracker            (plugin psychopy-eyetracker-tobii)
    gazepoint  eyetracker.hw.gazepoint.gp3.EyeTracker    (plugin psychopy-eyetracker-gazepoint)

`eye.settings` is passed through as that device's ioHub config (model_name,
runtime_settings, calibration, ...: the keys of the tracker's
default_eyetracker.yaml).

Coordinates.  ioHub's Display device is asked to report in 'pix': screen
pixels, 0 at the screen's centre, y up (Display._calculateCoordMappingFunctions,
display2psychopyPix).  Here they become the presenter window's pixels (the same
for a fullscreen window; a smaller window is shifted by where it sits on the
screen) and then degrees with the presenter's own px-per-degree, the one that
places the stimuli (geometry.deg2pix, PsychoPy's 'deg' units): the fixation
check and the drawing agree by construction, whatever ioHub thinks a degree is.

Time.  Each sample's `time` is in ioHub's time base (the driver maps the
tracker's own clock to it; psychopy.iohub.devices.Computer.getTime).  At
opening the offset from ioHub time to the presenter's clock is measured with
the shortest of a few round trips of `io.getTime()`; a sample's presenter time
is `time + offset`.  The newest sample older than `eye.max_sample_age_ms` (on
the presenter's clock) counts as no sample: a tracker that stops sending
breaks fixation instead of freezing the last gaze.

Validity.  A monocular sample is valid when its `status` is 0 (MouseGaze
writes 2 while both mouse buttons are down, its 'blink'); a binocular one
averages the eyes whose gaze is a finite number.  These rules hold for
MouseGaze (read in psychopy/iohub/devices/eyetracker/hw/mouse/eyetracker.py);
the EyeLink, Tobii and GazePoint drivers live in PsychoPy plugins that were
not installed here, and their status conventions are not checked (see
docs/presenter.md).

Calibration.  `calibrate()` calls the tracker's `runSetupProcedure`, which
ioHub runs in its server process in a fullscreen window of its own (EyeLink:
its camera setup, calibration and validation screens); the presenter's window
is minimised meanwhile on Windows (psychopy.hardware.eyetracker.EyetrackerCalibration.run).

Validation.  `validate()` runs PsychoPy's ValidationProcedure in the presenter's own window
(stimulus_client/eye_validation.py) and judges its samples in the presenter's degrees.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path

from stimulus_client import eye_validation
from stimulus_client.config import CalibrationConfig, PresenterConfig, ValidationConfig
from stimulus_client.eye import EyeSource
from xdream.errors import ConfigError

log = logging.getLogger(__name__)

TRACKER_DEVICES = {
    "mouse": "eyetracker.hw.mouse.EyeTracker",
    "eyelink": "eyetracker.hw.sr_research.eyelink.EyeTracker",
    "tobii": "eyetracker.hw.tobii.EyeTracker",
    "gazepoint": "eyetracker.hw.gazepoint.gp3.EyeTracker",
}
TRACKER_NAME = "tracker"            # the device's name inside ioHub (io.devices.tracker)
HUB_MONITOR = "xdream-iohub"        # the Monitor Center entry ioHub writes when no calibration is named
# psychopy.iohub.constants.EventConstants: MONOCULAR_EYE_SAMPLE, BINOCULAR_EYE_SAMPLE, GAZEPOINT_SAMPLE
SAMPLE_TYPES = frozenset({51, 52, 60})
MAX_ABS_PIX = 1e5                   # a gaze further out is a 'missing' placeholder, not a position
CLOCK_ROUND_TRIPS = 7


def hub_kwargs(cfg: PresenterConfig, screen_px: tuple[int, int] | None = None) -> dict:
    """launchHubServer's keyword arguments for this presenter config.

    The Display is configured here rather than from the window (launchHubServer(window=...)):
    with `window` ioHub would report in the window's units and, for a monitor that is not
    saved, write one into the Monitor Center under the window's monitor name."""
    m, e = cfg.monitor, cfg.eye
    w_px, h_px = screen_px or m.resolution
    display: dict[str, typing.Any] = {
        "reporting_unit_type": "pix",
        "color_space": "rgb255",
        "device_number": m.screen,
        "physical_dimensions": {"width": m.width_cm * 10.0, "height": m.width_cm * 10.0 * h_px / w_px,
                                "unit_type": "mm"},
        "default_eye_distance": {"surface_center": m.distance_cm * 10.0, "unit_type": "mm"},
    }
    if m.calibration:
        # read-only: ioHub takes width and distance from the saved monitor
        display.update(psychopy_monitor_name=m.calibration, override_using_psycho_settings=True)
    else:
        # ioHub saves a Monitor Center entry under this name from the numbers above
        display.update(psychopy_monitor_name=HUB_MONITOR, override_using_psycho_settings=False)
    device = dict(e.settings)
    device["name"] = TRACKER_NAME
    kwargs: dict[str, typing.Any] = {"Display": display, TRACKER_DEVICES[e.tracker]: device}
    if e.datastore:
        # an HDF5 file of every ioHub event, beside the presenter's log
        kwargs["experiment_code"] = "xdream"
        kwargs["session_code"] = cfg.connection.name
        kwargs["datastore_name"] = str(Path(cfg.log.dir) / f"iohub-{cfg.connection.name}")
    return kwargs


def sample_position(sample) -> tuple[float, float] | None:
    """(x, y) in ioHub's reporting units from a sample event (namedtuple), or None if invalid."""
    if hasattr(sample, "gaze_x"):   # MonocularEyeSampleEvent
        if getattr(sample, "status", 0) != 0:
            return None
        return _valid(sample.gaze_x, sample.gaze_y)
    eyes = [p for p in (_valid(getattr(sample, "left_gaze_x", None), getattr(sample, "left_gaze_y", None)),
                        _valid(getattr(sample, "right_gaze_x", None), getattr(sample, "right_gaze_y", None)))
            if p is not None]
    if not eyes:
        return None
    return sum(p[0] for p in eyes) / len(eyes), sum(p[1] for p in eyes) / len(eyes)


def _valid(x, y) -> tuple[float, float] | None:
    try:
        x, y = float(x), float(y)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(x) and math.isfinite(y)) or abs(x) > MAX_ABS_PIX or abs(y) > MAX_ABS_PIX:
        return None
    return x, y


def clock_offset(presenter_clock: Callable[[], float], hub_clock: Callable[[], float],
                 trips: int = CLOCK_ROUND_TRIPS) -> tuple[float, float]:
    """(offset, uncertainty) such that presenter time = hub time + offset.

    Each trip reads the presenter's clock, the hub's, the presenter's again; the hub's
    reading is taken to be at the midpoint, and the shortest trip wins (Cristian's method)."""
    best: tuple[float, float] | None = None
    for _ in range(trips):
        before = presenter_clock()
        hub = hub_clock()
        after = presenter_clock()
        if best is None or after - before < best[0]:
            best = (after - before, (before + after) / 2.0 - hub)
    assert best is not None
    return best[1], best[0] / 2.0


class IoHubEye(EyeSource):
    """The newest tracker sample, in degrees of the presenter's window, each frame.

    `io` is a running ioHubConnection (launchHubServer's result); the eye owns it and
    shuts the ioHub server down on close."""
    can_calibrate = True
    can_validate = True

    def __init__(self, io, *, px_per_deg: float, window_offset_px: tuple[float, float] = (0.0, 0.0),
                 clock: Callable[[], float], max_sample_age_s: float = 0.05, window=None,
                 calibration: CalibrationConfig | None = None, validation: ValidationConfig | None = None):
        self.io = io
        self.tracker = io.getDevice(TRACKER_NAME)
        if self.tracker is None:
            raise ConfigError(f"ioHub started without a '{TRACKER_NAME}' device: is the tracker's plugin installed?")
        self.px_per_deg = px_per_deg
        self.window_offset_px = window_offset_px
        self.clock = clock
        self.max_sample_age_s = max_sample_age_s
        self.window = window
        self.calibration = calibration or CalibrationConfig()
        self.validation = validation or ValidationConfig()
        self.offset_s, self.offset_uncertainty_s = clock_offset(clock, io.getTime)
        self._latest: tuple[float, tuple[float, float] | None] | None = None  # (presenter time, gaze deg)
        self.samples = 0
        self._closed = False
        self.tracker.setConnectionState(True)
        self.tracker.setRecordingState(True)
        log.info("ioHub tracker recording; ioHub time + %.6f s (+-%.6f) = presenter time",
                 self.offset_s, self.offset_uncertainty_s)

    def describe(self) -> dict:
        """What the presenter's log keeps about the tracker."""
        try:
            device = self.tracker.getIOHubDeviceClass(full=True)   # e.g. eyetracker.hw.mouse.EyeTracker
        except Exception:  # a log line is not worth failing for
            device = type(self.tracker).__name__
        return {"source": "iohub", "device": device, "px_per_deg": self.px_per_deg,
                "window_offset_px": list(self.window_offset_px), "clock_offset_s": self.offset_s,
                "clock_offset_uncertainty_s": self.offset_uncertainty_s}

    # ------------------------------------------------------------ samples
    def to_degrees(self, x_pix: float, y_pix: float) -> tuple[float, float]:
        """Screen pixels from ioHub (centre 0, y up) -> degrees in the presenter's window."""
        dx, dy = self.window_offset_px
        return (x_pix - dx) / self.px_per_deg, (y_pix - dy) / self.px_per_deg

    def poll(self) -> None:
        """Take every event ioHub has for the tracker; keep the newest sample."""
        for ev in self.tracker.getEvents():
            if getattr(ev, "type", None) not in SAMPLE_TYPES:
                continue
            pos = sample_position(ev)
            self.samples += 1
            t = float(ev.time) + self.offset_s
            if self._latest is None or t >= self._latest[0]:
                self._latest = (t, None if pos is None else self.to_degrees(*pos))

    def latest(self) -> tuple[float, tuple[float, float] | None] | None:
        """(presenter time, gaze in degrees or None) of the newest sample taken so far."""
        return self._latest

    def gaze(self, t: float) -> tuple[float, float] | None:
        # `t` is the frame clock of the frame about to be drawn; a tracker has its own
        # clock, so what counts is how old its newest sample is now
        self.poll()
        if self._latest is None:
            return None
        sample_t, gaze = self._latest
        if self.clock() - sample_t > self.max_sample_age_s:
            return None
        return gaze

    def begin_trial(self, trial: int, t: float, duration_s: float) -> None:
        self.poll()  # drains what queued up between trials

    # ---------------------------------------------------------- calibration
    def calibrate(self) -> dict:
        """The tracker's own setup (calibration, validation where it has one); blocks until done.

        The arguments are built by PsychoPy's own psychopy.hardware.eyetracker.EyetrackerCalibration
        (what Builder's calibration routine uses): it serialises the target stimulus the way each
        tracker's getCalibrationDict expects, and minimises a fullscreen window on Windows."""
        from psychopy import visual
        from psychopy.hardware.eyetracker import EyetrackerCalibration
        c = self.calibration
        target = visual.TargetStim(self.window, name="xdream-calibration-target", radius=c.target_deg / 2,
                                   innerRadius=c.target_deg / 6, lineWidth=2, fillColor=[64, 64, 64],
                                   borderColor=[255, 255, 255], innerFillColor=[0, 255, 0],
                                   colorSpace="rgb255", units="deg", autoLog=False)
        setup = EyetrackerCalibration(self.window, self.tracker, target, units="deg", colorSpace="rgb255",
                                      progressMode="time" if c.auto_pace else "space", targetDur=c.target_s,
                                      targetLayout=c.points, randomisePos=True, movementAnimation=False,
                                      targetDelay=c.delay_s, textColor="Auto")
        try:
            setup.run()
        finally:
            self.tracker.setRecordingState(True)
        self._latest = None  # nothing from before the setup counts
        result = setup.last
        return result if isinstance(result, dict) else {"RESULT": result}

    # ----------------------------------------------------------- validation
    def validate(self) -> dict:
        """PsychoPy's validation in the presenter's window (this thread: it owns the window's GL
        context); blocks for about (delay_s + target_s) per target.  Returns the summary that
        eye_validation.summarize makes, {"cancelled": True} after escape."""
        v = self.validation
        try:
            results = eye_validation.run_procedure(self.window, v, self.px_per_deg)
        finally:
            self.tracker.setRecordingState(True)   # the procedure leaves the tracker as it found it; be sure
            self._latest = None                      # nothing from before counts (it cleared ioHub's events)
        if results is None:
            return {"cancelled": True, "passed": False, "threshold_deg": v.threshold_deg}
        return eye_validation.summarize(results, threshold_deg=v.threshold_deg, gaze_to_deg=self.to_degrees,
                                        target_to_deg=lambda x, y: (x / self.px_per_deg, y / self.px_per_deg))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.tracker.setRecordingState(False)
        except Exception as exc:  # the server may be gone already; quitting it matters more
            log.warning("ioHub tracker did not stop recording: %r", exc)
        finally:
            self.io.quit()


def open_iohub_eye(cfg: PresenterConfig, display) -> IoHubEye:
    """Start ioHub for the configured tracker, beside the presenter's open window."""
    win = getattr(display, "win", None)
    if win is None:
        raise ConfigError("eye.source = 'iohub' needs a window: it cannot run with --headless")
    # before ioHub starts: a target outside the window is a config error, found before the animal waits
    eye_validation.check_positions(cfg.eye.validation, display.layout.px_per_deg,
                                  (display.layout.width, display.layout.height))
    from psychopy.iohub import launchHubServer
    from psychopy.iohub.client import ioHubConnection
    if ioHubConnection.getActiveConnection() is not None:
        raise ConfigError("an ioHub server is already running in this process; one presenter, one ioHub")
    kwargs = hub_kwargs(cfg, _screen_size(win))
    # launchHubServer reads the Display's settings only from a config file's monitor_devices
    # (a Display keyword is added as a second, ignored Display): written to a file it reads once
    with tempfile.TemporaryDirectory(prefix="xdream-iohub-") as tmp:
        path = Path(tmp) / "iohub_config.yaml"   # JSON is YAML: ioHub's yload reads it
        path.write_text(json.dumps({"monitor_devices": [{"Display": kwargs.pop("Display")}]}), encoding="utf-8")
        try:
            io = launchHubServer(iohub_config_name=str(path), **kwargs)
        except Exception as exc:
            raise ConfigError(f"ioHub did not start the {cfg.eye.tracker} tracker "
                              f"({TRACKER_DEVICES[cfg.eye.tracker]}): {exc!r}") from exc
    try:
        offset = window_offset(win, io)
        eye = IoHubEye(io, px_per_deg=display.layout.px_per_deg, window_offset_px=offset, clock=display.now,
                       max_sample_age_s=cfg.eye.max_sample_age_ms / 1000.0, window=win,
                       calibration=cfg.eye.calibration, validation=cfg.eye.validation)
    except BaseException:
        io.quit()
        raise
    log.info("ioHub %s tracker: window centre %s px from the screen's centre", cfg.eye.tracker, offset)
    return eye


def _screen_size(win) -> tuple[int, int] | None:
    try:
        screen = win.winHandle.screen
        return int(screen.width), int(screen.height)
    except AttributeError:
        return None


def window_offset(win, io) -> tuple[float, float]:
    """Where the window's centre is, in ioHub's pix (the screen's centre 0, y up)."""
    if win._isFullScr:
        return 0.0, 0.0
    left, top, right, bottom = io.devices.display.getBounds()
    x, y = win.winHandle.get_location()   # the window's top-left, in the desktop's pixels
    w, h = win.size
    return ((x - left) + w / 2.0 - (right - left) / 2.0, (bottom - top) / 2.0 - ((y - top) + h / 2.0))
