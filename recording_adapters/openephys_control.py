"""What the Open Ephys adapter asks of the GUI over its HTTP remote-control API
(optional, `record_raw`): the GUI's own recording of the session.

The rule (as for Intan RHX, recording_adapters/intan_control.py): never stop or
restart what was running before the session.
- GUI found IDLE or ACQUIRE: once the session id is known, name the recording
  after it (`PUT /api/recording` with `prepend_text`, and `parent_directory`
  with `record_dir`), then `PUT /api/status {"mode": "RECORD"}`; on close, back
  to the mode found (ACQUIRE, or IDLE: the GUI's RECORD also started
  acquisition), and the name fields as they were.
- GUI found RECORD (the lab's own recording): left alone, now and on close;
  the log names where it records.
The mode found and the mode left are logged.

Upstream (open-ephys/plugin-GUI, v1.0.1), Source/Utils/OpenEphysHttpServer.h:
the server listens on port 37497 (`PORT`); GET/PUT /api/status reply
`{"mode": "IDLE"|"ACQUIRE"|"RECORD"}` (`status_to_json`); GET/PUT
/api/recording reply `{"parent_directory", "base_text", "prepend_text",
"append_text", "default_record_engine", "record_nodes": [...]}`
(`recording_info_to_json`); a PUT takes only the fields it finds, as JSON
strings (`start_new_directory` is the string "true", not a boolean) and
silently ignores the others.  What the GUI does with them: Source/UI/ControlPanel.cpp
(`setRecordingParentDirectory`: refused while recording, and only for a folder
that exists, CoreServices::setRecordingParentDirectory;
`setRecordingDirectoryPrependText`: a text with a '.' or a path separator is
silently refused, FilenameFieldComponent::validate; `buttonClicked` for the
record button: no recording without a Record Node; RECORD while IDLE starts
acquisition too, `startAcquisition(true)`).  Since the GUI refuses silently,
the adapter reads every reply back and says what did not take.

Everything the GUI answers is untrusted: replies are bounded, parsed, and
checked field by field; an error names the URL.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from typing import Any

from xdream.errors import SessionError

log = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 37497           # OpenEphysHttpServer.h: #define PORT 37497 ("EPHYS" on a keypad)
MODES = ("IDLE", "ACQUIRE", "RECORD")
MAX_REPLY_BYTES = 1 << 20           # the GUI's replies are a few hundred bytes; a megabyte is not one
_SAFE = re.compile(r"[^A-Za-z0-9_-]")   # FilenameFieldComponent::validate refuses '.', '/', '\\'


def prepend_text(session_id: str) -> str:
    """The GUI's prepend text for a session: "xdream-<id>_", kept to letters, digits, '_' and '-'
    (the GUI silently refuses a '.' or a path separator); the GUI's base text (by default the
    date and time) follows it in the recording folder's name."""
    return "xdream-" + (_SAFE.sub("_", session_id)[:80] or "session") + "_"


def _same_folder(a: str, b: str) -> bool:
    """The GUI answers a folder as JUCE's File::getFullPathName: separators may differ from what was
    sent, and a trailing one is dropped."""
    def norm(p: str) -> str:
        return p.replace("\\", "/").rstrip("/") or "/"
    return norm(a) == norm(b)


class GuiHttp:
    """A JSON client for the GUI's remote-control API, one request per call."""

    def __init__(self, host: str, port: int, timeout_s: float):
        netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self.base = f"http://{netloc}:{port}"
        self.timeout_s = timeout_s

    def get(self, path: str) -> dict[str, Any]:
        return self._ask("GET", path, None)

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._ask("PUT", path, body)

    def _ask(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        url = self.base + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        where = f"{method} {url}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read(MAX_REPLY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip()
            raise SessionError(f"openephys: the GUI answered HTTP {exc.code} to {where}"
                               + (f": {detail[:200]!r}" if detail else "")) from None
        except (urllib.error.URLError, OSError) as exc:   # refused, unreachable, timed out
            reason = getattr(exc, "reason", exc)
            raise SessionError(f"openephys: no answer from the GUI's HTTP server at {url} ({reason}): is the "
                               "GUI running there, with File > Enable HTTP Server ticked, and is http_port "
                               f"its port (the GUI's is {DEFAULT_HTTP_PORT})?") from None
        if len(raw) > MAX_REPLY_BYTES:
            raise SessionError(f"openephys: the GUI's reply to {where} is over {MAX_REPLY_BYTES} bytes")
        try:
            reply = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            raise SessionError(f"openephys: the GUI's reply to {where} is not JSON: {raw[:120]!r}") from None
        if not isinstance(reply, dict):
            raise SessionError(f"openephys: the GUI's reply to {where} is not a JSON object: {raw[:120]!r}")
        return reply

    def mode(self, reply: dict[str, Any], path: str = "/api/status") -> str:
        mode = reply.get("mode")
        if mode not in MODES:
            raise SessionError(f"openephys: the GUI's reply from {self.base}{path} has mode {mode!r}, "
                               f"not one of {', '.join(MODES)}")
        return str(mode)

    def text(self, reply: dict[str, Any], key: str, path: str = "/api/recording") -> str:
        value = reply.get(key)
        if not isinstance(value, str):
            raise SessionError(f"openephys: the GUI's reply from {self.base}{path} has {key} {value!r}, "
                               "not a text")
        return value


class GuiRecording:
    """record_raw: the GUI records the session, named after it; only what it started is stopped."""

    def __init__(self, http: GuiHttp, record_dir: str):
        self.http = http
        self.record_dir = record_dir
        self.found: str | None = None         # the GUI's mode when the session started
        self.started = False                  # this session started the GUI's recording
        self._restore: dict[str, str] = {}    # name fields as they were, to put back on close

    def status(self) -> str:
        return self.http.mode(self.http.get("/api/status"))

    def _folder(self, rec: dict[str, Any]) -> str:
        return (f"{self.http.text(rec, 'parent_directory')}/{self.http.text(rec, 'prepend_text')}"
                f"{self.http.text(rec, 'base_text')}{self.http.text(rec, 'append_text')}")

    def start(self, session_id: str) -> None:
        self.found = self.status()
        log.info("openephys: found the GUI in mode %s (%s)", self.found, self.http.base)
        if self.found == "RECORD":
            where = self._folder(self.http.get("/api/recording"))
            log.warning("openephys: the GUI is already recording (to %s*, as the lab set it): record_raw starts "
                        "no recording of its own, and this session will not stop the lab's", where)
            return
        before = self.http.get("/api/recording")
        text = prepend_text(session_id)
        body: dict[str, Any] = {"prepend_text": text, "start_new_directory": "true"}   # a string, as upstream reads it
        self._restore = {"prepend_text": self.http.text(before, "prepend_text")}
        if self.record_dir:
            body["parent_directory"] = self.record_dir
            self._restore["parent_directory"] = self.http.text(before, "parent_directory")
        rec = self.http.put("/api/recording", body)
        parent, got = self.http.text(rec, "parent_directory"), self.http.text(rec, "prepend_text")
        if got != text:
            raise SessionError(f"openephys: record_raw: the GUI's prepend text reads back as {got!r}, not {text!r} "
                               f"({self.http.base}/api/recording)")
        if self.record_dir and not _same_folder(parent, self.record_dir):
            raise SessionError(f"openephys: record_raw: the GUI did not take record_dir {self.record_dir!r} (it "
                               f"records to {parent!r}): the folder must exist on the PC running the GUI")
        nodes = rec.get("record_nodes")
        if not isinstance(nodes, list) or not nodes:
            raise SessionError("openephys: record_raw: the GUI's signal chain has no Record Node "
                               f"({self.http.base}/api/recording lists none): add one to record")
        mode = self.http.mode(self.http.put("/api/status", {"mode": "RECORD"}))
        if mode != "RECORD":
            raise SessionError(f"openephys: record_raw: the GUI is in mode {mode} after asking RECORD: see its "
                               "status bar (a Record Node folder it cannot write? no audio device?)")
        self.started = True
        log.info("openephys: the GUI records to %s (record_raw; an automatic base text, the date and time, "
                 "is filled in as the recording starts)", self._folder(rec))

    def close(self) -> None:
        """Stop what this session started, put the name fields back, log the mode found and left."""
        left = "(not asked)"
        try:
            if self.started:
                now = self.status()
                back = "IDLE" if self.found == "IDLE" else "ACQUIRE"
                if now == "RECORD":
                    self.http.put("/api/status", {"mode": back})
                else:
                    log.warning("openephys: the GUI's recording was stopped before the session ended (mode %s); "
                                "left as it is", now)
            if self._restore and self.status() != "RECORD":   # the GUI keeps its folder while recording
                self.http.put("/api/recording", self._restore)
                self._restore = {}
            left = self.status()
        except SessionError as exc:
            log.warning("openephys: on closing: %s", exc)
        verb = "started a recording and stopped it" if self.started else "started nothing"
        log.info("openephys: found the GUI in mode %s, left it in mode %s (this session %s)", self.found, left, verb)
