"""A real eye-tracker path: PsychoPy's ioHub, its MouseGaze tracker, under Xvfb.

MouseGaze (psychopy/iohub/devices/eyetracker/hw/mouse) is ioHub's tracker whose
gaze is the mouse pointer; its samples go through the same ioHub server
process, event queue, Display coordinate mapping and client calls as an
EyeLink's, Tobii's or GazePoint's.  The pointer is moved through the X
server's XTEST extension (tests/xinput.py), the way a real mouse moves it, and
ioHub's mouse device sees it through the RECORD extension.  Keys are pressed
the same way.  Expected positions are computed here from the window's place on
the screen and the monitor's numbers, not with the code under test.

ioHub starts its own server process: every test checks that none is left.
The display fixture gives the processes a temporary HOME, where ioHub writes
its session log and Monitor Center entry.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import threading
import time

import numpy as np
import psutil
import pytest

from stimulus_client import config as pconfig
from stimulus_client.display import PsychoPyDisplay
from stimulus_client.iohub_eye import HUB_MONITOR, open_iohub_eye
from tests.test_presenter_cli import PY, env, presenter_log, wait_for, write_config
from tests.test_stimulus_fakes import SETTINGS, ScriptedServer, make_block
from tests.xinput import XInput

pytestmark = pytest.mark.window

RES_W, RES_H, WIDTH_CM, DIST_CM = 320, 240, 32.0, 57.29578


def px(deg: float) -> float:
    """Degrees -> pixels on this monitor: distance * angle (rad) * pixels per cm (about 10 px/deg)."""
    return deg * math.pi / 180 * DIST_CM * RES_W / WIDTH_CM


def iohub_servers() -> set[int]:
    """Every ioHub server process on the machine (its script is start_iohub_process.py)."""
    found = set()
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any("start_iohub_process" in part for part in (p.info["cmdline"] or [])):
                found.add(p.pid)
        except psutil.Error:
            continue
    return found


def iohub_config(**tables) -> pconfig.PresenterConfig:
    data = {"monitor": {"resolution": [RES_W, RES_H], "width_cm": WIDTH_CM, "distance_cm": DIST_CM},
            "eye": {"source": "iohub", "tracker": "mouse", "max_sample_age_ms": 200.0,
                    "settings": {"runtime_settings": {"sampling_rate": 250}}}}
    for name, table in tables.items():
        data.setdefault(name, {}).update(table)
    return pconfig.from_dict(data)


# ------------------------------------------------------------- in this process
def test_mousegaze_gaze_is_the_pointer_in_degrees_of_the_presenter_window(display, tmp_path):
    """The pointer at a known spot of the window reads as that spot in degrees (within a pixel);
    sample times land on the presenter's clock; a tracker that stops sending reads as no gaze;
    closing the eye ends ioHub's server process."""
    before = iohub_servers()
    cfg = iohub_config()
    win = PsychoPyDisplay(cfg)
    x = XInput()
    eye = None
    try:
        eye = open_iohub_eye(cfg, win)
        assert iohub_servers() - before, "no ioHub server process started"
        left, top = win.win.winHandle.get_location()
        for x_deg, y_deg in [(0.0, 0.0), (5.0, -3.0), (-12.0, 9.0), (1.5, 1.0)]:
            # the window's pixel (column, row) of that point, y down, then the desktop's
            col, row = RES_W / 2 + px(x_deg), RES_H / 2 - px(y_deg)
            x.move(round(left + col), round(row + top))
            want = ((round(left + col) - left - RES_W / 2) / px(1), (RES_H / 2 - (round(row + top) - top)) / px(1))

            def arrived(want=want):
                g = eye.gaze(0.0)
                return g is not None and math.hypot(g[0] - want[0], g[1] - want[1]) < 1.0 / px(1)
            wait_for(arrived, 10, f"gaze at {want}")
            t_sample, _ = eye.latest()
            now = win.now()
            assert now - 0.5 < t_sample <= now + 0.002, "sample time not on the presenter's clock"
        assert eye.samples > 10
        eye.tracker.setRecordingState(False)   # the tracker stops sending: its last sample ages
        time.sleep(0.3)
        assert eye.gaze(0.0) is None
    finally:
        if eye is not None:
            eye.close()
        win.close()
        x.close()
    wait_for(lambda: not (iohub_servers() - before), 10, "the ioHub server to exit")
    home = os.environ["HOME"]
    assert os.path.exists(os.path.join(home, ".psychopy3", "iohub_last_session.log"))
    assert os.path.exists(os.path.join(home, ".psychopy3", "monitors", f"{HUB_MONITOR}.json"))


def test_iohub_eye_refuses_the_headless_display():
    from stimulus_client.display import HeadlessDisplay
    from xdream.errors import ConfigError
    with pytest.raises(ConfigError, match="needs a window"):
        open_iohub_eye(iohub_config(), HeadlessDisplay(iohub_config()))


# ---------------------------------------------------------- the presenter process
IOHUB_TOML = """
[eye]
source = "iohub"
tracker = "mouse"
max_sample_age_ms = 200.0
[eye.settings.runtime_settings]
sampling_rate = 250
[trial]
presentations = 3
fixation_ms = 50.0
fixation_window_deg = 2.0
[fixation_point]
enabled = true
"""


def screen_centre(x: XInput) -> tuple[int, int]:
    s = x.d.screen()
    return s.width_in_pixels // 2, s.height_in_pixels // 2


def test_a_mousegaze_fixation_break_aborts_the_trial_as_the_simulated_eye_does(display, tmp_path):
    """As test_presenter_window's scripted-eye test: the presentation on screen when the gaze
    leaves, and the rest of its trial, are aborted; those before stay shown; the server re-queues
    the aborted ones and they are shown once the gaze is back."""
    before = iohub_servers()
    settings = dict(SETTINGS, on_ms=2000.0)          # 120 frames on: a break lands inside one
    server = ScriptedServer(settings, requeue=True).start()
    block, images = make_block(0, 6)
    server.send_block(block, images)
    pid = [s.pid for s in block.presentations]
    cfg = write_config(tmp_path / "rig.toml", server.endpoint, tmp_path, IOHUB_TOML)
    x = XInput()
    cx, cy = screen_centre(x)      # no window manager: the window is centred on the screen
    x.move(cx, cy)
    moves = []

    def gaze_script():
        wait_for(lambda: server.status.get(pid[0]) == "shown", 60, "the first presentation")
        x.move(20, 20)             # about 25 degrees away
        moves.append(("away", time.time()))
        wait_for(lambda: any(s == "aborted" for s in server.status.values()), 30, "an abort")
        x.move(cx + 3, cy - 2)     # back, 0.4 degrees off centre
        moves.append(("back", time.time()))

    mover = threading.Thread(target=gaze_script, daemon=True)
    mover.start()
    try:
        out = subprocess.run([PY, "-m", "xdream.cli", "present", "--config", str(cfg)], env=env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=240)
    finally:
        server.close()
        x.close()
    mover.join(5)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [m for m, _ in moves] == ["away", "back"]

    aborted = [p for p in pid if server.status[p] == "aborted"]
    shown = [p for p in pid if server.status[p] == "shown"]
    first = pid.index(aborted[0])
    assert first in (1, 2)                                   # inside trial 0, after the shown pid0
    assert aborted == pid[first:3] and shown == pid[:first] + pid[3:]
    reports = {m.body.pid: m.body for _, m in server.reports}
    on_frames = round(2.0 * 60)
    assert reports[pid[first]].onset is not None and 0 < reports[pid[first]].frames <= on_frames
    assert all(reports[p].onset is None and reports[p].frames == 0 for p in aborted[1:])
    requeued = [p for p in server.status if p.startswith("r")]
    assert len(requeued) == len(aborted) and all(server.status[p] == "shown" for p in requeued)

    log = presenter_log(tmp_path)
    trials = [r for r in log if r["event"] == "trial"]
    assert trials[0]["outcome"] == "break" and all(t["outcome"] == "done" for t in trials[1:])
    assert {r["reason"] for r in log if r["event"] == "presentation" and r["status"] == "aborted"} == \
        {"fixation break"}
    eye = next(r for r in log if r["event"] == "eye")
    assert eye["device"].endswith("eyetracker.hw.mouse.EyeTracker") and eye["window_offset_px"] == [0.0, 0.0]
    assert abs(eye["px_per_deg"] - px(1)) < 0.01
    wait_for(lambda: not (iohub_servers() - before), 15, "the ioHub server to exit")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["rig.toml", *(p.name for p in tmp_path.glob("presenter-*.jsonl"))])   # nothing else in the cwd


def test_calibration_key_runs_the_trackers_setup_and_quit_works_with_iohubs_keyboard(display, tmp_path):
    """'c' between trials: MouseGaze's calibration runs in ioHub's process (its own window, paced by
    time, started with space); heartbeats go on meanwhile; then escape quits cleanly.  With ioHub
    running, psychopy.hardware.keyboard reads keys through ioHub's keyboard."""
    before = iohub_servers()
    server = ScriptedServer(end_when_done=False, heartbeat_s=0.1).start()
    block, images = make_block(0, 2)
    server.send_block(block, images)
    extra = IOHUB_TOML + """
[eye.calibration]
points = "THREE_POINTS"
target_s = 0.3
delay_s = 0.1
"""
    cfg = write_config(tmp_path / "rig.toml", server.endpoint, tmp_path, extra)
    x = XInput()
    x.move(*screen_centre(x))
    steps = []

    def records(kind):
        try:
            return [r for r in presenter_log(tmp_path) if r["event"] == kind]
        except ValueError:   # the log is not there yet
            return []

    def keys_script():
        wait_for(lambda: len(server.status) == 2, 60, "the block")
        x.press("c")
        steps.append("c")
        deadline = time.monotonic() + 90
        while not records("calibration") and time.monotonic() < deadline:
            x.press("space")       # MouseGaze's setup waits for space on its first screen
            time.sleep(0.5)
        steps.append("calibrated")
        time.sleep(0.5)
        x.press("escape")
        steps.append("escape")

    presser = threading.Thread(target=keys_script, daemon=True)
    presser.start()
    try:
        out = subprocess.run([PY, "-m", "xdream.cli", "present", "--config", str(cfg)], env=env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=240)
        assert server.finished.wait(10)
    finally:
        server.close()
        x.close()
    presser.join(5)
    assert out.returncode == 0, out.stderr[-3000:]
    assert steps == ["c", "calibrated", "escape"]
    log = presenter_log(tmp_path)
    (cal,) = [r for r in log if r["event"] == "calibration"]
    assert cal["result"] == {"RESULT": "CALIBRATION_OK"}
    t0 = next(r["t"] for r in log if r["event"] == "calibration_start")
    beats = [t for t, _, m in server.received if m.type.value == "heartbeat" and t0 < t < cal["t"]]
    assert cal["t"] - t0 > 1.0 and len(beats) >= (cal["t"] - t0) / 0.1 / 3, "heartbeats stopped during setup"
    # the server was told, so its block timer stood still: PAUSED, then RESUMED with the outcome
    told = [(m.type.value, m.body.reason) for _, _, m in server.received if m.type.value in ("paused", "resumed")]
    assert told == [("paused", "tracker setup"), ("resumed", "tracker setup done: {'RESULT': 'CALIBRATION_OK'}")], told
    assert next(r for r in log if r["event"] == "keys")["backend"] == "iohub"
    assert server.bye is not None and "quit" in server.bye
    assert server.shown_pids("shown") == sorted(pid.pid for pid in block.presentations)
    wait_for(lambda: not (iohub_servers() - before), 15, "the ioHub server to exit")


# ------------------------------------------------------------------ validation
VALIDATION_TOML = IOHUB_TOML + """
[eye.validation]
positions_deg = [[0.0, 0.0], [-6.0, 4.0], [6.0, 4.0], [-6.0, -4.0], [6.0, -4.0]]
target_s = 0.8
delay_s = 0.3
target_deg = 2.0
threshold_deg = 0.5
"""
TARGETS = [(0.0, 0.0), (-6.0, 4.0), (6.0, 4.0), (-6.0, -4.0), (6.0, -4.0)]
BACKGROUND = 128


def window_box(x: XInput) -> tuple[int, int, int, int]:
    """The presenter window's rectangle on the desktop: no window manager, so it is centred."""
    cx, cy = screen_centre(x)
    return cx - RES_W // 2, cy - RES_H // 2, RES_W, RES_H


def follow_targets(x: XInput, done, moves: list) -> None:
    """A simulated subject: it looks at the screen (the X server's pixels of the window) and moves
    its gaze, the pointer, to the centre of whatever is drawn there on the background, until done().
    The fixation point (2 px) is too small to count; the targets (2 deg, about 300 px) are not."""
    left, top, w, h = window_box(x)
    last = None
    while not done():
        frame = x.grab(left, top, w, h).astype(int)
        rows, cols = np.nonzero((np.abs(frame - BACKGROUND) > 40).any(axis=2))
        if len(rows) >= 50:
            spot = (left + round(float(cols.mean())), top + round(float(rows.mean())))
            if spot != last:
                x.move(*spot)
                moves.append(spot)
                last = spot
        time.sleep(0.01)


def presenter_records(log_dir, kind):
    try:
        return [r for r in presenter_log(log_dir) if r["event"] == kind]
    except ValueError:   # the log is not there yet
        return []


def test_validate_key_runs_psychopys_validation_and_a_subject_following_the_targets_passes(display, tmp_path):
    """'v' between trials: PsychoPy's ValidationProcedure draws its targets in the presenter's window;
    a simulated subject sees each target on the screen and moves the pointer (MouseGaze's gaze) onto
    it.  Every target has samples, each within 0.3 deg (pixel rounding), so it passes; the server is
    told (PAUSED, then RESUMED with the result's line) and heartbeats go on; escape then quits."""
    before = iohub_servers()
    server = ScriptedServer(end_when_done=False, heartbeat_s=0.1).start()
    block, images = make_block(0, 2)
    server.send_block(block, images)
    cfg = write_config(tmp_path / "rig.toml", server.endpoint, tmp_path, VALIDATION_TOML)
    x = XInput()
    x.move(*screen_centre(x))
    steps, moves = [], []

    def keys_script():
        wait_for(lambda: len(server.status) == 2, 60, "the block")
        x.press("v")
        steps.append("v")
        follow_targets(x, lambda: bool(presenter_records(tmp_path, "validation")), moves)
        steps.append("validated")
        time.sleep(0.3)
        x.press("escape")
        steps.append("escape")

    presser = threading.Thread(target=keys_script, daemon=True)
    presser.start()
    try:
        out = subprocess.run([PY, "-m", "xdream.cli", "present", "--config", str(cfg)], env=env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=240)
        assert server.finished.wait(10)
    finally:
        server.close()
        x.close()
    presser.join(5)
    assert out.returncode == 0, out.stderr[-3000:]
    assert steps == ["v", "validated", "escape"] and len(moves) >= len(TARGETS)
    log = presenter_log(tmp_path)
    (val,) = [r for r in log if r["event"] == "validation"]
    assert val["when"] == "session" and val["passed"] is True and val["threshold_deg"] == 0.5, val
    targets = val["targets"]
    assert sorted(tuple(round(v, 1) for v in t["target_deg"]) for t in targets) == sorted(TARGETS)
    assert tuple(targets[0]["target_deg"]) == (0.0, 0.0)          # the first position is shown first
    assert all(t["samples"] >= 20 and t["mean_error_deg"] < 0.3 and t["passed"] for t in targets), targets
    assert val["mean_error_deg"] < 0.3 and val["max_error_deg"] < 0.5
    told = [(t, m.type.value, m.body.reason) for t, _, m in server.received if m.type.value in ("paused", "resumed")]
    assert [k for _, k, _ in told] == ["paused", "resumed"] and told[0][2] == "eye validation"
    assert told[1][2].startswith("eye validation passed: mean error") and told[1][2] in out.stderr
    beats = [t for t, _, m in server.received if m.type.value == "heartbeat" and told[0][0] < t < told[1][0]]
    assert told[1][0] - told[0][0] > 4.0 and len(beats) >= (told[1][0] - told[0][0]) / 0.1 / 3
    assert server.bye is not None and "quit" in server.bye
    wait_for(lambda: not (iohub_servers() - before), 15, "the ioHub server to exit")


def test_validation_at_start_with_the_gaze_held_away_fails_with_its_errors_and_the_session_goes_on(display,
                                                                                                 tmp_path):
    """eye.validate_at_start: the pointer stays in the screen's corner while the targets come and go.
    Each target's error is the distance from that corner, in the presenter's degrees (computed here
    from the screen's geometry), far over the threshold: the validation fails, as a warning; then
    the gaze comes to the fixation point and the block is shown to the server's END."""
    before = iohub_servers()
    server = ScriptedServer(heartbeat_s=0.1).start()
    block, images = make_block(0, 3)
    server.send_block(block, images)
    cfg = write_config(tmp_path / "rig.toml", server.endpoint, tmp_path,
                       VALIDATION_TOML.replace("max_sample_age_ms", "validate_at_start = true\nmax_sample_age_ms"))
    x = XInput()
    corner = (20, 20)
    x.move(*corner)
    cx, cy = screen_centre(x)
    gaze = ((corner[0] + 0.5 - cx) / px(1), (cy - corner[1]) / px(1))    # about (-49, 36) deg

    def look_back_once_connected():
        # the pointer stays in the corner, stepping by one pixel: ioHub's Linux mouse reports the
        # screen's centre until its first motion event (psychopy/iohub/devices/mouse/linux2.py,
        # Mouse._initialMousePos, "TODO: Implement Linux version"), and ioHub starts after this
        while not server.welcomed:
            for dx in (1, 0):
                x.move(corner[0] + dx, corner[1])
                time.sleep(0.05)
        x.move(cx, cy)

    mover = threading.Thread(target=look_back_once_connected, daemon=True)
    mover.start()
    try:
        out = subprocess.run([PY, "-m", "xdream.cli", "present", "--config", str(cfg)], env=env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=240)
    finally:
        server.close()
        x.close()
    mover.join(5)
    assert out.returncode == 0, out.stderr[-3000:]
    log = presenter_log(tmp_path)
    (val,) = [r for r in log if r["event"] == "validation"]
    assert val["when"] == "start" and val["passed"] is False and val["targets_without_samples"] == 0, val
    for t in val["targets"]:
        want = math.hypot(gaze[0] - t["target_deg"][0], gaze[1] - t["target_deg"][1])
        assert t["samples"] >= 20 and not t["passed"], json.dumps(val)
        assert abs(t["mean_error_deg"] - want) < 0.2 and abs(t["max_error_deg"] - want) < 0.2, (t, want)
    assert val["mean_error_deg"] > 40
    assert "eye validation FAILED: mean error" in out.stderr
    assert server.shown_pids("shown") == sorted(p.pid for p in block.presentations)
    assert not [m for _, _, m in server.received if m.type.value in ("paused", "resumed")]   # before hello
    assert [r["event"] for r in log].index("validation") < [r["event"] for r in log].index("welcome")
    wait_for(lambda: not (iohub_servers() - before), 15, "the ioHub server to exit")


def test_a_one_target_validation_in_process_passes_with_the_gaze_on_it(display, tmp_path):
    """One target: every target has as many samples as the others, the case PsychoPy's results
    code fails on by itself (eye_validation.per_target); the pointer rests on the target's centre,
    and the error is the pixel rounding of the window's centre (under 0.1 deg)."""
    before = iohub_servers()
    cfg = iohub_config(eye={"validation": {"positions_deg": [[0.0, 0.0]], "target_s": 0.7, "delay_s": 0.0,
                                           "threshold_deg": 0.2}})
    win = PsychoPyDisplay(cfg)
    x = XInput()
    eye = None
    try:
        eye = open_iohub_eye(cfg, win)
        left, top = win.win.winHandle.get_location()
        x.move(left + RES_W // 2, top + RES_H // 2)
        summary = eye.validate()
        (target,) = summary["targets"]
        assert summary["passed"] is True and target["target_deg"] == [0.0, 0.0], summary
        assert target["samples"] >= 20 and target["max_error_deg"] < 0.1
        wait_for(lambda: eye.gaze(0.0) is not None, 10, "samples after the validation")  # still recording
    finally:
        if eye is not None:
            eye.close()
        win.close()
        x.close()
    wait_for(lambda: not (iohub_servers() - before), 10, "the ioHub server to exit")
