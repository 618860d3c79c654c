"""The operator's pause takes effect after the presentation on screen (feature "pause";
server/app.py `_tell_presenters`, stimulus_client/presenter.py `_pause`, docs/protocol.md).

- The real server in a thread of this process, a real presenter in a PsychoPy window under
  Xvfb, and a recorder peer that counts what the presenter's marker line sent, all on
  loopback: the operator pauses at the 2nd onset of a block; at most that presentation is
  shown, nothing until resume (longer than the block timeout), then every presentation is
  counted exactly once.
- The presenter against a scripted server: the server's hold and the pause key's hold
  together; the session runs only once neither holds.
- On the wire: a presenter takes the feature up only from a server that offers it; a
  presenter that never says FEATURES (an older one) is sent no PAUSE.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from server.app import EvolutionServer
from stimulus_client.keys import KeySource
from stimulus_client.markers import MarkerOutput
from stimulus_client.presenter import Presenter
from stimulus_client.session_log import SessionLog, read
from recording_adapters.events import RigEvents
from recording_adapters.recorder import Recorder
from tests.conftest import small_config
from tests.dryrun_helpers import journal
from tests.test_presenter_window import KeyPresses
from tests.test_server import FakePeer, keep_alive, serving
from tests.test_status import _request, _server_of, _status_endpoint
from tests.test_stimulus_fakes import (OFF, ON, SETTINGS, RecordingHeadless, ScriptedServer, config, make_block,
                                       presenter, recording_window)
from xdream import protocol, status_client
from xdream.peer import PeerConnection
from xdream.protocol import MsgType


# ------------------------------------------------------------ helpers
class RigLine(MarkerOutput):
    """The rig's event line: each onset's (frame, code), and (rig time, code) for the rig below;
    `on_onset` runs inside the onset flip, as a marker write does."""

    def __init__(self, display, on_onset):
        self.display = display
        self.onsets: list[tuple[int, int]] = []
        self.codes: queue.Queue = queue.Queue()
        self.on_onset = on_onset
        self.t0 = time.monotonic()

    def send(self, code):
        self.onsets.append((self.display.frame_index, code))
        self.codes.put((time.monotonic() - self.t0, code))
        self.on_onset(len(self.onsets))


class LineRig:
    """A rig stream (recording_adapters/base.py's contract) whose clock is the wall clock since
    the line opened: each code the presenter's line sent, a neuron that fires once 100 ms after
    every onset on both channels (and once at 20 ms, in the baseline), and a watermark that
    follows the wall clock, as a streaming rig's does, paused or not."""
    channels = 2

    def __init__(self, line: RigLine):
        self.line = line

    def poll(self, timeout_s):
        time.sleep(min(timeout_s, 0.01))
        now = time.monotonic() - self.line.t0   # before the codes are taken: every code before it is
        codes = []
        while not self.line.codes.empty():
            codes.append(self.line.codes.get())
        spikes = sorted(t + dt for t, _ in codes for dt in (0.02, 0.1) for _ in range(2))
        channels = [0, 1] * (len(spikes) // 2)
        return RigEvents(codes, np.array(spikes), np.array(channels, dtype=int), now)

    def close(self):
        pass


class Steps(KeySource):
    """No keyboard: each step's action runs once its condition holds, checked at every key poll
    (every frame, and every pass of the pause loop)."""

    def __init__(self, steps):
        self.steps = list(steps)

    def poll(self):
        if self.steps and self.steps[0][0]():
            self.steps.pop(0)[1]()
        return []


def _run_server(server: EvolutionServer) -> tuple[threading.Thread, dict]:
    """`server.run` on its own loop in a thread: {'endpoint', 'summary' or 'error'}."""
    box: dict = {}
    ready = threading.Event()

    def main():
        def bound(endpoint):
            box["endpoint"] = endpoint
            ready.set()
        try:
            box["summary"] = asyncio.run(server.run(on_endpoint=bound))
        except BaseException as exc:  # surfaces in the test
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(60) and "endpoint" in box, box.get("error")
    return thread, box


def _wait_for(predicate, timeout=10.0, what="a condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _journal_has(folder: Path, text: str) -> bool:
    path = folder / "journal.jsonl"
    return path.exists() and text in path.read_text()


# ------------------------------------------------------------ the whole loop
@pytest.mark.window
def test_operator_pause_mid_block_stops_after_the_presentation_on_screen_and_counts_every_one_once(
        display, tmp_path, zmq_ctx):
    """Paused at the block's 2nd onset (the line waits until the server has told the presenter):
    the 2nd presentation runs all its frames, the 3rd and 4th (the rest of the 4-presentation
    trial) are aborted, nothing is shown for 4 s (longer than the 3 s block timeout, which stands
    still), then the block goes on, the two aborted ones are re-queued, and every image of the
    block is shown and counted exactly once; nothing goes missing."""
    cfg = small_config(tmp_path, generations=1, block_timeout_s=3.0)
    folder = tmp_path / "s"
    server = EvolutionServer(cfg, folder)
    thread, box = _run_server(server)
    pcfg = config(trial={"presentations": 4})
    win = recording_window(pcfg)
    paused_at: dict = {}

    def on_onset(n):
        if n == 2:   # the operator clicks Pause while the 2nd presentation is on screen
            status_client.request(zmq_ctx, server.status.endpoint, "pause", by="test")
            _wait_for(lambda: _journal_has(folder, f'"kind": "told_pause", "peer": "{pcfg.connection.name}"'),
                      what="the server's PAUSE to the presenter")
            time.sleep(0.2)   # on its way over loopback; the presenter reads it after this flip
            paused_at["t"], paused_at["frame"] = time.monotonic(), win.frame_index

    def resume():
        paused_at["resume_frame"] = win.frame_index
        status_client.request(zmq_ctx, server.status.endpoint, "resume", by="test")

    line = RigLine(win, on_onset)
    keys = Steps([(lambda: "t" in paused_at and time.monotonic() - paused_at["t"] > 4.0, resume)])
    # the real recorder (aligner, counter), its code timeout far shorter than the pause
    recorder = Recorder(PeerConnection(box["endpoint"], "recorder", "rec", channels=2, context=zmq_ctx),
                        LineRig(line), {"timeout_s": 2.0})
    recording = threading.Thread(target=recorder.run, daemon=True)
    recording.start()
    conn = PeerConnection(box["endpoint"], "presenter", pcfg.connection.name, context=zmq_ctx)
    p = Presenter(conn, win, pcfg, markers=line, keys=keys, session_log=SessionLog(tmp_path, "pres"))
    try:
        result = p.run()
        thread.join(60)
    finally:
        recorder.halt.set()
        recording.join(10)
    assert "error" not in box, box.get("error")
    summary = box["summary"]
    assert result.reason == "done" and p.conn.taken_up == ("pause",)

    records = journal(folder)
    kinds = [r["kind"] for r in records]
    assert not [k for k in kinds if k in ("missing", "late_shown", "late_counts", "rejected", "handler_error")]
    assert summary[0]["n_missing"] == 0
    # on screen: two onsets before the resume, the second one's frames all run
    before = [code for frame, code in line.onsets if frame <= paused_at["resume_frame"]]
    assert len(before) == 2
    first_block = next(r for r in records if r["kind"] == "block")
    pids = [q["pid"] for q in first_block["presentations"]]
    shown = {r["pid"]: r for r in records if r["kind"] == "shown"}
    assert shown[pids[1]]["status"] == "shown" and shown[pids[1]]["frames"] == 6   # on_ms 100 at 60 Hz
    assert [shown[q]["status"] for q in pids[2:4]] == ["aborted", "aborted"]
    assert all(shown[q]["status"] == "shown" for q in pids[:2] + pids[4:])
    # the journal between the pause and the resume: reports of the two onsets before the pause took
    # effect (a report goes at the flip after the presentation's last frame), none of a later one
    i_pause, i_resume = kinds.index("paused"), kinds.index("resumed")
    during = [r for r in records[i_pause:i_resume] if r["kind"] == "shown" and r["status"] == "shown"]
    assert {r["pid"] for r in during} <= {pids[0], pids[1]}
    assert [(r["kind"], r.get("source"), r.get("by")) for r in records if r["kind"] in ("paused", "resumed")] == \
        [("paused", "operator", "test"), ("resumed", "operator", "test")]
    for name in (pcfg.connection.name, "rec"):   # the recorder, told too, let no code time out
        told = [(i, r["kind"]) for i, r in enumerate(records) if r["kind"].startswith("told_") and r["peer"] == name]
        assert [k for _, k in told] == ["told_pause", "told_resume"] and i_pause < told[0][0] < i_resume
    # every presentation reported once, every shown one counted once, every image of the block once
    reported = [r["pid"] for r in records if r["kind"] == "shown"]
    assert len(reported) == len(set(reported))
    counted = [r["pid"] for r in records if r["kind"] == "counts" and r["status"] == "ok"]
    assert sorted(counted) == sorted(q for q, r in shown.items() if r["status"] == "shown")
    # (the aborted ones' codes never came: the recorder reports them missing, which changes nothing)
    assert {r["pid"] for r in records if r["kind"] == "counts" and r["status"] != "ok"} <= set(pids[2:4])
    sent = [q for r in records if r["kind"] == "block" for q in r["presentations"]]
    requeues = [q for q in sent if q["requeue_of"]]
    assert sorted(q["requeue_of"] for q in requeues) == sorted(pids[2:4])
    image_of = {q["pid"]: q["image_id"] for q in sent}
    counted_images = sorted(image_of[q] for q in counted)
    assert counted_images == sorted(q["image_id"] for q in first_block["presentations"])
    assert len(counted) == len(line.onsets) == 8
    # the presenter's own log: the server's hold came at the 2nd onset's flip, and was lifted at the resume
    log = read(p.log.path)
    holds = [r for r in log if r["event"] == "hold"]
    assert [(h["source"], h["held"]) for h in holds] == [("server", True), ("server", False)]
    onset_frames = [f for f, _ in line.onsets]
    assert not [f for f in onset_frames if holds[0]["frame"] < f <= holds[1]["frame"]]


# ------------------------------------------------------------ two holds
class KeySteps(KeyPresses):
    """The real keyboard (KeyPresses: XTEST presses); each step's action (given this object, to
    `press` a key or do anything else) runs once its condition holds, checked at every key poll."""

    def poll(self):
        if self.script and self.script[0][0]():
            self.script.pop(0)[1](self)
        return self.real.poll()

    def press(self, name):
        self.x.press(name)
        self.pressed.append((time.monotonic(), name))


@pytest.mark.window
def test_server_pause_and_pause_key_both_hold_until_both_are_lifted(display, tmp_path):
    """The server's PAUSE comes at the 2nd onset: that presentation runs its ON + OFF frames, the
    3rd (the rest of the trial) is aborted.  While paused the pause key takes the presenter's own
    hold (PAUSED to the server); the server's RESUME then leaves the presenter paused; the key
    lifts it (RESUMED), and only then do the next onsets come."""
    cfg = config(trial={"presentations": 3})
    block, images = make_block(0, 6)
    pid = [s.pid for s in block.presentations]
    server = ScriptedServer(dict(SETTINGS, features=["trial", "pause"]), heartbeat_s=0.1).start()
    server.send_block(block, images)
    win = recording_window(cfg)

    def on_onset(n):
        if n == 2:
            assert server.tell(MsgType.PAUSE, protocol.Pause("operator test")).wait(5)
            time.sleep(0.2)   # on its way over loopback; read after this flip

    line = RigLine(win, on_onset)

    def told(kind):
        return [t for t, m in server.told if m.type.value == kind]

    def heard(kind):
        return [t for t, _, m in server.received if m.type.value == kind]

    frames = {}

    def resume_by_server(keys):
        assert server.tell(MsgType.RESUME, protocol.Resume("operator")).wait(5)
        frames["server_resume"] = win.frame_index

    def lift_key(keys):
        frames["key_off"] = win.frame_index
        keys.press(cfg.keys.pause)

    keys = KeySteps(win, [cfg.keys.pause, cfg.keys.quit], [
        # the key once the 2nd presentation is reported (at the flip that ends the trial, before the
        # pause screen): pressed mid-trial it would abort that presentation
        (lambda: server.status.get(pid[1]) == "shown" and time.time() - told("pause")[0] > 0.3,
         lambda k: k.press(cfg.keys.pause)),
        (lambda: heard("paused"), resume_by_server),
        (lambda: told("resume") and time.time() - told("resume")[0] > 0.5, lift_key)])
    p = presenter(cfg, win, server, tmp_path, markers=line, keys=keys)
    result = p.run()
    server.close()

    assert result.reason == "done"
    assert server.shown_pids("aborted") == [pid[2]]
    assert server.shown_pids("shown") == [pid[0], pid[1], pid[3], pid[4], pid[5]]
    by_pid = {m.body.pid: m.body for _, m in server.reports}
    assert by_pid[pid[1]].frames == ON
    log = read(p.log.path)
    logged = {r["pid"]: r for r in log if r["event"] == "presentation"}
    assert len(logged[pid[1]]["intervals"]) == ON + OFF            # its off frames ran too
    # the holds, in order: server on, key on, server off (still paused), key off
    holds = [(h["source"], h["held"]) for h in log if h["event"] == "hold"]
    assert holds == [("server", True), ("key", True), ("server", False), ("key", False)]
    assert [r["event"] for r in log if r["event"] in ("pause", "resume")] == ["pause", "resume"]
    # two onsets before the pause, none from the server's resume until the key lifted the last hold
    onsets = [f for f, _ in line.onsets]
    assert len(onsets) == 5 and onsets[1] < frames["server_resume"]
    assert [f for f in onsets if f > onsets[1] and f <= frames["key_off"]] == []
    # the server heard the key's hold (PAUSED, RESUMED), never one for its own
    assert [m.type.value for _, _, m in server.received if m.type.value in ("paused", "resumed")] == \
        ["paused", "resumed"]
    assert heard("resumed")[0] > told("resume")[0]


# ------------------------------------------------------------ the feature on the wire
def test_a_presenter_takes_up_pause_only_from_a_server_that_offers_it(tmp_path):
    """An older server's welcome lists no "pause": the presenter sends it nothing new; a server
    that lists it gets one FEATURES ["pause"], before any report."""
    cfg = config(trial={"presentations": 2})
    for offered, expected in (([], []), (["trial", "pause"], [["pause"]])):
        block, images = make_block(0, 2)
        server = ScriptedServer(dict(SETTINGS, features=offered) if offered else SETTINGS).start()
        server.send_block(block, images)
        p = presenter(cfg, RecordingHeadless(cfg), server, tmp_path / str(len(offered)))
        result = p.run()
        server.close()
        assert result.shown == 2
        features = [m.body.features for _, _, m in server.received if m.type == MsgType.FEATURES]
        assert features == expected
        types = server.types()
        if expected:
            assert types.index("features") < types.index("shown")


async def test_only_peers_that_took_up_pause_are_told_and_a_late_one_at_once(tmp_path, zmq_ctx):
    """Two presenters and a recorder: `pres` never says FEATURES (an older presenter) and is sent
    no PAUSE; `new` takes up "pause" and gets PAUSE / RESUME with the operator's pause; a presenter
    joining while paused is told at once; the recorder is told of every hold (a presenter's pause
    key too, which the other presenters are not told of); a quick pause-resume leaves RESUME last;
    a feature not offered to the role is refused."""
    cfg = small_config(tmp_path, generations=1)
    folder = tmp_path / "s"
    async with serving(cfg, folder) as (run, pres, rec):
        server = _server_of(run)
        endpoint = await _status_endpoint(server)
        ctx = pres.sock.context
        new = FakePeer(ctx, server.endpoint, "presenter", "new")
        for peer in (rec, pres, new):
            await peer.join()
        alive = [asyncio.create_task(keep_alive(p)) for p in (pres, rec, new)]
        await new.send(MsgType.FEATURES, protocol.Features(["pause"]))
        await rec.send(MsgType.FEATURES, protocol.Features(["pause"]))
        await pres.expect(MsgType.BLOCK)
        await new.expect(MsgType.BLOCK)
        await _request(zmq_ctx, endpoint, "pause", by="test")
        assert (await new.expect(MsgType.PAUSE)).body.reason == "operator test"
        assert (await rec.expect(MsgType.PAUSE)).body.reason == "paused by operator"
        with pytest.raises(TimeoutError):
            await pres.expect(MsgType.PAUSE, timeout=1.0)
        late = FakePeer(ctx, server.endpoint, "presenter", "late")
        await late.join()
        await late.send(MsgType.FEATURES, protocol.Features(["pause", "trial"]))
        assert (await late.expect(MsgType.PAUSE)).body.reason == "operator test"
        await _request(zmq_ctx, endpoint, "resume", by="test")
        for peer in (new, late, rec):
            assert (await peer.expect(MsgType.RESUME)).body.reason == "resumed"
        # a presenter's pause key: the recorder hears of it, the other presenters do not
        await pres.send(MsgType.PAUSED, protocol.Paused("pause key"))
        assert (await rec.expect(MsgType.PAUSE)).body.reason == "paused by presenter pres"
        await pres.send(MsgType.RESUMED, protocol.Resumed("pause key"))
        await rec.expect(MsgType.RESUME)
        with pytest.raises(TimeoutError):
            await new.expect(MsgType.PAUSE, timeout=0.5)
        # a pause and a resume in quick succession: what `new` hears last is RESUME (or nothing)
        new.inbox.clear()
        await _request(zmq_ctx, endpoint, "pause", by="test")
        await _request(zmq_ctx, endpoint, "resume", by="test")
        with pytest.raises(TimeoutError):   # (never comes: collects everything else for 1 s)
            await new.expect(MsgType.END, timeout=1.0)
        heard = [m.type for m in new.inbox if m.type in (MsgType.PAUSE, MsgType.RESUME)]
        assert heard in ([], [MsgType.PAUSE, MsgType.RESUME])
        await new.send(MsgType.FEATURES, protocol.Features(["spike_times"]))
        assert "not offered" in (await new.expect(MsgType.ERROR)).body.reason
        for t in alive:
            t.cancel()
    records = journal(folder)
    taken = [(r["peer"], r["features"]) for r in records if r["kind"] == "peer_features"]
    assert taken == [("new", ["pause"]), ("rec", ["pause"]), ("late", ["pause", "trial"])]
    told = [(r["kind"], r["peer"]) for r in records if r["kind"].startswith("told_")]
    assert not [t for t in told if t[1] == "pres"]
    assert sorted(told[:6]) == sorted([("told_pause", "new"), ("told_pause", "rec"), ("told_pause", "late"),
                                       ("told_resume", "new"), ("told_resume", "rec"), ("told_resume", "late")])
    assert told[6:8] == [("told_pause", "rec"), ("told_resume", "rec")]


def test_a_new_welcome_lifts_the_old_connections_server_pause(tmp_path):
    """PAUSE at the 1st onset, then the server restarts (on the 2nd report) and, knowing nothing
    of a pause, does not say PAUSE again: the presenter goes on after the new welcome instead of
    waiting for a RESUME that would never come."""
    cfg = config(trial={"presentations": 2})
    block, images = make_block(0, 4)
    server = ScriptedServer(dict(SETTINGS, features=["trial", "pause"]), heartbeat_s=0.1, peer_timeout_s=0.5,
                            disconnect_after=2, outage_s=0.3).start()
    server.send_block(block, images)
    shown = RecordingHeadless(cfg)

    def on_onset(n):
        if n == 1:
            assert server.tell(MsgType.PAUSE, protocol.Pause("operator test")).wait(5)
            time.sleep(0.2)

    p = presenter(cfg, shown, server, tmp_path, markers=RigLine(shown, on_onset))
    result = p.run()
    server.close()
    pid = [s.pid for s in block.presentations]
    assert result.reason == "done"
    assert server.shown_pids("aborted") == [pid[1]] and server.shown_pids("shown") == [pid[0], pid[2], pid[3]]
    holds = [(h["source"], h["held"], h["reason"]) for h in read(p.log.path) if h["event"] == "hold"]
    assert holds == [("server", True, "operator test"),
                     ("server", False, "a new welcome: the pause was the old connection's")]
    assert server.types(incarnation=1).count("features") >= 1   # taken up again on the new connection
