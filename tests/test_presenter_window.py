"""The presenter in a real PsychoPy window under Xvfb, in this process, against a
scripted server on loopback.  Every frame is read back from the back buffer
before its flip, so these tests see what the monitor would have shown.

Expected pixel geometry is computed here from the monitor's numbers (the
small-angle size of a degree at the screen's centre), not with the code under
test.  Under Xvfb flips are not paced: the tests count frames, never time them.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from stimulus_client.geometry import Layout
from stimulus_client.keys import KeyboardKeys, KeySource
from stimulus_client.markers import MarkerOutput, ParallelMarkers
from stimulus_client.session_log import read
from tests.xinput import XInput
from tests.test_stimulus_fakes import (OFF, ON, SETTINGS, FakeParallelPort, ScriptedServer, asymmetric_image,
                                       config, make_block, presenter, recording_window, solid_image)

pytestmark = pytest.mark.window

RES_W, RES_H, WIDTH_CM, DIST_CM = 320, 240, 32.0, 57.29578
BG = 128


def px(deg: float) -> float:
    """Degrees -> pixels at the centre of this monitor: distance * angle (rad) * pixels per cm."""
    return deg * math.pi / 180 * DIST_CM * RES_W / WIDTH_CM


def which_image(frame: np.ndarray, colours: dict, row: int, col: int):
    """The index of the solid image whose colour is at (row, col), or None for background."""
    return colours.get(tuple(int(v) for v in frame[row, col]))


def run(p, server):
    result = p.run()
    server.close()
    return result


class RecordingMarkers(MarkerOutput):
    def __init__(self, display):
        self.display = display
        self.codes: list[tuple[int, int]] = []

    def send(self, code):
        self.codes.append((self.display.frame_index, code))


class KeyPresses(KeySource):
    """The real KeyboardKeys (psychopy.hardware.keyboard); each key is pressed through the X
    server (XTEST, as a keyboard would) when its scripted condition becomes true."""

    def __init__(self, display, names, script):
        self.win = display.win
        self.real = KeyboardKeys(names)
        self.script = list(script)
        self.pressed: list[tuple[float, str]] = []
        self.x = XInput()
        self.x.point_at_window(self.win)

    def poll(self):
        if self.script and self.script[0][0]():
            _, name = self.script.pop(0)
            self.x.press(name)
            self.pressed.append((time.monotonic(), name))
        return self.real.poll()

    def close(self):
        self.x.close()


# ------------------------------------------------------------------ geometry
def test_geometry_colours_fixation_and_photodiode(display, tmp_path, monkeypatch):
    cfg = config(stimulus={"size_deg": 6.0, "position_deg": [4.0, 2.0]},
                 fixation_point={"enabled": True, "size_deg": 0.6, "color": [255, 255, 0]},
                 photodiode={"enabled": True, "corner": "top-right", "size_px": 20})
    images = [asymmetric_image(seed=0), asymmetric_image(seed=1)[::-1].copy()]
    block, _ = make_block(0, 2)   # two 20x30 presentations, drawn 6 deg (60 px) wide
    server = ScriptedServer().start()
    server.send_block(block, images)
    win = recording_window(cfg)
    from psychopy import visual
    made_at, original_init = [], visual.ImageStim.__init__

    def counting_init(self, *args, **kwargs):
        made_at.append(win.frame_index)
        original_init(self, *args, **kwargs)
    monkeypatch.setattr(visual.ImageStim, "__init__", counting_init)
    p = presenter(cfg, win, server, tmp_path)
    result = run(p, server)
    assert result.shown == 2 and result.reason == "done"

    # --- where the image must be, from the monitor's numbers
    w, h = px(6.0), px(6.0) * 20 / 30
    cx, cy = RES_W / 2 + px(4.0), RES_H / 2 - px(2.0)
    top, left = round(cy - h / 2), round(cx - w / 2)
    bottom, right = round(cy + h / 2), round(cx + w / 2)
    assert (bottom - top, right - left) == (40, 60)

    pd = (slice(0, 20), slice(RES_W - 20, RES_W))
    onset_frames = []
    for index, frame in win.frames:
        assert frame.shape == (RES_H, RES_W, 3)
        patch = frame[pd]
        assert (patch == 255).all() or (patch == 0).all()
        if (patch == 255).all():
            onset_frames.append(index)
    onsets = [int(r["onset_frame"]) for r in read(p.log.path) if r["event"] == "presentation"]
    assert onset_frames == onsets                      # white exactly on the onset frames
    assert len(made_at) == 2 and max(made_at) < min(onsets)   # textures made before the block's first frame

    frames = dict(win.frames)
    for image, onset in zip(images, onsets):
        drawn = frames[onset]
        # bounding box of the image: whatever differs from the gray outside fixation point and patch
        mask = (drawn != BG).any(axis=2)
        mask[pd] = False
        mask[(drawn == (255, 255, 0)).all(axis=2)] = False
        rows, cols = np.nonzero(mask)
        assert abs(rows.min() - top) <= 1 and abs(rows.max() + 1 - bottom) <= 1
        assert abs(cols.min() - left) <= 1 and abs(cols.max() + 1 - right) <= 1
        # pixel for pixel: each texel is a 2x2 block (interior, away from rounding at the edges)
        expected = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
        np.testing.assert_array_equal(drawn[top + 1:bottom - 1, left + 1:right - 1], expected[1:-1, 1:-1])
        region = drawn[top:bottom, left:right]
        # colour order and orientation, said plainly
        is_flipped = image[0, 10, 0] != 255
        red_rows = region[30:, 20:40] if is_flipped else region[:10, 20:40]
        assert (red_rows[..., 0] == 255).all()
        assert (region[4:36, 1:7, 2] == 255).all()     # the blue strip is on the left
        green = region[-10:, -10:] if not is_flipped else region[:10, -10:]
        assert (green[2:-2, 2:-2] == (0, 255, 0)).all()
        # fixation point: yellow disc of 0.6 deg at the centre
        ys, xs = np.nonzero((drawn == (255, 255, 0)).all(axis=2))
        assert abs(ys.mean() + 0.5 - RES_H / 2) <= 0.5 and abs(xs.mean() + 0.5 - RES_W / 2) <= 0.5
        assert abs((ys.max() - ys.min() + 1) - px(0.6)) <= 1.5
        # the headless display composes the same frame in numpy
        headless = Layout(cfg).compose(image, fixation=True, photodiode_white=True)
        differ = (headless != drawn).any(axis=2)
        assert differ.sum() <= 8, f"{differ.sum()} pixels differ from the headless layout"

    # frame counts: each image on exactly ON frames, then OFF gray frames
    for image, onset in zip(images, onsets):
        on = [i for i in range(onset, onset + ON + OFF) if (frames[i][top + 5:bottom - 5, left + 5:right - 5] != BG).any()]
        assert on == list(range(onset, onset + ON))
    assert onsets[1] - onsets[0] == ON + OFF

    reports = [m.body for _, m in server.reports]
    assert [r.pid for r in reports] == [s.pid for s in block.presentations]
    assert all(r.status == "shown" and r.frames == ON and r.dropped >= 0 for r in reports)
    assert reports[1].onset > reports[0].onset
    logged = [r for r in read(p.log.path) if r["event"] == "presentation"]
    assert all(len(r["intervals"]) == ON + OFF and min(r["intervals"]) > 0 for r in logged)
    assert [r["code"] for r in logged] == [1, 2]


# ------------------------------------------------------------------ fixation
def test_scripted_eye_aborts_the_rest_of_the_trial_and_requeued_ones_are_shown(display, tmp_path):
    """Trial 0 breaks in its 2nd presentation's on-frames; trial 2 breaks at its first frame."""
    cfg = config(eye={"source": "simulated", "away_ms": 200.0,
                      "breaks": [{"trial": 0, "at_ms": 108.0}, {"trial": 2, "at_ms": 0.0}]},
                 trial={"presentations": 3, "fixation_ms": 50.0},
                 fixation_point={"enabled": True, "size_deg": 0.4, "position_deg": [0.0, -5.0]})
    block, images = make_block(0, 7)
    colours = {tuple(int(v) for v in img[0, 0]): i for i, img in enumerate(images)}
    assert len(colours) == 7
    server = ScriptedServer(requeue=True).start()
    server.send_block(block, images)
    win = recording_window(cfg)
    p = presenter(cfg, win, server, tmp_path)
    result = run(p, server)

    pid = [s.pid for s in block.presentations]
    assert server.shown_pids("aborted") == [pid[1], pid[2], pid[6]]
    assert [r for r in server.shown_pids("shown") if r.startswith("b")] == [pid[0], pid[3], pid[4], pid[5]]
    by_pid = {m.body.pid: m.body for _, m in server.reports}
    assert by_pid[pid[1]].onset is not None and by_pid[pid[1]].frames == 2   # on screen when the eye left
    assert by_pid[pid[2]].onset is None and by_pid[pid[2]].frames == 0       # never shown
    assert by_pid[pid[6]].onset is None
    # the server re-queued the three as a new block with new pids: all shown
    requeued = [p_ for p_ in server.status if p_.startswith("r")]
    assert len(requeued) == 3 and all(server.status[r] == "shown" for r in requeued)
    assert result.shown == 7 and result.aborted == 3

    # on screen: count the frames each image was up, block 0 then the re-queued block
    counts = {i: 0 for i in range(7)}
    for _, frame in win.frames:
        i = which_image(frame, colours, RES_H // 2, RES_W // 2)
        if i is not None:
            counts[i] += 1
    # images 1, 2, 6 were re-queued: 2 and 6 shown once (ON), 1 shown 2 + ON frames
    assert counts == {0: ON, 1: 2 + ON, 2: ON, 3: ON, 4: ON, 5: ON, 6: ON}

    # before each trial, the eye was held in the window for fixation_ms (3 frames) after coming back
    log = read(p.log.path)
    onsets = {r["pid"]: r["onset_frame"] for r in log if r["event"] == "presentation"}
    break_frame = onsets[pid[1]] + 2                                   # the frame the eye left at
    away_frames, hold = round(0.2 * 60), 3
    assert onsets[pid[3]] - break_frame >= away_frames + hold


# ------------------------------------------------------------------ markers
def test_parallel_port_gets_the_code_on_the_onset_flip_and_zero_on_the_next(display, tmp_path):
    cfg = config(trial={"presentations": 2})
    block, images = make_block(0, 3, first_code=17)
    server = ScriptedServer().start()
    server.send_block(block, images)
    win = recording_window(cfg)
    port = FakeParallelPort(win)
    p = presenter(cfg, win, server, tmp_path, markers=ParallelMarkers(0x378, port=port))
    run(p, server)
    onsets = [r["onset_frame"] for r in read(p.log.path) if r["event"] == "presentation"]
    writes = port.writes[1:-1]   # the first: 0 on opening; the last: 0 on closing
    assert writes == [w for onset, code in zip(onsets, (17, 18, 19)) for w in ((onset, code), (onset + 1, 0))]


# ------------------------------------------------------------------ keys
def test_pause_key_grays_the_screen_keeps_heartbeats_and_resumes(display, tmp_path):
    cfg = config(trial={"presentations": 3},
                 fixation_point={"enabled": True, "size_deg": 0.6, "color": [255, 255, 0]},
                 photodiode={"enabled": True, "corner": "bottom-left", "size_px": 16})
    block, images = make_block(0, 6)
    server = ScriptedServer(heartbeat_s=0.1).start()
    server.send_block(block, images)
    win = recording_window(cfg)
    markers = RecordingMarkers(win)

    def paused_long_enough():
        return time.monotonic() - keys.pressed[0][0] > 0.6

    keys = KeyPresses(win, [cfg.keys.pause, cfg.keys.quit],
                      [(lambda: len(markers.codes) >= 2, "p"), (paused_long_enough, "p")])
    p = presenter(cfg, win, server, tmp_path, markers=markers, keys=keys)
    result = run(p, server)

    pid = [s.pid for s in block.presentations]
    assert server.shown_pids("shown") == [pid[0], pid[3], pid[4], pid[5]]
    assert server.shown_pids("aborted") == [pid[1], pid[2]]     # the rest of the trial the pause cut
    assert result.reason == "done"
    log = read(p.log.path)
    t_pause = next(r["t"] for r in log if r["event"] == "pause")
    t_resume = next(r["t"] for r in log if r["event"] == "resume")
    beats = [t for t, _, m in server.received if m.type.value == "heartbeat" and t_pause < t < t_resume]
    assert len(beats) >= 2, "no heartbeats while paused"
    # the server was told, so that it stops its block timer meanwhile
    told = [(t, m.type.value) for t, _, m in server.received if m.type.value in ("paused", "resumed")]
    assert [k for _, k in told] == ["paused", "resumed"]
    assert t_pause <= told[0][0] + 0.05 and told[1][0] <= t_resume + 0.5
    # the pause frame: all gray, no fixation point, photodiode black
    # (after the 2nd onset: one frame closes the trial, the next is the pause screen)
    pause_frame = next(f for i, f in win.frames if i == onsets_after(log, pid[1]) + 2)
    patch = (slice(RES_H - 16, RES_H), slice(0, 16))
    assert (pause_frame[patch] == 0).all()
    rest = pause_frame.copy()
    rest[patch] = BG
    assert (rest == BG).all()


def onsets_after(log, pid):
    return next(r["onset_frame"] for r in log if r["event"] == "presentation" and r["pid"] == pid)


def test_quit_key_reports_everything_waits_for_acks_and_says_bye(display, tmp_path):
    cfg = config(trial={"presentations": 3})
    first, images = make_block(0, 6)
    second, images2 = make_block(1, 4, first_code=50)
    server = ScriptedServer(ack_delay_s=0.3, end_when_done=False).start()
    server.send_block(first, images)
    server.send_block(second, images2)
    win = recording_window(cfg)
    markers = RecordingMarkers(win)
    keys = KeyPresses(win, [cfg.keys.pause, cfg.keys.quit], [(lambda: len(markers.codes) >= 2, "escape")])
    p = presenter(cfg, win, server, tmp_path, markers=markers, keys=keys)
    result = p.run()
    assert server.finished.wait(10)
    server.close()

    assert result.reason.startswith("quit") and result.unacknowledged == 0
    assert server.bye is not None and "quit" in server.bye
    pid = [s.pid for s in first.presentations] + [s.pid for s in second.presentations]
    assert server.shown_pids("shown") == [pid[0]]
    assert server.shown_pids("aborted") == sorted(pid[1:])      # nothing lost, the queued block too
    received = [(t, m.type.value) for t, _, m in server.received]
    t_bye = next(t for t, kind in received if kind == "bye")
    t_last_report = max(t for t, kind in received if kind == "shown")
    assert t_bye - t_last_report >= 0.25          # it waited for the (late) acks before leaving
    close = [r for r in read(p.log.path) if r["event"] == "close"][0]
    assert close["unacknowledged"] == 0 and close["aborted"] == 9


# ------------------------------------------------------------------ reconnect
def test_server_restart_mid_block_resumes_without_repeats_or_losses(display, tmp_path):
    """The server's socket closes after the 3rd report (unacked) and a new one binds the same
    endpoint; the restarted server sends its open blocks again with the same pids."""
    settings = dict(SETTINGS, off_ms=16.7)   # 3 on + 1 off
    cfg = config(trial={"presentations": 4})
    first, images = make_block(0, 40)
    second, images2 = make_block(1, 4, first_code=100)
    everything = images + images2
    colours = {tuple(int(v) for v in img[0, 0]): i for i, img in enumerate(everything)}
    assert len(colours) == len(everything)
    # gone for longer than the peer timeout: the presenter gives up on the socket and reconnects
    # END 2 s after the last report: the re-sent blocks reach the presenter's queue and are taken
    # from it before the session ends, however late the reconnect came on a loaded machine
    server = ScriptedServer(settings, heartbeat_s=0.1, peer_timeout_s=0.5, disconnect_after=3,
                            outage_s=1.0, end_delay_s=2.0).start()
    server.send_block(first, images)
    server.send_block(second, images2)
    win = recording_window(cfg, pace_s=0.012)
    p = presenter(cfg, win, server, tmp_path)
    result = run(p, server)

    pids = [s.pid for s in first.presentations + second.presentations]
    assert p.conn.reconnects >= 1
    assert sorted(server.status) == sorted(pids) and set(server.status.values()) == {"shown"}
    after = {m.body.pid for i, m in server.reports if i == 1}
    before = [m.body.pid for i, m in server.reports if i == 0]
    assert before[-1] in after                              # the unacked one was sent again
    assert set(pids) - set(before[:-1]) <= after            # every report not acked reached the new server
    log = read(p.log.path)
    shown_at = [r["onset_frame"] for r in log if r["event"] == "presentation"]
    reconnected = [r for r in log if r["event"] == "block" and r["skipped"]]
    assert reconnected, "the re-sent blocks were not recognised"
    assert all(not r["pids"] for r in reconnected)           # everything in them was already done
    assert len(shown_at) == len(pids)
    # nothing shown twice: every image exactly ON frames on screen
    counts = {}
    for _, frame in win.frames:
        i = which_image(frame, colours, RES_H // 2, RES_W // 2)
        if i is not None:
            counts[i] = counts.get(i, 0) + 1
    assert counts == {i: ON for i in range(len(everything))}
    # and the restart really came mid-block: block 0 was still being shown once the new server heard us
    t_back = min(t for t, i, _ in server.received if i == 1)
    assert any(r["t"] > t_back for r in log if r["event"] == "presentation" and r["block_id"] == 0)
    assert result.shown == len(pids)
