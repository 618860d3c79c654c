"""A saved PsychoPy Monitor Center calibration, used by name (monitor.calibration).

The monitors are saved with psychopy.monitors under the temporary HOME of the
display fixture, as PsychoPy's Monitor Center saves them.  Expected pixel sizes
are computed here from the saved numbers.
"""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest

from stimulus_client import config as pconfig
from stimulus_client.display import PsychoPyDisplay
from stimulus_client.monitor_center import apply_saved
from xdream.errors import ConfigError

pytestmark = pytest.mark.window


def save_monitor(width_cm, distance_cm, size, gamma=None) -> str:
    from psychopy import monitors
    name = f"xdream-test-{uuid.uuid4().hex[:8]}"
    mon = monitors.Monitor(name, width=width_cm, distance=distance_cm, verbose=False)
    mon.setSizePix(list(size))
    if gamma is not None:
        mon.setGamma(gamma)
    mon.save()
    return name


def test_the_saved_monitors_geometry_replaces_the_configs_and_sizes_the_image(display):
    name = save_monitor(48.0, 68.0, [320, 240])
    cfg = pconfig.from_dict({"monitor": {"calibration": name, "width_cm": 20.0, "distance_cm": 30.0,
                                         "resolution": [640, 480]},
                             "stimulus": {"size_deg": 8.0}})
    read = apply_saved(cfg)
    assert read == {"name": name, "width_cm": 48.0, "distance_cm": 68.0, "resolution": [320, 240], "gamma": None}
    assert (cfg.monitor.width_cm, cfg.monitor.distance_cm, cfg.monitor.resolution) == (48.0, 68.0, [320, 240])
    win = PsychoPyDisplay(cfg)
    try:
        assert win.win.monitor.name == name and list(win.win.size) == [320, 240]
        img = np.full((40, 40, 3), 255, np.uint8)
        (stim,) = win.prepare([img])
        win.draw(stim, fixation=False)
        frame = win.capture()
    finally:
        win.close()
    cols = np.flatnonzero((frame[120] == 255).all(axis=1))
    expected = 8.0 * math.pi / 180 * 68.0 * 320 / 48.0          # small-angle degrees -> pixels
    assert abs(len(cols) - expected) <= 2, (len(cols), expected)  # 2 px: PsychoPy's 0.017455 and edges


def test_a_saved_gamma_is_sent_to_the_windows_lookup_table(display):
    """Xvfb has no XF86VidMode extension, so the hardware lookup table cannot be set here: the
    window refuses to open and the presenter says why.  That it tried shows the saved gamma
    reached the window; the same monitor without a gamma opens."""
    cfg = pconfig.from_dict({"monitor": {"calibration": save_monitor(40.0, 57.0, [320, 240], gamma=2.2)}})
    apply_saved(cfg)
    with pytest.raises(ConfigError, match="(?s)gamma of the saved monitor .*XF86VidMode"):
        PsychoPyDisplay(cfg)
    cfg = pconfig.from_dict({"monitor": {"calibration": save_monitor(40.0, 57.0, [320, 240])}})
    apply_saved(cfg)
    PsychoPyDisplay(cfg).close()


def test_an_unknown_or_incomplete_saved_monitor_stops_the_presenter(display):
    cfg = pconfig.from_dict({"monitor": {"calibration": "no-such-monitor-xdream"}})
    with pytest.raises(ConfigError, match="not a saved PsychoPy monitor"):
        apply_saved(cfg)
    from psychopy import monitors
    name = f"xdream-test-{uuid.uuid4().hex[:8]}"
    mon = monitors.Monitor(name, verbose=False)
    mon.setWidth(None)
    mon.save()
    cfg = pconfig.from_dict({"monitor": {"calibration": name}})
    with pytest.raises(ConfigError, match="no screen width or viewing distance"):
        apply_saved(cfg)


def test_no_calibration_named_leaves_the_config_alone():
    cfg = pconfig.from_dict({"monitor": {"width_cm": 20.0}})
    assert apply_saved(cfg) is None and cfg.monitor.width_cm == 20.0
