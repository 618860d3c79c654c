"""The ioHub eye's pure parts: sample validity, the clock offset, ioHub's config (no ioHub here)."""

from __future__ import annotations

import math
from collections import namedtuple

import pytest

from stimulus_client import config as pconfig
from stimulus_client.iohub_eye import HUB_MONITOR, TRACKER_DEVICES, clock_offset, hub_kwargs, sample_position
from xdream.errors import ConfigError

Mono = namedtuple("Mono", "type time gaze_x gaze_y status")
Bino = namedtuple("Bino", "type time left_gaze_x left_gaze_y right_gaze_x right_gaze_y status")


def test_monocular_samples_are_valid_only_with_status_0_and_finite_gaze():
    assert sample_position(Mono(51, 1.0, 3.0, -4.0, 0)) == (3.0, -4.0)
    assert sample_position(Mono(51, 1.0, 3.0, -4.0, 2)) is None          # MouseGaze's 'blink'
    assert sample_position(Mono(51, 1.0, math.nan, -4.0, 0)) is None
    assert sample_position(Mono(51, 1.0, 1e7, 0.0, 0)) is None            # a 'missing' placeholder


def test_binocular_samples_average_the_valid_eyes():
    assert sample_position(Bino(52, 1.0, 2.0, 2.0, 4.0, 6.0, 0)) == (3.0, 4.0)
    assert sample_position(Bino(52, 1.0, math.nan, math.nan, 4.0, 6.0, 20)) == (4.0, 6.0)
    assert sample_position(Bino(52, 1.0, math.nan, math.nan, None, 6.0, 22)) is None


def test_clock_offset_takes_the_shortest_round_trip():
    """A hub clock 100 s behind; the second trip is the shortest, and its midpoint is used."""
    ticks = iter([0.0, 0.010, 1.0, 1.002, 2.0, 2.050])
    hub = iter([-99.995 + 0.0, -99.0 + 0.001 - 0.0, -98.0 + 0.025])
    offset, uncertainty = clock_offset(lambda: next(ticks), lambda: next(hub), trips=3)
    assert offset == pytest.approx(1.001 - (-98.999)) and uncertainty == pytest.approx(0.001)


def test_hub_config_reports_in_pixels_and_reads_a_saved_monitor_without_writing_it():
    cfg = pconfig.from_dict({"monitor": {"width_cm": 40.0, "distance_cm": 57.0, "resolution": [800, 600]},
                             "eye": {"source": "iohub", "tracker": "eyelink",
                                     "settings": {"model_name": "EYELINK 1000 DESKTOP"}}})
    kw = hub_kwargs(cfg, (1920, 1080))
    d = kw["Display"]
    assert d["reporting_unit_type"] == "pix" and d["psychopy_monitor_name"] == HUB_MONITOR
    assert d["override_using_psycho_settings"] is False
    assert d["physical_dimensions"] == {"width": 400.0, "height": 225.0, "unit_type": "mm"}
    assert d["default_eye_distance"]["surface_center"] == 570.0
    assert kw[TRACKER_DEVICES["eyelink"]] == {"model_name": "EYELINK 1000 DESKTOP", "name": "tracker"}
    assert "experiment_code" not in kw                                    # no HDF5 unless asked
    cfg.monitor.calibration = "rig-a"
    d = hub_kwargs(cfg)["Display"]
    assert d["psychopy_monitor_name"] == "rig-a" and d["override_using_psycho_settings"] is True


def test_eye_and_key_config_rules():
    with pytest.raises(ConfigError, match="four different keys"):
        pconfig.from_dict({"keys": {"calibrate": "p"}})
    with pytest.raises(ConfigError, match="four different keys"):
        pconfig.from_dict({"keys": {"validate": "c"}})
    with pytest.raises(ConfigError, match="validate_at_start needs eye.source = 'iohub'"):
        pconfig.from_dict({"eye": {"source": "simulated", "validate_at_start": True}})
    with pytest.raises(ConfigError, match="calibrate_at_start needs eye.source = 'iohub'"):
        pconfig.from_dict({"eye": {"source": "simulated", "calibrate_at_start": True}})
    with pytest.raises(ConfigError, match="target_s must be at least 0.6"):
        pconfig.from_dict({"eye": {"source": "iohub", "validation": {"target_s": 0.5}}})
    with pytest.raises(ConfigError, match="positions_deg"):
        pconfig.from_dict({"eye": {"validation": {"positions_deg": []}}})
    with pytest.raises(ConfigError, match="threshold_deg"):
        pconfig.from_dict({"eye": {"validation": {"threshold_deg": 0}}})
    with pytest.raises(ConfigError, match="needs eye.source = 'iohub'"):
        pconfig.from_dict({"keys": {"backend": "iohub"}})
    with pytest.raises(ConfigError, match="eye.tracker"):
        pconfig.from_dict({"eye": {"source": "iohub", "tracker": "smi"}})
    cfg = pconfig.from_dict({"eye": {"source": "iohub", "calibration": {"points": "FIVE_POINTS"}}})
    assert cfg.eye.calibration.points == "FIVE_POINTS" and cfg.keys.calibrate == "c"
    assert cfg.keys.validate == "v" and cfg.eye.validation.threshold_deg == 1.0
    assert len(cfg.eye.validation.positions_deg) == 5 and not cfg.eye.validate_at_start
