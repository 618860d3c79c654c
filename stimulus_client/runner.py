"""Builds the presenter from its config and runs it: the one entry point that
`xdream present` and `run_presenter.py` (PsychoPy's Coder) share."""

from __future__ import annotations

import logging
import os
import platform
import sys

import zmq

from stimulus_client.config import PresenterConfig, to_dict
from xdream.peer import PeerConnection
from stimulus_client.display import open_display
from stimulus_client.eye_sources import make_eye
from stimulus_client.eye_validation import validate_eye
from stimulus_client.markers import make_markers
from stimulus_client.monitor_center import apply_saved
from stimulus_client.presenter import Presenter, Result, ScreenTap
from stimulus_client.session_log import SessionLog
from xdream.errors import ConfigError

log = logging.getLogger(__name__)


def refresh_mismatch(measured: float | None, configured: float) -> bool:
    return measured is None or abs(measured - configured) > max(1.0, 0.02 * configured)


def run(cfg: PresenterConfig, *, headless: bool = False, screen_tap: str | None = None, curve=None) -> Result:
    """Open the display, the marker output and the eye, connect, present until the end."""
    if not cfg.connection.server:
        raise ConfigError("no server endpoint: give --server or connection.server in the presenter config")
    session_log = SessionLog(cfg.log.dir, cfg.connection.name)
    log.info("presenter log: %s", session_log.path)
    opened = []
    try:
        saved_monitor = apply_saved(cfg)  # before anything is laid out: the saved geometry wins
        display = open_display(cfg, headless)  # before hello: opening a window blocks for seconds
        opened.append(display.close)
        configured = cfg.monitor.refresh_hz
        if not headless and refresh_mismatch(display.measured_hz, configured):
            log.warning("measured refresh %s Hz differs from the configured monitor.refresh_hz %.2f Hz; "
                        "durations are counted in frames of the configured rate",
                        "unknown" if display.measured_hz is None else f"{display.measured_hz:.2f}", configured)
        session_log.write("start", config=to_dict(cfg), headless=headless, screen_tap=screen_tap,
                          measured_hz=display.measured_hz, configured_hz=configured,
                          px_per_deg=display.layout.px_per_deg, python=sys.version.split()[0],
                          platform=platform.platform(), psychopy=_psychopy_version(headless),
                          lslapicfg=os.environ.get("LSLAPICFG"), saved_monitor=saved_monitor)
        markers = make_markers(cfg.markers, cfg.connection.name)
        opened.append(markers.close)
        eye = make_eye(cfg, display)
        opened.append(eye.close)
        session_log.write("eye", **eye.describe())
        if cfg.eye.calibrate_at_start and eye.can_calibrate:
            result = eye.calibrate()  # before hello: a setup takes minutes, the server would call us lost
            log.info("tracker setup: %s", result)
            session_log.write("calibration", when="start", result=result)
        if cfg.eye.validate_at_start and eye.can_validate:
            summary, _ = validate_eye(eye)   # before hello too; a failure is a warning, the session goes on
            session_log.write("validation", when="start", **summary)
        tap = ScreenTap(screen_tap, zmq.Context.instance()) if screen_tap else None
        if tap:
            opened.append(tap.close)
        conn = PeerConnection(cfg.connection.server, "presenter", cfg.connection.name, curve=curve)
    except BaseException:
        for close in reversed(opened):
            close()
        session_log.close()
        raise
    # from here on the presenter owns everything and closes it
    return Presenter(conn, display, cfg, markers=markers, eye=eye, session_log=session_log, tap=tap).run()


def _psychopy_version(headless: bool) -> str | None:
    if headless and "psychopy" not in sys.modules:
        return None
    import psychopy
    return psychopy.__version__
