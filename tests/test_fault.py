"""The server killed with SIGKILL at several points and resumed each time, as
real processes: one presenter (headless) and one recorder (simulated rig) stay
up throughout and reconnect on their own.  At the end the journal is whole,
every presentation is accounted for exactly once, and the codes equal those of
an uninterrupted session with the same seed and the same responses.

The kills come from the server itself (XDREAM_FAULT=POINT:N, server/faults.py),
at named points, not from a timer: which point is hit does not depend on
how loaded the machine is.
"""

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from server.journal import read_journal, read_records
from tests.conftest import small_config
from xdream import config as config_mod
from xdream.stdout_lines import LISTENING, SCREEN_TAP, SESSION_FOLDER

CLI = [sys.executable, "-m", "xdream.cli"]
GENERATIONS = 5

# where each server of the faulted session dies; None: it runs to the end
# (N counts arrivals in that server's life; each resumes from the last checkpoint, so the
# kills fall in generations 0, 1, 2, 3 and 4 in turn)
FAULTS = [
    "ack:5",          # gen 0 mid-block: a report journaled, its ACK never sent
    "before_tell:2",  # gen 1: the block complete, its scores neither journaled nor told
    "write:10",       # gen 2 mid-block: a report record torn mid-write
    "checkpoint:2",   # gen 3: scores journaled and told, the checkpoint not yet saved
    "block_sent:2",   # gen 4: a block sent, nothing back yet
    None,
]


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fault-config")
    cfg = small_config(tmp, generations=GENERATIONS)
    cfg.threads[0].generator.kind = "fourier"   # tiny and deterministic: the test is about the server
    cfg.simulator.rf_size_px = 64
    # background spikes follow the rig's clock, which a re-showing moves; the driven ones are
    # keyed on the image and its event code (simulators/rig.py), so the responses are the same
    cfg.simulator.baseline_hz = 0.0
    path = tmp / "fault.json"
    config_mod.save_json(cfg, path)
    return path


def _start(cmd, log: Path, env=None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, bufsize=1,
                            env={**os.environ, **(env or {})})


def _line(proc: subprocess.Popen, prefix: str, log: Path) -> str:
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise AssertionError(f"{proc.args[3:5]} exited ({proc.wait()}) before {prefix!r}:\n{log.read_text()[-3000:]}")


def run_session(config: Path, out: Path, faults: list) -> tuple[Path, list[dict]]:
    """One session whose successive servers die at `faults`; returns the folder and what each server did."""
    out.mkdir()
    procs = []
    servers = []
    try:
        env = {"XDREAM_FAULT": faults[0]} if faults[0] else {}
        server = _start(CLI + ["-v", "serve", str(config), "--out", str(out / "sessions")], out / "server0.log", env)
        procs.append(server)
        folder = Path(_line(server, SESSION_FOLDER, out / "server0.log"))
        endpoint = _line(server, LISTENING, out / "server0.log")
        recorder = _start(CLI + ["-v", "record", "--server", endpoint, "--simulate", str(config)],
                          out / "recorder.log")
        procs.append(recorder)
        tap = _line(recorder, SCREEN_TAP, out / "recorder.log")
        presenter = _start(CLI + ["-v", "present", "--server", endpoint, "--screen-tap", tap, "--headless",
                                  "--window-size", "128", "128", "--log-dir", str(folder)], out / "presenter.log")
        procs.append(presenter)
        for i, fault in enumerate(faults):
            if i:
                log = out / f"server{i}.log"
                server = _start(CLI + ["-v", "serve", "--resume", str(folder)], log,
                                {"XDREAM_FAULT": fault} if fault else {})
                procs.append(server)
                assert _line(server, LISTENING, log) == endpoint   # the same endpoint: peers find it
            server.stdout.read()
            code = server.wait(timeout=300)
            servers.append({"fault": fault, "code": code, "log": (out / f"server{i}.log").read_text()})
            if fault:
                assert code == -signal.SIGKILL, servers[-1]["log"][-3000:]
            else:
                assert code == 0, servers[-1]["log"][-3000:]
        for peer, name in ((recorder, "recorder"), (presenter, "presenter")):
            assert peer.wait(timeout=60) == 0, (out / f"{name}.log").read_text()[-3000:]
        return folder, servers
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def sessions(config_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fault")
    faulted = run_session(config_path, tmp / "faulted", FAULTS)
    plain, _ = run_session(config_path, tmp / "plain", [None])
    return faulted, plain


def test_each_server_died_where_it_was_told_and_was_resumed(sessions):
    (folder, servers), _ = sessions
    for s in servers[:-1]:
        assert f"XDREAM_FAULT: killing the server at {s['fault']}" in s["log"]
    records = read_records(folder)
    resumed = [r for r in records if r["kind"] == "session_resumed"]
    assert len(resumed) == len(FAULTS) - 1
    assert [r["kind"] for r in records].count("session_start") == 1
    ends = [r for r in records if r["kind"] == "session_end"]
    assert len(ends) == 1 and ends[0]["reason"] == "finished" and ends[0] is records[-1]
    # the torn record was cut, and the journal says so
    (recovered,) = [r for r in records if r["kind"] == "journal_recovered"]
    assert recovered["dropped_bytes"] > 0
    assert "torn" in servers[3]["log"]
    assert read_journal(folder).dropped_bytes == 0


def test_every_presentation_accounted_for_exactly_once(sessions):
    (folder, _), _ = sessions
    records = read_records(folder)
    sent = [p["pid"] for r in records if r["kind"] == "block" for p in r["presentations"]]
    assert len(sent) == len(set(sent)) == GENERATIONS * 8   # one thread of 6, 2 references
    shown = Counter(r["pid"] for r in records if r["kind"] == "shown")
    counted = Counter(r["pid"] for r in records if r["kind"] == "counts")
    assert set(shown) == set(sent) and set(shown.values()) == {1}
    assert set(counted) == set(sent) and set(counted.values()) == {1}
    assert all(r["status"] == "shown" for r in records if r["kind"] == "shown")
    lost = [r for r in records if r["kind"] in ("missing", "orphan_shown", "orphan_counts", "abort_scored_nan")]
    assert not lost
    # the presenter never showed a presentation twice, across all the restarts
    (log,) = folder.glob("presenter-*.jsonl")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    on_screen = Counter(e["pid"] for e in events if e["event"] == "presentation")
    assert set(on_screen) == set(sent) and set(on_screen.values()) == {1}


def test_one_score_and_one_checkpoint_per_generation(sessions):
    (folder, _), _ = sessions
    records = read_records(folder)
    assert sorted(r["generation"] for r in records if r["kind"] == "scores") == list(range(GENERATIONS))
    assert sorted(r["generation"] for r in records if r["kind"] == "checkpoint") == list(range(GENERATIONS))
    summary = json.loads((folder / "summary.json").read_text())
    assert [r["generation"] for r in summary] == list(range(GENERATIONS))


def test_codes_and_scores_equal_an_uninterrupted_session(sessions):
    (faulted, _), plain = sessions
    for g in range(GENERATIONS):
        a = np.load(faulted / "codes" / f"gen{g:03d}_a.npz")
        b = np.load(plain / "codes" / f"gen{g:03d}_a.npz")
        assert list(a["ids"]) == list(b["ids"])
        assert np.array_equal(a["codes"], b["codes"]), f"generation {g}"
    scores = [[r["scores"] for r in read_records(f) if r["kind"] == "scores"] for f in (faulted, plain)]
    assert scores[0] == scores[1]
    assert all(s is not None for gen in scores[0] for s in gen)


def test_a_finished_session_is_not_resumed(sessions):
    (folder, _), _ = sessions
    before = (folder / "journal.jsonl").read_bytes()
    result = subprocess.run(CLI + ["serve", "--resume", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "finished; there is nothing to resume" in result.stderr
    assert (folder / "journal.jsonl").read_bytes() == before
