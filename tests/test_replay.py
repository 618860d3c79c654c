"""`xdream replay`: a recorded session re-derived, and tampered copies caught."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from server.machine import describe, machine_info
from server.replay import replay
from tests.conftest import small_config
from tests.dryrun_helpers import dry_run, journal
from xdream import config as config_mod

EYE_PRESENTER = """
[monitor]
resolution = [128, 128]
refresh_hz = 60.0
[markers]
kind = "none"
[eye]
source = "simulated"
seed = 1
break_probability = 0.3
away_ms = 200.0
[trial]
presentations = 4
fixation_window_deg = 2.0
fixation_ms = 100.0
inter_trial_ms = 0.0
"""


def make_session(tmp: Path, generations: int = 3) -> Path:
    """A small dry run whose simulated eye breaks fixation: aborts, re-queues, NaN by policy."""
    cfg = small_config(tmp, generations=generations, max_requeues=1)
    config_mod.save_json(cfg, tmp / "small.json")
    (tmp / "eye.toml").write_text(EYE_PRESENTER)
    _, folder = dry_run([str(tmp / "small.json"), "--presenter-config", str(tmp / "eye.toml")], tmp / "sessions")
    return folder


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return make_session(tmp_path_factory.mktemp("replay"))


@pytest.fixture
def copy(session, tmp_path):
    target = tmp_path / session.name
    shutil.copytree(session, target)
    return target


def write(folder, recs, renumber=False):
    if renumber:
        for i, r in enumerate(recs):
            r["seq"] = i
    (folder / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def generated_shown_counts(recs, generation):
    """Index of a counts record of a generated image of `generation` shown once."""
    block_gen = {}
    kinds = {}
    for r in recs:
        if r["kind"] == "block":
            for p in r["presentations"]:
                block_gen[p["pid"]] = r["generation"]
                kinds[p["pid"]] = (p["kind"], p["image_id"])
    for i, r in enumerate(recs):
        if r["kind"] == "counts" and block_gen[r["pid"]] == generation and kinds[r["pid"]][0] == "generated":
            return i
    raise AssertionError("no counted generated presentation")


def test_the_session_has_aborts_and_requeues(session):
    recs = journal(session)
    assert any(r["kind"] == "shown" and r["status"] == "aborted" for r in recs)
    assert any(p["requeue_of"] for r in recs if r["kind"] == "block" for p in r["presentations"])


def test_untouched_session_is_reproduced(session):
    result = replay(session)
    assert result.ok, result.lines()
    assert result.generations_checked == 3 and result.threads == ["a"]


def test_edited_score_names_its_generation(copy):
    recs = journal(copy)
    i = [j for j, r in enumerate(recs) if r["kind"] == "scores" and r["generation"] == 1][0]
    recs[i]["scores"][2] = (recs[i]["scores"][2] or 0) + 1.0
    write(copy, recs)
    result = replay(copy)
    assert not result.ok and result.mismatch.generation == 1 and result.mismatch.thread == "a"
    assert recs[i]["ids"][2] in result.mismatch.what and result.generations_checked == 1


def test_edited_count_names_its_generation(copy):
    recs = journal(copy)
    i = generated_shown_counts(recs, 2)
    recs[i]["counts"][0] += 3.0
    write(copy, recs)
    result = replay(copy)
    assert not result.ok and result.mismatch.generation == 2 and result.generations_checked == 2


def test_deleted_count_renumbered_is_caught_by_the_scores(copy):
    recs = journal(copy)
    i = generated_shown_counts(recs, 1)
    del recs[i]
    write(copy, recs, renumber=True)
    result = replay(copy)
    assert not result.ok and result.mismatch.generation == 1
    assert "NaN" in result.mismatch.what   # the image has no measured repeat left


def test_deleted_record_is_caught_by_the_journal_reader(copy):
    recs = journal(copy)
    del recs[len(recs) // 2]
    write(copy, recs)
    result = replay(copy)
    assert not result.ok and result.problems and "seq" in result.problems[0]


def test_edited_codes_file_names_its_generation(copy):
    path = copy / "codes" / "gen002_a.npz"
    with np.load(path) as npz:
        ids, codes = npz["ids"], npz["codes"].copy()
    codes[3, 100] = np.nextafter(codes[3, 100], np.inf)   # one bit
    np.savez(path, ids=ids, codes=codes)
    result = replay(copy)
    assert not result.ok and result.mismatch.generation == 2 and result.mismatch.thread == "a"
    assert "1 of 6 codes differ" in result.mismatch.what and "row 3" in result.mismatch.what


def test_edited_event_code_is_caught_by_the_rebuilt_block(copy):
    recs = journal(copy)
    i = [j for j, r in enumerate(recs) if r["kind"] == "block" and r["generation"] == 1][0]
    recs[i]["presentations"][0]["code"] += 100
    write(copy, recs)
    result = replay(copy)
    assert not result.ok and result.mismatch.generation == 1 and "block" in result.mismatch.what


def test_a_session_stopped_before_its_last_scores_is_reproduced_so_far(copy):
    recs = journal(copy)
    last = [j for j, r in enumerate(recs) if r["kind"] == "scores"][-1]
    write(copy, recs[:last])
    result = replay(copy)
    assert result.ok, result.lines()
    assert result.generations_checked == 2
    assert any("never scored" in n for n in result.notes) and any("session_end" in n for n in result.notes)


def test_cli_exit_codes(session, copy):
    ok = subprocess.run([sys.executable, "-m", "xdream.cli", "replay", str(session)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "reproduced: 3 generations" in ok.stdout, ok.stdout + ok.stderr
    recs = journal(copy)
    i = [j for j, r in enumerate(recs) if r["kind"] == "scores" and r["generation"] == 0][0]
    recs[i]["scores"][0] = 1234.0
    write(copy, recs)
    bad = subprocess.run([sys.executable, "-m", "xdream.cli", "replay", str(copy)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "MISMATCH at generation 0, thread a" in bad.stdout, bad.stdout + bad.stderr


def test_a_session_killed_and_resumed_is_reproduced(tmp_path):
    """A server SIGKILLed mid-block and resumed (`xdream serve --resume`): the replay, which
    re-derives everything from generation 0, gets the codes the resumed server wrote."""
    from tests.test_fault import run_session

    cfg = small_config(tmp_path, generations=3)
    cfg.threads[0].generator.kind = "fourier"
    cfg.simulator.rf_size_px = 64
    config_mod.save_json(cfg, tmp_path / "fault.json")
    folder, servers = run_session(tmp_path / "fault.json", tmp_path / "run", ["block_sent:2", None])
    assert any(r["kind"] == "session_resumed" for r in journal(folder))
    result = replay(folder)
    assert result.ok, result.lines()
    assert result.generations_checked == 3


# ------------------------------------------------------------------ --realtime
def start(cmd, prefix=None):
    proc = subprocess.Popen([sys.executable, "-m", "xdream.cli", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    if prefix is None:
        return proc, None
    for line in proc.stdout:
        if line.startswith(prefix):
            return proc, line[len(prefix):].strip()
    proc.wait(timeout=30)
    raise AssertionError(f"{cmd[0]} exited before saying {prefix!r}: {proc.stderr.read()}")


def realtime(session, tmp, presenter_args=(), rig_session=None, recorder=True, rig_args=()):
    """`xdream replay --realtime` with a headless presenter and, if asked, a recorder whose rig
    replays `rig_session`'s journal; returns (exit status, stdout, comparison.json)."""
    out = tmp / "replay-out"
    cmd = ["replay", str(session), "--realtime", "--out", str(out), "--speed", "4"]
    server, endpoint = start(cmd + ([] if recorder else ["--no-recorder"]), "server listening on ")
    procs = [server]
    try:
        present = ["present", "--server", endpoint, "--headless", "--window-size", "128", "128",
                   "--log-dir", str(tmp), *presenter_args]
        if recorder:
            rec, tap = start(["record", "--server", endpoint, "--replay", str(rig_session or session),
                              *rig_args], "screen tap on ")
            procs.append(rec)
            present += ["--screen-tap", tap]
        procs.append(start(present)[0])
        stdout, stderr = server.communicate(timeout=120)
        for p in procs[1:]:
            assert p.wait(timeout=30) == 0, p.stderr.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return server.returncode, stdout + stderr, json.loads((out / "comparison.json").read_text())


@pytest.mark.parametrize("rig", [None, "openephys"])
def test_realtime_replay_reproduces_reports_and_counts(session, tmp_path, rig):
    """The same presenter (its simulated eye breaks fixation at the same frames) and a recorder
    fed by the replay rig, in-process or through Open Ephys's wire format to the real adapter:
    every status and every count as recorded."""
    (tmp_path / "eye.toml").write_text(EYE_PRESENTER)
    code, out, comparison = realtime(session, tmp_path, ["--config", str(tmp_path / "eye.toml")],
                                     rig_args=["--rig", rig] if rig else [])
    assert code == 0 and "same as recorded" in out, out
    n = len([p for r in journal(session) if r["kind"] == "block" for p in r["presentations"]])
    assert comparison["ok"] and comparison["sent"] == comparison["presentations"] == n
    assert comparison["same_status"] == n and comparison["counts_equal"] == comparison["counts_compared"] > n // 2


def test_realtime_replay_catches_a_recorder_that_counts_wrong(session, copy, tmp_path):
    """The rig replays a copy with one count changed: the recorder reports it, the replay names it."""
    recs = journal(copy)
    i = generated_shown_counts(recs, 1)
    recs[i]["counts"][1] += 2.0
    write(copy, recs)
    (tmp_path / "eye.toml").write_text(EYE_PRESENTER)
    code, out, comparison = realtime(session, tmp_path, ["--config", str(tmp_path / "eye.toml")], rig_session=copy)
    assert code == 1 and "DIFFERS" in out, out
    assert [d["pid"] for d in comparison["differences"]] == [recs[i]["pid"]]
    assert comparison["counts_equal"] == comparison["counts_compared"] - 1


def test_realtime_replay_tests_a_presenter_alone(session, tmp_path):
    """A presenter without the simulated eye shows what was aborted in the recording: named."""
    code, out, comparison = realtime(session, tmp_path, recorder=False)
    aborted = {r["pid"] for r in journal(session) if r["kind"] == "shown" and r["status"] == "aborted"}
    assert code == 1 and aborted
    assert {d["pid"] for d in comparison["differences"]} == aborted
    assert all("status shown, recorded aborted" == d["what"] for d in comparison["differences"])


def test_the_session_names_the_machine_that_made_it(session):
    machine = journal(session)[0]["machine"]
    assert machine == machine_info()
    assert machine["arch"] and machine["torch"] and machine["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512")


def test_another_machine_is_named_only_when_the_replay_differs(copy):
    """A session that reproduces says nothing of machines; one that differs, replayed where the
    recorded machine is not this one, names both (bit for bit holds only on the recording path)."""
    recs = journal(copy)
    recs[0]["machine"] = {**recs[0]["machine"], "cpu": "Old Rig CPU 3000", "cpu_capability": "AVX512",
                          "env": {"ATEN_CPU_CAPABILITY": "avx512"}}
    write(copy, recs)
    assert replay(copy).ok
    i = [j for j, r in enumerate(recs) if r["kind"] == "scores" and r["generation"] == 1][0]
    recs[i]["scores"][0] = (recs[i]["scores"][0] or 0) + 1.0
    write(copy, recs)
    what = replay(copy).mismatch.what
    assert "recorded on x86_64, Old Rig CPU 3000" in what and "AVX512, ATEN_CPU_CAPABILITY=avx512" in what
    assert f"replayed on {describe(machine_info())}:" in what
    assert "bit-for-bit holds only on the machine and kernel path that made the session" in what


def test_a_mismatch_on_the_recording_machine_names_no_machine(copy):
    recs = journal(copy)
    i = [j for j, r in enumerate(recs) if r["kind"] == "scores" and r["generation"] == 0][0]
    recs[i]["scores"][0] = (recs[i]["scores"][0] or 0) + 1.0
    write(copy, recs)
    assert "recorded on" not in replay(copy).mismatch.what


def test_the_replay_rig_fires_the_recorded_counts_as_sample_ticks_on_the_window_edges(session, zmq_ctx):
    """Issue 13: the replay rig handed on float seconds (the counter rounded them to 1 us), its
    spikes kept inside the windows.  Now its times are sample numbers of its 30 kHz clock, as a real
    rig's, and its spikes sit on the windows' edge ticks, first and last, so a counter that moves an
    edge by one tick miscounts.  Onsets at 0.9 s and 2.1 s (frames 54 and 126 at 60 Hz), where float
    seconds put an edge spike on the wrong side (tests/test_counting_edges.py), then every 0.45 s:
    the real SpikeCounter reports every recorded count and baseline exactly."""
    from fractions import Fraction

    import zmq

    from recording_adapters.counting import SpikeCounter
    from simulators.replay_rig import ReplayRig
    from xdream import protocol
    from xdream.protocol import MsgType
    from xdream.session_reader import load_session

    recorded = load_session(session)
    cfg = recorded.cfg
    rig = ReplayRig(session, context=zmq_ctx)
    push = zmq_ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(rig.endpoint)
    try:
        shown = recorded.presentations
        frames = [54, 126] + [126 + 27 * k for k in range(1, len(shown) - 1)]
        image = np.full((4, 4, 3), 128, np.uint8)
        for i, p in zip(frames, shown):
            body = protocol.ScreenFrame(p.code, i, 1 / 60, 0.0, 4, 4)
            push.send_multipart(protocol.encode(MsgType.SCREEN_FRAME, body, images=[image]))
        push.send_multipart(protocol.encode(MsgType.SCREEN_FRAME,
                                            protocol.ScreenFrame(0, frames[-1] + 30, 1 / 60, 0.0, 0, 0)))
        counter = SpikeCounter(rig.channels, [ms / 1000 for ms in cfg.response.window_ms],
                               [ms / 1000 for ms in cfg.response.baseline_ms], timeout_s=60.0)
        for block in dict.fromkeys(p.block_id for p in shown):
            counter.expect(block, [(p.pid, p.code) for p in shown if p.block_id == block])
        got, events = {}, []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(got) < len(shown):
            ev = rig.poll(0.05)
            events.append(ev)
            for c in counter.add(ev):
                got[c.pid] = c
    finally:
        push.close()
        rig.close()
    assert all(ev.rate == Fraction(30000) for ev in events), "the replay rig's times are not sample numbers"
    codes = [t for ev in events for t, _ in ev.codes]
    assert codes[:2] == [27000, 63000] and all(isinstance(t, int) for t in codes)
    ticks = np.concatenate([np.asarray(ev.spike_times) for ev in events])
    chans = np.concatenate([np.asarray(ev.spike_channels) for ev in events])
    assert ticks.dtype.kind == "i"
    fired = set(zip(ticks.tolist(), chans.tolist()))
    a, b = 1500, 6000         # the response window 50-200 ms in ticks of 30 kHz
    edged = 0
    for i, p in zip(frames, shown):       # frame i at 60 Hz: onset tick i * 500
        for ch, k in enumerate((p.counts or {}).get("counts") or []):
            if p.counts["status"] == "ok" and round(k) >= 2:
                assert {(i * 500 + a, ch), (i * 500 + b - 1, ch)} <= fired, (p.pid, ch)
                edged += 1
    assert edged > 10, "too few presentations with spikes on both edges to mean anything"
    compared = 0
    for p in shown:
        if p.counts and p.counts["status"] == "ok":
            assert got[p.pid].status == "ok", p.pid
            assert [int(x) for x in got[p.pid].counts] == [int(round(x)) for x in p.counts["counts"]], p.pid
            assert [int(x) for x in got[p.pid].baseline] == \
                [int(round(x)) for x in p.counts.get("baseline") or []], p.pid
            compared += 1
    assert compared > len(shown) // 2
