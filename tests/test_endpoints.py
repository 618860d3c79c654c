"""Endpoints and signals (issue 12, defects 7 and 11): a bad endpoint is one clear
line at once in every role, never a ZMQError traceback or a 60-s retry; SIGTERM
ends a session as Ctrl-C does; a recorder that finds no server says how long
it waited."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import zmq

from tests.conftest import small_config
from xdream import config as config_mod
from xdream import protocol
from xdream.endpoints import bind_socket, check_bind, check_connect
from xdream.errors import ConfigError, SessionError
from xdream.peer import PeerConnection
from xdream.protocol import MsgType
from xdream.stdout_lines import LISTENING, SESSION_FOLDER

CLI = [sys.executable, "-m", "xdream.cli"]


@pytest.mark.parametrize("endpoint, message", [
    ("localhost:5555", "not an endpoint"),
    ("nonsense", "not an endpoint"),
    ("tcp://nonsense", "a TCP endpoint is tcp://HOST:PORT"),
    ("tcp://127.0.0.1:99999", "port '99999' is not a TCP port; allowed: 1..65535"),
    ("tcp://127.0.0.1:0", "allowed: 1..65535"),
    ("tcp://*:5555", "* is for binding"),
    ("udp://127.0.0.1:5555", "unknown transport 'udp'"),
    ("tcp://no-such-host.invalid:5555", "does not resolve"),
])
def test_bad_endpoints_to_connect_to_are_refused_with_the_value(endpoint, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("(", r"\(")):
        check_connect(endpoint)


def test_good_endpoints_pass():
    for ep in ("tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555", "ipc:///tmp/x"):
        assert check_connect(ep) == ep
    for ep in ("tcp://127.0.0.1:0", "tcp://*:5555", "tcp://0.0.0.0:*", "tcp://eth0:5555"):
        assert check_bind(ep) == ep
    with pytest.raises(ConfigError, match="port '65536'"):
        check_bind("tcp://127.0.0.1:65536")   # libzmq would bind some other port


def test_bind_failures_are_one_session_error_line():
    ctx = zmq.Context.instance()
    taken, other = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    try:
        ep = bind_socket(taken, "tcp://127.0.0.1:0")
        assert ep.startswith("tcp://127.0.0.1:") and not ep.endswith(":0")
        with pytest.raises(SessionError, match="the port is in use"):
            bind_socket(other, ep)
        with pytest.raises(SessionError, match="not one of this machine's"):
            bind_socket(other, "tcp://10.255.255.1:5555")
        with pytest.raises(SessionError, match="no such address or network interface"):
            bind_socket(other, "tcp://nonsense:5555")
    finally:
        taken.close(0)
        other.close(0)


@pytest.mark.parametrize("args, message", [
    (["present", "--server", "localhost:5555", "--headless"], "not an endpoint"),
    (["present", "--server", "tcp://nonsense", "--headless"], "tcp://HOST:PORT"),
    (["record", "--server", "tcp://127.0.0.1:99999", "--rig", "openephys"], "port '99999'"),
    (["bridge", "--server", "tcp://127.0.0.1:99999", "--dir", ".", "--channels", "1"], "port '99999'"),
])
def test_peers_refuse_a_bad_server_endpoint_at_once(args, message):
    t0 = time.monotonic()
    result = subprocess.run(CLI + args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "ZMQError" not in result.stderr
    assert time.monotonic() - t0 < 30     # not the 60 s of a welcome that never comes


def _config(tmp_path, **session):
    cfg = small_config(tmp_path, **session)
    cfg.threads[0].generator.kind = "fourier"
    path = tmp_path / "c.json"
    config_mod.save_json(cfg, path)
    return path


def test_sigterm_ends_the_session_like_ctrl_c(tmp_path, zmq_ctx):
    """SIGTERM while a presenter is joined: session_end journaled with the signal, END sent
    to the peer, exit status 143 (128 + SIGTERM)."""
    path = _config(tmp_path, wait_for_peers_s=120.0)
    server = subprocess.Popen(CLI + ["serve", str(path), "--bind", "tcp://127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peer = None
    try:
        lines = iter(server.stdout.readline, "")
        folder = next(line for line in lines if line.startswith(SESSION_FOLDER))[len(SESSION_FOLDER):].strip()
        endpoint = next(line for line in lines if line.startswith(LISTENING))[len(LISTENING):].strip()
        peer = PeerConnection(endpoint, "presenter", "pres", context=zmq_ctx)
        peer.wait_welcome(30)
        server.send_signal(signal.SIGTERM)
        ended = []
        deadline = time.monotonic() + 30
        while not ended and time.monotonic() < deadline:
            ended = [m for m in peer.poll(0.1) if m.type == MsgType.END]
        assert ended and "SIGTERM" in ended[0].body.reason
        assert server.wait(timeout=30) == 128 + signal.SIGTERM
        assert "stopped by SIGTERM" in server.stderr.read()
        records = [json.loads(line) for line in open(os.path.join(folder, "journal.jsonl"))]
        assert records[-1]["kind"] == "session_end" and records[-1]["reason"] == "stopped: SIGTERM"
    finally:
        if peer is not None:
            peer.close()
        if server.poll() is None:
            server.kill()
            server.wait()


def test_record_against_no_server_says_how_long_it_waited(tmp_path):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.ROUTER)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close(0)   # a free port with nobody behind it
    t0 = time.monotonic()
    result = subprocess.run(CLI + ["record", "--server", f"tcp://127.0.0.1:{port}", "--simulate", "default",
                                   "--welcome-timeout", "3"], capture_output=True, text=True, timeout=120)
    waited = time.monotonic() - t0
    assert result.returncode == 2, result.stderr
    assert f"no welcome from the server at tcp://127.0.0.1:{port} within 3 s" in result.stderr
    assert "within 0 s" not in result.stderr and waited < 60


def test_protocol_unchanged_for_peers():
    """The END a stopped server sends is the protocol's End (peers already handle it)."""
    assert protocol.End("stopped: SIGTERM").reason == "stopped: SIGTERM"
