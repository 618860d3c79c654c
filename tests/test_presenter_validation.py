"""Eye validation, without a window: how PsychoPy's results are judged in degrees, and what the
presenter does around a validation (the server told, heartbeats kept, the result logged).

The validation itself, PsychoPy's ValidationProcedure with ioHub's MouseGaze in a real window,
is tested in tests/test_presenter_iohub.py.  Here the eye is a stand-in whose validate() returns
a summary: what is tested is the presenter's side.  The samples below are built with the field
names of PsychoPy's ValidationTargetRenderer.monocular_sample_message_element and
binocular_sample_message_element (psychopy/iohub/client/eyetracker/validation/procedure.py).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from stimulus_client.display import HeadlessDisplay
from stimulus_client.eye import EyeSource
from stimulus_client.eye_validation import check_positions, one_line, per_target, summarize, validate_eye
from stimulus_client.keys import KeySource
from stimulus_client.session_log import read
from tests.test_stimulus_fakes import ScriptedServer, config, make_block, presenter
from xdream.errors import ConfigError

MONO = [("eye_time", np.float64), ("eye_status", int), ("eye_x", np.float64), ("eye_y", np.float64),
        ("targ_pos_x", np.float64), ("targ_pos_y", np.float64)]
BINO = [("eye_time", np.float64), ("eye_status", int), ("left_eye_x", np.float64), ("left_eye_y", np.float64),
        ("right_eye_x", np.float64), ("right_eye_y", np.float64)]
PX_PER_DEG = 10.0


def gaze_to_deg(x, y):
    """ioHub's screen pixels -> degrees, for a window whose centre is 50 px right of the screen's."""
    return (x - 50.0) / PX_PER_DEG, y / PX_PER_DEG


def target_to_deg(x, y):
    return x / PX_PER_DEG, y / PX_PER_DEG


def position(target_px, samples):
    return {"target_position": np.array(target_px, dtype=float),
            "sample_from_filter_stages": {"used_samples": samples}}


def mono(points):
    return np.array([(i * 0.004, 0, x, y, 0.0, 0.0) for i, (x, y) in enumerate(points)], dtype=MONO)


def test_errors_are_in_the_presenters_degrees_per_target_and_overall():
    """Gaze in screen pixels goes through the eye's conversion (here: the window 50 px right of the
    screen's centre); a target passes on its mean error; one target over the threshold fails it all."""
    results = {"position_results": [
        position([0, 0], mono([(50 + 3, 4), (50 - 3, -4)])),           # 0.5 deg off, both samples
        position([100, -50], mono([(150 + 6, -50 + 8), (150, -50)])),  # 1.0 and 0.0 deg: mean 0.5
        position([-100, 50], mono([(-50 + 30, 50 - 40)] * 3)),          # 5 deg off
    ], "passed": True, "mean_error": 0.0}
    s = summarize(results, threshold_deg=1.0, gaze_to_deg=gaze_to_deg, target_to_deg=target_to_deg)
    t = s["targets"]
    assert [x["target_deg"] for x in t] == [[0.0, 0.0], [10.0, -5.0], [-10.0, 5.0]]
    assert [x["mean_error_deg"] for x in t] == [0.5, 0.5, 5.0] and [x["max_error_deg"] for x in t] == [0.5, 1.0, 5.0]
    assert [x["samples"] for x in t] == [2, 2, 3] and [x["passed"] for x in t] == [True, True, False]
    assert s["passed"] is False and s["mean_error_deg"] == pytest.approx(2.0) and s["max_error_deg"] == 5.0
    assert summarize(results, threshold_deg=5.0, gaze_to_deg=gaze_to_deg, target_to_deg=target_to_deg)["passed"]
    assert one_line(s) == "eye validation FAILED: mean error 2.00 deg, max 5.00 deg over 3 targets (threshold 1 deg)"


def test_a_target_without_samples_fails_and_binocular_samples_average_the_eyes():
    both = np.array([(0.0, 0, 50 + 10, 0, 50 - 30, 0), (0.1, 0, math.nan, 0, 50, 0)], dtype=BINO)
    results = {"position_results": [position([0, 0], both), position([30, 0], []),
                                    position([0, 30], mono([]))]}
    s = summarize(results, threshold_deg=3.0, gaze_to_deg=gaze_to_deg, target_to_deg=target_to_deg)
    first, empty, also_empty = s["targets"]
    assert first["samples"] == 1 and first["mean_error_deg"] == 2.0 and first["passed"]   # (1 + 3) / 2; nan left out
    assert empty == {"target_deg": [3.0, 0.0], "samples": 0, "mean_error_deg": None, "max_error_deg": None,
                     "passed": False}
    assert also_empty["samples"] == 0
    assert s["passed"] is False and s["targets_without_samples"] == 2 and s["mean_error_deg"] == 2.0
    assert one_line(s).endswith(", 2 without samples")


def test_equal_sample_counts_keep_one_array_per_target():
    """numpy turns a list of equally long structured arrays into a 2-D array of records, which
    PsychoPy's results code cannot index by field (the failure of a one-target validation)."""
    a, b = mono([(1, 2), (3, 4)]), mono([(5, 6), (7, 8)])
    stock = np.asanyarray([a, b], dtype=object)       # what PsychoPy's getSampleMessageData returns
    assert stock.shape == (2, 2)
    with pytest.raises(IndexError):
        stock[0]["eye_x"]
    fixed = per_target(stock, MONO)
    assert fixed.shape == (2,) and list(fixed[1]["eye_x"]) == [5.0, 7.0] and fixed[0].dtype == a.dtype
    one = per_target(np.asanyarray([a], dtype=object), MONO)     # a one-target validation
    assert one.shape == (1,) and list(one[0]["eye_y"]) == [2.0, 4.0]
    ragged = np.asanyarray([a, mono([(1, 1)])], dtype=object)
    assert per_target(ragged, MONO) is ragged and list(ragged[1]["eye_y"]) == [1.0]


def test_targets_must_fit_the_window():
    cfg = config(eye={"source": "iohub", "validation": {"positions_deg": [[0, 0], [15, 0]], "target_deg": 1.0}})
    check_positions(cfg.eye.validation, PX_PER_DEG, (320, 240))            # 15.5 deg <= 16 deg
    cfg.eye.validation.positions_deg.append([0, -11.6])                     # 12.1 deg > 12 deg
    with pytest.raises(ConfigError, match=r"positions_deg \[0, -11.6\].*320x240 px window"):
        check_positions(cfg.eye.validation, PX_PER_DEG, (320, 240))


class BrokenEye(EyeSource):
    can_validate = True

    def validate(self):
        raise IndexError("list index out of range")   # PsychoPy's procedure when a target had no samples


def test_a_validation_that_cannot_run_is_a_failed_validation_not_a_crash(caplog):
    summary, line = validate_eye(BrokenEye())
    assert summary == {"passed": False, "error": "IndexError('list index out of range')"}
    assert line.startswith("eye validation failed to run: IndexError")
    assert any(r.levelname == "WARNING" and r.getMessage() == line for r in caplog.records)


# ------------------------------------------------------------------ the presenter around it
class SlowEye(EyeSource):
    """Looks at the fixation point; its validation takes `seconds` and says what it was told."""
    can_validate = True

    def __init__(self, summary, seconds, on_start=lambda: None):
        self.summary, self.seconds, self.on_start, self.ran = summary, seconds, on_start, []

    def gaze(self, t):
        return (0.0, 0.0)

    def validate(self):
        self.ran.append(threading.current_thread() is threading.main_thread())
        self.on_start()
        time.sleep(self.seconds)
        return dict(self.summary)


class ScriptedKeys(KeySource):
    """Presses each key once its condition holds."""

    def __init__(self, script):
        self.script = list(script)

    def poll(self):
        if self.script and self.script[0][0]():
            return [self.script.pop(0)[1]]
        return []


SUMMARY = {"passed": False, "threshold_deg": 1.0, "mean_error_deg": 7.5, "max_error_deg": 9.25,
           "targets_without_samples": 0, "targets": [{"target_deg": [0.0, 0.0], "samples": 40,
                                                      "mean_error_deg": 7.5, "max_error_deg": 9.25, "passed": False}]}


def test_validate_key_tells_the_server_keeps_heartbeats_and_logs_a_failed_validation(tmp_path, caplog):
    """'v' while idle: the server gets PAUSED('eye validation'), heartbeats all through the 1.5 s
    validation (run by the main thread, which owns the window), then RESUMED with the result's line;
    the presenter's log keeps the whole summary; a failure is a warning and the session goes on:
    a block sent meanwhile is shown afterwards."""
    server = ScriptedServer(heartbeat_s=0.1, end_when_done=True).start()
    block, images = make_block(0, 2)
    cfg = config(trial={"presentations": 2, "fixation_ms": 0.0})
    eye = SlowEye(SUMMARY, 1.5, on_start=lambda: server.send_block(block, images))  # arrives meanwhile
    keys = ScriptedKeys([])
    p = presenter(cfg, HeadlessDisplay(cfg), server, tmp_path, eye=eye, keys=keys)
    keys.script.append((lambda: p.conn.welcome is not None, "v"))
    result = p.run()
    server.close()
    assert eye.ran == [True] and result.shown == 2
    told = [(t, m.type.value, m.body.reason) for t, _, m in server.received if m.type.value in ("paused", "resumed")]
    line = "eye validation FAILED: mean error 7.50 deg, max 9.25 deg over 1 targets (threshold 1 deg)"
    assert [(k, r) for _, k, r in told] == [("paused", "eye validation"), ("resumed", line)]
    t0, t1 = told[0][0], told[1][0]
    assert t1 - t0 >= 1.5
    beats = [t for t, _, m in server.received if m.type.value == "heartbeat" and t0 < t < t1]
    assert len(beats) >= 1.5 / 0.1 / 3, "heartbeats stopped during the validation"
    shown_at = [t for t, _, m in server.received if m.type.value == "shown"]
    assert min(shown_at) > t1                                   # the block waited for the validation
    (path,) = tmp_path.glob("presenter-*.jsonl")
    (record,) = [r for r in read(path) if r["event"] == "validation"]
    assert record["when"] == "session" and {k: record[k] for k in SUMMARY} == SUMMARY
    assert any(r.levelname == "WARNING" and r.getMessage() == line for r in caplog.records)


def test_validate_key_without_a_validating_eye_says_so_and_goes_on(tmp_path, caplog):
    """'v' while idle with the simulated eye: a warning, nothing sent, nothing logged; then quit."""
    server = ScriptedServer(heartbeat_s=0.1, end_when_done=False).start()
    block, images = make_block(0, 2)
    cfg = config(eye={"source": "simulated"}, trial={"presentations": 2, "fixation_ms": 0.0})
    keys = ScriptedKeys([(lambda: len(server.status) == 2, "v"), (lambda: True, "escape")])
    server.send_block(block, images)
    p = presenter(cfg, HeadlessDisplay(cfg), server, tmp_path, keys=keys)
    result = p.run()
    server.close()
    assert result.shown == 2 and not keys.script and result.reason == "quit: escape pressed"
    assert not [m for _, _, m in server.received if m.type.value in ("paused", "resumed")]
    (path,) = tmp_path.glob("presenter-*.jsonl")
    assert not [r for r in read(path) if r["event"].startswith("validation")]
    assert any("has no validation (it needs eye.source = 'iohub')" in r.getMessage() for r in caplog.records)
