"""CURVE on the wire (xdream/curve.py, `xdream keys`): a server bound beyond loopback refuses to
start without it (unless --insecure); with it, a client without an allowed key gets no welcome,
and peers holding their keys run a whole session (server, recorder and presenter as processes,
on loopback with CURVE forced on)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from tests.conftest import small_config
from tests.dryrun_helpers import journal
from xdream import config as config_mod
from xdream import curve
from xdream.errors import ConfigError, SessionError
from xdream.peer import PeerConnection
from xdream.stdout_lines import LISTENING, SCREEN_TAP

CLI = [sys.executable, "-m", "xdream.cli"]


@pytest.mark.parametrize("endpoint, local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.0.1:0", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/x", True), ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False),
    ("tcp://192.168.1.10:5555", False), ("tcp://eth0:5555", False),
])
def test_loopback_is_told_apart_from_the_network(endpoint, local):
    assert curve.is_loopback(endpoint) is local


def test_a_bind_beyond_loopback_needs_curve_or_insecure():
    with pytest.raises(ConfigError, match="faces the network.*xdream keys.*--insecure"):
        curve.check_bind("tcp://0.0.0.0:0", None, insecure=False)
    curve.check_bind("tcp://0.0.0.0:0", None, insecure=True)
    curve.check_bind("tcp://127.0.0.1:0", None, insecure=False)


def test_serve_on_all_interfaces_without_keys_refuses_before_making_a_session(tmp_path):
    cfg_file = tmp_path / "small.json"
    cfg_file.write_text(json.dumps(config_mod.to_dict(small_config(tmp_path))))
    result = subprocess.run([*CLI, "serve", str(cfg_file), "--out", str(tmp_path / "s"), "--bind",
                             "tcp://0.0.0.0:0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "faces the network" in result.stderr
    assert not (tmp_path / "s").exists()


def test_keys_makes_a_server_pair_allowed_publics_and_client_bundles(tmp_path):
    result = subprocess.run([*CLI, "keys", str(tmp_path / "k"), "--client", "presenter", "--client", "recorder"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    k = tmp_path / "k"
    assert sorted(p.name for p in (k / "allowed").iterdir()) == ["presenter.key", "recorder.key"]
    for name in ("presenter", "recorder"):
        public, secret = zmq.auth.load_certificate(k / "clients" / name / f"{name}.key_secret")
        assert secret and zmq.auth.load_certificate(k / "allowed" / f"{name}.key")[0] == public
        assert (k / "clients" / name / "server.key").read_bytes() == (k / "server" / "server.key").read_bytes()
    assert not list((k / "allowed").glob("*secret*"))   # the server PC never holds a client's secret
    again = subprocess.run([*CLI, "keys", str(k), "--client", "presenter"], capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 2 and "exists already" in again.stderr


@pytest.mark.timeout(600)
def test_with_curve_only_allowed_keys_connect_and_a_session_runs(tmp_path, zmq_ctx):
    keys = tmp_path / "keys"
    made = curve.make_keys(keys, ["presenter", "recorder"])
    stranger = curve.make_keys(tmp_path / "other", ["stranger"])["stranger"]   # a pair the server never saw
    cfg = small_config(tmp_path, generations=2)
    cfg.network.curve_server_secret_key = str(made["server"])
    cfg.network.curve_allowed_clients = str(keys / "allowed")
    cfg_file = tmp_path / "small.json"
    cfg_file.write_text(json.dumps(config_mod.to_dict(cfg.validate())))
    server_public = keys / "server" / "server.key"
    peer_flags = lambda name: ["--curve-key", str(made[name]), "--curve-server-key", str(server_public)]  # noqa: E731

    server = subprocess.Popen([*CLI, "serve", str(cfg_file), "--out", str(tmp_path / "s")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [server]
    try:
        endpoint = next(line[len(LISTENING):].strip() for line in server.stdout if line.startswith(LISTENING))
        for keyring in (None, curve.client_keys(stranger, server_public)):
            conn = PeerConnection(endpoint, "recorder", "intruder", channels=2, context=zmq_ctx, curve=keyring)
            with pytest.raises(SessionError, match="no welcome"):
                conn.wait_welcome(3.0)
            conn.close()
        recorder = subprocess.Popen([*CLI, "record", "--server", endpoint, "--simulate", str(cfg_file),
                                     *peer_flags("recorder")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        procs.append(recorder)
        tap = next(line[len(SCREEN_TAP):].strip() for line in recorder.stdout if line.startswith(SCREEN_TAP))
        presenter = subprocess.Popen([*CLI, "present", "--server", endpoint, "--screen-tap", tap, "--headless",
                                      "--window-size", "128", "128", "--log-dir", str(tmp_path / "p"),
                                      *peer_flags("presenter")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(presenter)
        out, err = server.communicate(timeout=400)
        assert server.returncode == 0, out + err[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    folder = Path(next(line for line in out.splitlines() if line.startswith("done: session folder")).split()[-1])
    records = journal(folder)
    joined = sorted(r["peer"] for r in records if r["kind"] == "peer_joined")
    assert joined == ["presenter", "recorder"]   # the intruders never got as far as a hello
    assert [r["generation"] for r in records if r["kind"] == "scores"] == [0, 1]
    assert not [r for r in records if r["kind"] in ("missing", "rejected")]
