"""Shared fixtures: a small config, and a real X display (Xvfb) for PsychoPy."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import zmq

from xdream import config as config_mod

REPO = Path(__file__).resolve().parents[1]

# liblsl reads its config when first used: keep every test's LSL traffic on this machine
os.environ["LSLAPICFG"] = str(REPO / "tests" / "lsl_api.cfg")


def small_config(tmp_path: Path, **session) -> config_mod.Config:
    """Fast: one thread of 6, two references, 64-px images, short heartbeats."""
    cfg = config_mod.load(None)
    cfg.session.out_dir = str(tmp_path / "sessions")
    cfg.session.generations = 2
    cfg.session.block_timeout_s = 20.0
    cfg.session.wait_for_peers_s = 20.0
    for k, v in session.items():
        setattr(cfg.session, k, v)
    cfg.threads = cfg.threads[:1]
    cfg.threads[0].optimizer.population = 6
    # random-weight DeePSiM fc6, as before the default became dcgan-face: the rise thresholds of
    # the tests on this config were measured with it on three kernel paths (one thread of 6
    # rises less in the 100-d face space: t 2.0 where 3 is asked); the default itself is run
    # by the tests on the embedded config (tests/dryrun_helpers.py embedded_config)
    cfg.threads[0].generator.kind = "deepsim-fc6"
    cfg.reference.count = 2
    cfg.presentation.image_size_px = 64
    cfg.presentation.window_size = [128, 128]
    cfg.network.heartbeat_s = 0.2
    cfg.network.peer_timeout_s = 5.0
    return cfg.validate()


@pytest.fixture
def zmq_ctx():
    """A zmq context that is destroyed with linger 0 whatever the test did: a context left
    to the garbage collector, with a socket still holding unsent messages, blocks forever
    in `term()` inside a later, unrelated test."""
    ctx = zmq.Context()
    ctx.linger = 0
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@pytest.fixture(scope="session")
def display(tmp_path_factory):
    """A real X server for PsychoPy windows: Xvfb, started here unless DISPLAY is set.

    Also gives PsychoPy the writable HOME and PSYCHOPYNOPACKAGES it needs."""
    home = tmp_path_factory.mktemp("psychopy-home")
    env = {"HOME": str(home), "PSYCHOPYNOPACKAGES": "1"}
    proc = None
    if not os.environ.get("DISPLAY"):
        xvfb = shutil.which("Xvfb")
        if xvfb is None:
            pytest.fail("Xvfb is not installed: run .ci/run or `apt-get install -y xvfb xauth`")
        for number in range(90, 120):
            if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
                break
        proc = subprocess.Popen([xvfb, f":{number}", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Xvfb :{number} did not start")
            time.sleep(0.05)
        env["DISPLAY"] = f":{number}"
    else:
        env["DISPLAY"] = os.environ["DISPLAY"]
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=10)
