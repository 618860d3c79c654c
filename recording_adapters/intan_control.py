"""What the Intan adapter asks of RHX over its command port: the TCP outputs it
reads, the run mode, and (optionally) RHX's own recording of the session.

The rule: never stop or restart what was running before the session.
- RHX found stopped: set the outputs up, then `set runmode run` (or, with
  record_raw, `set runmode record` once the session id is known); on close,
  `set runmode stop`: the session stops what it started.
- RHX found running or recording (someone clicked Run or Record, or another
  session left it so): the outputs are set up while it runs (a channel's TCP
  outputs are not restricted while running, and TCPDataOutputThread::run
  re-reads them when SignalSources::getTcpFilterBands changes); no run mode
  is sent, now or on close.  With record_raw, a recording already running is
  the lab's (its file name is logged); a board running without recording
  cannot start one without a stop, so the adapter refuses to start.
The mode found and the mode left are logged.

Upstream (Intan-Technologies/Intan-RHX, v3.4.0), Engine/Processing/commandparser.cpp:
setRunModeCommand (record needs Filename.Path and Filename.BaseFilename, the
board stopped), getRunModeCommand, setStateFilenameItemCommand /
getStateFilenameItemCommand ("Return: Filename.path <value>"); SystemState:
the file name cannot be set while running.  RHX adds a date-time stamp to
the base name itself (SaveManagers/intanfilesavemanager.cpp).
"""

from __future__ import annotations

import logging
import re
import socket
import time

from recording_adapters.rhx_commands import SENTINEL, RhxCommandPort
from xdream.errors import SessionError

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
# After `set runmode run|record` nothing is sent until RHX's data show it ran, or this long: a
# command in the same read as the run command would wait behind it until the board stops (a
# `set runmode stop` there would never run).  RHX reads its socket within milliseconds unless
# its GUI thread is busy; a session long enough to see data never depends on this.
RUN_SETTLE_S = 0.25


def base_filename(session_id: str) -> str:
    """RHX's base file name for a session: the id from the server, kept to safe characters."""
    return "xdream-" + (_SAFE.sub("_", session_id)[:80] or "session")


class RhxControl:
    def __init__(self, sock: socket.socket, timeout_s: float, *, record_raw: bool, record_path: str):
        self.port = RhxCommandPort(sock, timeout_s)
        self.record_raw = record_raw
        self.record_path = record_path
        self.found: str | None = None       # run mode when the session connected
        self.started: str | None = None     # "run" or "record" when this session started it
        self._confirm: str | None = None    # the mode to confirm once data flows
        self.waiting_for_session = False    # record_raw: RHX waits stopped for the session id
        self._run_sent_at: float | None = None   # until data show that RHX parsed the run command

    # -- asking ---------------------------------------------------------------------------
    def _settle(self) -> None:
        if self._run_sent_at is not None:
            time.sleep(max(0.0, self._run_sent_at + RUN_SETTLE_S - time.monotonic()))
            self._run_sent_at = None

    def check(self, commands: list[str]) -> None:
        """Send commands; SessionError naming each one RHX refused, with RHX's words."""
        self._settle()
        refused = [f"{c!r}: {r}" for c, r in zip(commands, self.port.ask(commands)) if r is not None]
        if refused:
            more = f" (and {len(refused) - 3} more)" if len(refused) > 3 else ""
            raise SessionError("intan: RHX refused " + "; ".join(refused[:3]) + more)

    def get(self, parameter: str, name: str) -> str:
        """`get parameter`'s value; RHX answers "Return: <name> <value>"."""
        self._settle()
        reply = self.port.ask([f"get {parameter}"])[0] or ""
        m = re.fullmatch(rf"Return: {re.escape(name)} ?(.*)", reply.strip(), re.IGNORECASE | re.DOTALL)
        if m is None:
            raise SessionError(f"intan: RHX answered {reply!r} to 'get {parameter}'")
        return m.group(1).strip()

    def run_mode(self) -> str:
        return self.get("runmode", "RunMode")

    # -- the session ------------------------------------------------------------------------
    def set_up(self, names: list[str], first_line: int) -> float:
        """The TCP outputs the adapter reads, and RHX listening on both data ports; returns its
        amplifier sample rate (Hz).  Runs nothing, stops nothing."""
        self.found = self.run_mode()
        log.info("intan: found RHX in run mode %s", self.found)
        if self.found != "Stop":
            if self.record_raw and self.found == "Run":
                raise SessionError("intan: RHX is running (not recording), started before this session; "
                                   "record_raw needs it stopped to name and start its recording, and this "
                                   "adapter never stops what it did not start: stop RHX (Run button), or "
                                   "set record_raw=false")
            log.warning("intan: RHX is already in run mode %s: this session sets up its TCP outputs while "
                        "it runs and will neither stop nor restart it", self.found)
            if self.found in ("Record", "Trigger"):
                path, base = self.get("filename.path", "Filename.path"), self.get("filename.basefilename",
                                                                                  "Filename.basefilename")
                log.warning("intan: RHX records to %s/%s*, as the lab set it%s", path, base,
                            "; record_raw starts no recording of its own" if self.record_raw else "")
        fs_text = self.get("sampleratehertz", "SampleRateHertz")
        try:
            fs = float(fs_text)
        except ValueError:
            raise SessionError(f"intan: RHX's SampleRateHertz is {fs_text!r}, not a number") from None
        if not fs > 0:
            raise SessionError(f"intan: RHX's SampleRateHertz is {fs_text!r}")
        commands = ["execute clearalldataoutputs"]
        commands += [f"set {n.lower()}.tcpdataoutputenabledspike true" for n in names]
        commands.append(f"set digital-in-{first_line:02d}.tcpdataoutputenabled true")
        commands += ["execute connecttcpwaveformdataoutput", "execute connecttcpspikedataoutput"]
        self.check(commands)
        return fs

    def start(self) -> None:
        """After the data ports are connected: run a stopped board (not with record_raw: that
        waits for the session id)."""
        if self.found != "Stop":
            return
        if self.record_raw:
            self.waiting_for_session = True
            log.info("intan: record_raw: RHX stays stopped until the server's session id names its file")
            return
        self._run("run")

    def start_recording(self, session_id: str) -> None:
        """record_raw: name RHX's file after the session and record."""
        if not self.waiting_for_session:
            return
        self.waiting_for_session = False
        base = base_filename(session_id)
        if self.record_path:
            self.check([f"set filename.path {self.record_path}"])
        self.check([f"set filename.basefilename {base}"])
        path = self.get("filename.path", "Filename.path")
        got = self.get("filename.basefilename", "Filename.basefilename")
        if not path:
            raise SessionError("intan: record_raw: RHX has no Filename.Path: give record_path=FOLDER (a "
                               "folder on the PC running RHX), or choose one in RHX (File > Select File "
                               "Format / Choose Filename)")
        if got != base or (self.record_path and path != self.record_path):
            raise SessionError(f"intan: RHX's file name reads back as {path}/{got}, not "
                               f"{self.record_path or path}/{base}")
        log.info("intan: RHX records to %s/%s* (record_raw)", path, base)
        self._run("record")

    def _run(self, mode: str) -> None:
        self.port.send_unanswered(f"set runmode {mode}")
        self._run_sent_at = time.monotonic()
        self.started = mode
        self._confirm = {"run": "Run", "record": "Record"}[mode]

    def data_flows(self) -> None:
        """The waveform port has data: RHX parsed the run command, so a `get runmode` now is
        parsed on its own (not held behind it) and confirms the mode."""
        self._run_sent_at = None
        if self._confirm is not None:
            self.port.post([SENTINEL])

    def pump(self) -> None:
        """Replies to posted commands: refusals logged by command, the mode confirmed."""
        for command, reply in self.port.pump():
            if command == SENTINEL and self._confirm is not None:
                mode = (reply or "").rsplit(" ", 1)[-1]
                if mode == self._confirm:
                    log.info("intan: RHX runs in mode %s", mode)
                else:
                    log.error("intan: RHX is in mode %s after 'set runmode %s'", mode, self.started)
                self._confirm = None
            elif reply is not None:
                log.error("intan: RHX refused %r: %s", command, reply)

    def reconnect(self, port: str) -> None:
        self._settle()
        self.port.post([f"execute connecttcp{port}dataoutput"])

    def close(self) -> None:
        """Stop what this session started, and log the mode found and left."""
        left = "(not asked)"
        try:
            if self.started is not None:
                self.check(["set runmode stop"])
            left = self.run_mode()
        except (OSError, SessionError) as exc:
            log.warning("intan: on closing: %s", exc)
        verb = f"started {self.started!r} and stopped it" if self.started else "started nothing"
        log.info("intan: found RHX in run mode %s, left it in run mode %s (this session %s)", self.found, left,
                 verb)
