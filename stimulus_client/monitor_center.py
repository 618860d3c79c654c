"""A monitor calibration saved in PsychoPy's Monitor Center, used by name.

`monitor.calibration = "rig-a"` in the presenter config names a monitor saved
with PsychoPy's Monitor Center (or `psychopy.monitors.Monitor(...).save()`), a
JSON file in ~/.psychopy3/monitors.  Its width, viewing distance and size in
pixels replace `monitor.width_cm`, `monitor.distance_cm` and
`monitor.resolution`, so the layout (degrees to pixels, the headless frame,
the fixation window) and the window agree; its gamma goes to the window
(display.PsychoPyDisplay opens the window on the saved Monitor).

`psychopy.monitors.Monitor(name)` quietly makes a temporary monitor when the
name is not saved: the name is checked against `monitors.getAllMonitors()`
first, so a typo stops the presenter instead of showing wrong sizes.
"""

from __future__ import annotations

import logging

import numpy as np

from stimulus_client.config import PresenterConfig
from xdream.errors import ConfigError

log = logging.getLogger(__name__)


def apply_saved(cfg: PresenterConfig) -> dict | None:
    """Put the named saved monitor's geometry into cfg.monitor; returns what was read (None: none named)."""
    name = cfg.monitor.calibration
    if not name:
        return None
    try:
        from psychopy import monitors
    except ImportError as exc:
        raise ConfigError(f"monitor.calibration = {name!r} needs PsychoPy's Monitor Center: {exc}") from None
    saved = monitors.getAllMonitors()
    if name not in saved:
        raise ConfigError(f"monitor.calibration = {name!r} is not a saved PsychoPy monitor "
                          f"(saved: {sorted(saved)}); save it in PsychoPy's Monitor Center first")
    mon = monitors.Monitor(name, verbose=False, autoLog=False)
    width, distance, size = mon.getWidth(), mon.getDistance(), mon.getSizePix()
    if not width or not distance or width <= 0 or distance <= 0:
        raise ConfigError(f"the saved monitor {name!r} has no screen width or viewing distance "
                          f"(width {width!r} cm, distance {distance!r} cm); set them in the Monitor Center")
    m = cfg.monitor
    m.width_cm, m.distance_cm = float(width), float(distance)
    if size:
        m.resolution = [int(size[0]), int(size[1])]
    gamma = mon.getGamma() if not mon.gammaIsDefault() else None
    read = {"name": name, "width_cm": m.width_cm, "distance_cm": m.distance_cm, "resolution": list(m.resolution),
            "gamma": None if gamma is None else [float(g) for g in np.atleast_1d(gamma)]}
    log.info("monitor calibration %r: %s", name, read)
    cfg.validate()
    return read
