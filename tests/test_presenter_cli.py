"""The presenter as its own process: `xdream present --config`, the Coder script,
Ctrl-C, and Lab Streaming Layer markers received by an inlet in this test.

Every process that may import pylsl gets LSLAPICFG=tests/lsl_api.cfg (this
process: set by test_stimulus_fakes on import), so liblsl stays on this machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from stimulus_client.session_log import read
from tests.test_stimulus_fakes import LSL_CFG, REPO, ScriptedServer, make_block

PY = sys.executable


def env():
    """The child's environment: this checkout's packages first (an editable install may point at
    another checkout), and liblsl kept on this machine."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "LSLAPICFG": str(LSL_CFG), "PYTHONPATH": path}


def wait_for(condition, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def write_config(path, server, log_dir, extra=""):
    path.write_text(f"""
[connection]
server = "{server}"
name = "cli-presenter"
[monitor]
resolution = [320, 240]
width_cm = 32.0
distance_cm = 57.29578
[log]
dir = "{log_dir}"
{extra}
""")
    return path


def presenter_log(log_dir):
    (path,) = list(log_dir.glob("presenter-*.jsonl"))
    return read(path)


def test_headless_session_with_eye_breaks_requeue_and_lsl_markers(tmp_path):
    """What `xdream dry-run` will do with a presenter config: a scripted eye that breaks
    fixation now and then, LSL markers, aborted presentations re-queued until shown."""
    import pylsl  # the [present] extra, which the test command installs: missing is a failure, not a skip
    name = f"xdream-test-{uuid.uuid4().hex[:8]}"
    server = ScriptedServer(requeue=True).start()
    cfg = write_config(tmp_path / "p.toml", server.endpoint, tmp_path, f"""
[markers]
kind = "lsl"
stream_name = "{name}"
[eye]
source = "simulated"
seed = 3
break_probability = 0.4
away_ms = 100.0
[trial]
presentations = 3
fixation_ms = 50.0
""")
    proc = subprocess.Popen([PY, "-m", "xdream.cli", "present", "--config", str(cfg), "--headless"], env=env())
    try:
        wait_for(lambda: "hello" in server.types(), what="the presenter's hello")
        streams = pylsl.resolve_byprop("name", name, timeout=10)
        assert streams, "the presenter's marker stream was not found"
        inlet = pylsl.StreamInlet(streams[0])
        inlet.open_stream(timeout=10)
        blocks = [make_block(0, 12), make_block(1, 12, first_code=30)]
        for block, images in blocks:
            server.send_block(block, images)
        assert server.finished.wait(60), "the session did not finish"
        assert proc.wait(timeout=30) == 0
        codes = []
        while True:
            sample, _ = inlet.pull_sample(timeout=2.0)
            if sample is None:
                break
            codes.append(sample[0])
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()

    original = [s.pid for b, _ in blocks for s in b.presentations]
    aborted = server.shown_pids("aborted")
    assert aborted, "the scripted eye never broke fixation (seed/probability too low for this test)"
    assert all(server.status[p] in ("shown", "aborted") for p in original)     # every one accounted for
    # every aborted image came back and was finally shown
    log = presenter_log(tmp_path)
    shown_images = {r["image_id"] for r in log if r["event"] == "presentation" and r["status"] == "shown"}
    assert shown_images == {s.image_id for b, _ in blocks for s in b.presentations}
    # each presentation's code, in onset order, on the LSL stream: shown ones and the one a break cut
    onsets = sorted((r["onset_frame"], r["code"]) for r in log
                    if r["event"] == "presentation" and r["onset"] is not None)
    assert codes == [code for _, code in onsets]
    start = next(r for r in log if r["event"] == "start")
    assert start["lslapicfg"] == str(LSL_CFG)


def test_ctrl_c_reports_and_says_bye(tmp_path):
    server = ScriptedServer(end_when_done=False).start()
    block, images = make_block(0, 5)
    server.send_block(block, images)
    # Ctrl-C as in a terminal: SIGINT at its default in the child, whatever this process inherited
    # (a shell's background job, e.g. a CI runner's, ignores SIGINT; Python then never raises
    # KeyboardInterrupt, and the presenter, rightly, keeps presenting)
    proc = subprocess.Popen([PY, "-m", "xdream.cli", "present", "--server", server.endpoint, "--headless",
                             "--log-dir", str(tmp_path)], env=env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: len(server.status) == 5, what="the five reports")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 130
        assert server.finished.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    assert server.bye == "interrupted (Ctrl-C)"
    assert set(server.status.values()) == {"shown"}
    close = [r for r in presenter_log(tmp_path) if r["event"] == "close"][0]
    assert close["unacknowledged"] == 0 and close["shown"] == 5


@pytest.mark.window
def test_run_presenter_script_as_psychopys_coder_runs_it(display, tmp_path):
    server = ScriptedServer().start()
    block, images = make_block(0, 4)
    server.send_block(block, images)
    cfg = write_config(tmp_path / "p.toml", server.endpoint, tmp_path,
                       "[fixation_point]\nenabled = true\n[photodiode]\nenabled = true\n")
    try:
        out = subprocess.run([PY, str(REPO / "stimulus_client" / "run_presenter.py"), str(cfg)], env=env(),
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert out.returncode == 0, out.stderr[-2000:]
    assert "presenter finished (done): 4 shown, 0 aborted, 0 reports unacknowledged" in out.stdout
    assert server.shown_pids("shown") == sorted(s.pid for s in block.presentations)
    start = [r for r in presenter_log(tmp_path) if r["event"] == "start"][0]
    assert start["headless"] is False and start["psychopy"]
    assert start["configured_hz"] == 60.0 and "measured_hz" in start   # Xvfb: unpaced, so a warning
    assert "differs from the configured monitor.refresh_hz" in out.stderr
