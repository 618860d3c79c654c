"""record_raw: the Open Ephys GUI's own recording of the session, over the GUI's HTTP
remote-control API, against the simulated GUI (simulators/openephys_peer.py,
SimulatedGuiHttp, written from plugin-GUI's OpenEphysHttpServer.h and ControlPanel.cpp)
on 127.0.0.1."""

import json
import logging
import re
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recording_adapters.events import RigEvents
from recording_adapters.openephys import OpenEphysSource
from recording_adapters.openephys_control import prepend_text
from recording_adapters.sources import build_source
from simulators.wire_peers import start_peer
from xdream.errors import ConfigError, SessionError

DATE = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d"      # the GUI's automatic base text as a recording starts


@pytest.fixture
def peer():
    p = start_peer("openephys", 4, http=True)
    yield p
    p.close()


def source(peer, **options) -> OpenEphysSource:
    return build_source("openephys", {**peer.adapter_options(), "heartbeat": "false",
                                      **{k: str(v) for k, v in options.items()}})


def puts(gui) -> list[tuple[str, dict]]:
    return [(path, json.loads(body)) for method, path, body in gui.requests if method == "PUT"]


@pytest.mark.parametrize("found", ["IDLE", "ACQUIRE"])
def test_record_raw_starts_a_recording_named_after_the_session_and_stops_only_it(peer, tmp_path, caplog, found):
    caplog.set_level(logging.INFO)
    gui = peer.gui
    gui.click(found)
    src = source(peer, record_raw="true", record_dir=tmp_path)
    try:
        assert gui.mode == found and gui.recordings == []     # nothing before the session id is known
        src.session_started("20250601-100000 #7.b")
        assert gui.mode == "RECORD"
        assert len(gui.recordings) == 1
        assert re.fullmatch(re.escape(f"{tmp_path}/xdream-20250601-100000__7_b_") + DATE, gui.recordings[0])
        peer.send(RigEvents([(0.1, 9)], [], [], 1.0, []))   # the stream still flows through the adapter
        codes = []
        for _ in range(100):
            codes += src.poll(0.05).codes
            if codes:
                break
        assert [c for _, c in codes] == [9]
    finally:
        src.close()
    assert gui.mode == found                                  # back as found: the session's recording only
    assert gui.fields[0].value == "" and gui.fields[0].state == "NONE"   # the prepend text put back
    assert puts(gui)[0] == ("/api/recording", {"prepend_text": "xdream-20250601-100000__7_b_",
                                               "start_new_directory": "true", "parent_directory": str(tmp_path)})
    assert [body for path, body in puts(gui) if path == "/api/status"] == [{"mode": "RECORD"}, {"mode": found}]
    assert (f"found the GUI in mode {found}, left it in mode {found} (this session started a recording and "
            "stopped it)") in caplog.text


def test_a_recording_the_lab_started_is_left_alone(peer, caplog):
    caplog.set_level(logging.INFO)
    gui = peer.gui
    gui.click("RECORD")
    labs = list(gui.recordings)
    src = source(peer, record_raw="true")
    try:
        src.session_started("s1")
    finally:
        src.close()
    assert gui.mode == "RECORD" and gui.recordings == labs and len(labs) == 1
    assert puts(gui) == []                                    # not a single change asked of the GUI
    assert "the GUI is already recording" in caplog.text and "will not stop the lab's" in caplog.text
    assert "found the GUI in mode RECORD, left it in mode RECORD (this session started nothing)" in caplog.text


def test_a_recording_the_lab_stopped_midway_is_not_touched_again(peer, caplog):
    gui = peer.gui
    src = source(peer, record_raw="true")
    try:
        src.session_started("s1")
        gui.click("ACQUIRE")                                  # someone pressed record off in the GUI
    finally:
        src.close()
    assert gui.mode == "ACQUIRE"                              # not sent to IDLE, as found
    assert [body for path, body in puts(gui) if path == "/api/status"] == [{"mode": "RECORD"}]
    assert "the GUI's recording was stopped before the session ended (mode ACQUIRE)" in caplog.text


def test_record_raw_off_sends_nothing_to_the_http_port(peer):
    src = source(peer)                                        # record_raw false: the default
    try:
        src.session_started("s1")
        src.poll(0.01)
    finally:
        src.close()
    assert peer.gui.connections == 0 and peer.gui.requests == [] and peer.gui.mode == "IDLE"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_gui_is_a_clear_error_naming_the_url():
    port = free_port()
    with pytest.raises(SessionError, match=rf"no answer from the GUI's HTTP server at "
                                           rf"http://127\.0\.0\.1:{port}/api/status .*Enable HTTP Server"):
        OpenEphysSource(record_raw=True, http_port=port, port=free_port(), http_timeout_s=2.0)


class Garbage(BaseHTTPRequestHandler):
    reply: tuple[int, bytes] = (200, b"")

    def do_GET(self):
        status, data = self.reply
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, data, said", [
    (500, b"boom", r"answered HTTP 500 to GET http://127\.0\.0\.1:\d+/api/status: 'boom'"),
    (200, b"<html>", r"reply to GET http://127\.0\.0\.1:\d+/api/status is not JSON"),
    (200, b"[1, 2]", r"is not a JSON object"),
    (200, b'{"mode": 5}', r"from http://127\.0\.0\.1:\d+/api/status has mode 5, not one of IDLE"),
    (200, b'{"mode": "' + b"x" * (1 << 20) + b'"}', r"is over 1048576 bytes"),
])
def test_a_gui_reply_that_is_not_the_apis_is_a_clear_error(status, data, said):
    handler = type("H", (Garbage,), {"reply": (status, data)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        with pytest.raises(SessionError, match=said):
            OpenEphysSource(record_raw=True, http_port=server.server_address[1], port=free_port())
    finally:
        server.shutdown()
        server.server_close()


def test_a_record_dir_the_gui_refuses_stops_the_start_and_puts_the_name_back(peer, tmp_path):
    gui = peer.gui
    src = source(peer, record_raw="true", record_dir=tmp_path / "not-there")
    try:
        with pytest.raises(SessionError, match="did not take record_dir .*must exist on the PC running the GUI"):
            src.session_started("s1")
    finally:
        src.close()
    assert gui.recordings == [] and gui.mode == "IDLE" and gui.fields[0].state == "NONE"


def test_no_record_node_in_the_gui_is_an_error_before_recording(peer):
    peer.gui.record_nodes = []
    src = source(peer, record_raw="true")
    try:
        with pytest.raises(SessionError, match="no Record Node"):
            src.session_started("s1")
    finally:
        src.close()
    assert [path for path, _ in puts(peer.gui)] == ["/api/recording", "/api/recording"]   # named, then put back


def test_the_session_id_becomes_a_name_the_gui_accepts():
    """FilenameFieldComponent::validate silently refuses a '.' or a path separator."""
    assert prepend_text("2025/06.01 a\\b") == "xdream-2025_06_01_a_b_"
    assert prepend_text("") == "xdream-session_"
    assert len(prepend_text("x" * 500)) == len("xdream-_") + 80


def test_record_dir_without_record_raw_is_refused():
    with pytest.raises(ConfigError, match="option record_dir"):
        OpenEphysSource(record_dir="D:/data")


def test_the_recorder_starts_the_guis_recording_with_the_session_id(peer):
    """recording_adapters/recorder.py calls session_started once welcomed, and closes the source at
    the end: the GUI records exactly the session."""
    from recording_adapters.recorder import Recorder
    from xdream import protocol

    class Conn:        # the PeerConnection surface the Recorder uses, already welcomed and ended
        session, ended = "20250601-100000", True

        def wait_welcome(self, timeout_s):
            return protocol.Welcome("recorder-1", 1.0, 5.0, {"window_ms": [50, 200], "baseline_ms": [0, 50]})

        def take_up(self, features):
            pass

        def close(self):
            pass

    Recorder(Conn(), source(peer, record_raw="true")).run(1.0)
    assert len(peer.gui.recordings) == 1 and "/xdream-20250601-100000_" in peer.gui.recordings[0]
    assert peer.gui.mode == "IDLE"


def http(gui, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
    req = urllib.request.Request(f"http://127.0.0.1:{gui.port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_simulated_gui_answers_as_open_ephys_http_server_does(peer, tmp_path):
    """The peer's endpoints as plugin-GUI's OpenEphysHttpServer.h and ControlPanel.cpp have them."""
    gui = peer.gui
    assert http(gui, "GET", "/api/status") == (200, {"mode": "IDLE"})
    assert http(gui, "PUT", "/api/status", b"{not json")[0] == 400
    assert http(gui, "PUT", "/api/status", b'{"other": 1}')[0] == 400     # "mode" is required, as a string
    assert http(gui, "PUT", "/api/status", b'{"mode": "PLAY"}') == (200, {"mode": "IDLE"})   # ignored
    # a text with a period is refused silently; a boolean start_new_directory is "not specified"
    status, rec = http(gui, "PUT", "/api/recording", b'{"prepend_text": "a.b", "start_new_directory": true}')
    assert status == 200 and rec["prepend_text"] == "" and rec["base_text"] == "YYYY-MM-DD_HH-MM-SS"
    _, rec = http(gui, "PUT", "/api/recording", json.dumps({"prepend_text": "m1_", "parent_directory":
                                                            str(tmp_path)}).encode())
    assert rec["prepend_text"] == "m1_" and rec["parent_directory"] == str(tmp_path)
    assert [n["node_id"] for n in rec["record_nodes"]] == [101]
    assert http(gui, "PUT", "/api/status", b'{"mode": "RECORD"}') == (200, {"mode": "RECORD"})   # acquires too
    assert http(gui, "PUT", "/api/recording", b'{"parent_directory": "/"}')[1]["parent_directory"] == str(tmp_path)
    assert http(gui, "PUT", "/api/status", b'{"mode": "ACQUIRE"}') == (200, {"mode": "ACQUIRE"})
    assert http(gui, "PUT", "/api/status", b'{"mode": "RECORD"}')[1] == {"mode": "RECORD"}
    assert http(gui, "PUT", "/api/status", b'{"mode": "IDLE"}')[1] == {"mode": "IDLE"}
    assert http(gui, "GET", "/api/nothing")[0] == 404
    # the second recording, with no new name asked for, went on in the first one's folder
    assert len(gui.recordings) == 1 and re.fullmatch(re.escape(f"{tmp_path}/m1_") + DATE, gui.recordings[0])
    assert gui.recording_number == 2
