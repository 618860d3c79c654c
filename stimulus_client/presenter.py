"""The presenter peer: blocks in, frames on screen, one report per presentation.

A block is shown in trials of `trial.presentations` presentations.  Before a
trial the eye must stay in the fixation window for `trial.fixation_ms`; then
each presentation is on for max(1, round(on_ms / period)) frames and off (gray)
for round(off_ms / period) frames, with the eye checked before every frame.
A fixation break aborts the rest of the trial: the presentation on screen (or
in its off frames) and the ones after it are reported `aborted`; those before
it stay `shown`.

Every flip is bookkept: a presentation's report (SHOWN: onset, on-frames,
dropped frames) is sent at the flip after its last frame, when the duration of
that frame is known; its frame intervals go to the presenter's JSONL log.  The
event code goes to the marker output from inside the onset flip.

The frame loop is blocking (PsychoPy's is), so the connection is polled with
a zero timeout after each flip, and while idle with a short timeout; the
connection never sleeps (xdream.peer).  Presentation ids that
were shown or aborted once are never shown again, even if a block is re-sent.

A pause is held by the pause key (the presenter's own: PAUSED / RESUMED tell the
server) or by the server (PAUSE / RESUME, the operator's pause; feature "pause").
A pause mid-trial ends the trial as a fixation break does, except when: the pause
key at once (the presentation on screen is aborted), the server's after the
presentation on screen, whose frames all run.  The screen stays gray, heartbeats
and blocks keep coming, until no source holds a pause.

Quitting (the quit key, Ctrl-C, an error) reports every presentation received
and not yet reported as aborted, waits for the acks up to
`connection.flush_timeout_s`, then says BYE with the reason.  When the server
ENDs the session the presenter stops at once and reports nothing more.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import zmq

from stimulus_client.config import PresenterConfig
from stimulus_client.eye import EyeSource, NoEye
from stimulus_client.eye_validation import validate_eye
from stimulus_client.keys import KeySource
from stimulus_client.markers import MarkerOutput
from stimulus_client.session_log import SessionLog
from xdream import protocol
from xdream.errors import ConfigError, SessionError
from xdream.logs import RateLimitedLog
from xdream.protocol import MsgType

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.01        # socket poll while nothing is on the move (keeps keys responsive)
DROPPED_FACTOR = 1.5      # a frame longer than this many refresh periods was dropped


def frames_for(ms: float, frame_period: float) -> int:
    return max(0, round(ms / 1000.0 / frame_period))


class ScreenTap:
    """Sends each onset frame, as drawn, to a simulated rig (simulators/).

    A real rig needs no tap: its neuron looks at the monitor."""

    def __init__(self, endpoint: str, context: zmq.Context):
        self.socket = context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.LINGER, 2000)
        self.socket.connect(endpoint)

    def send(self, code: int, frame_index: int, frame_period: float, flip_time: float, frame=None) -> None:
        h, w = (frame.shape[0], frame.shape[1]) if frame is not None else (0, 0)
        body = protocol.ScreenFrame(code, frame_index, frame_period, flip_time, h, w)
        images = [frame] if frame is not None else []
        self.socket.send_multipart(protocol.encode(MsgType.SCREEN_FRAME, body, images=images), copy=False)

    def close(self) -> None:
        self.socket.close()


@dataclass
class Timing:
    period: float
    on_frames: int
    off_frames: int
    fixation_frames: int
    inter_trial_frames: int


@dataclass
class Record:
    """One presentation on its way to a SHOWN report."""
    block_id: int
    spec: protocol.PresentationSpec
    trial: int = -1
    status: protocol.ShownStatus = "shown"
    reason: str = ""
    onset: float | None = None
    onset_index: int = 0
    frames: int = 0                      # on-frames flipped
    intervals: list[float] = field(default_factory=list)  # how long each of its frames was up (s)
    end_index: int | None = None         # the last flip that showed it (image or its off frames)


@dataclass
class Result:
    shown: int = 0
    aborted: int = 0
    reason: str = "done"
    unacknowledged: int = 0


class Presenter:
    """Shows blocks on an already open display.

    The display is opened before the presenter says hello: opening a PsychoPy
    window and measuring its refresh blocks for seconds, and a peer that is
    silent that long after its welcome would be declared lost."""

    def __init__(self, conn, display, cfg: PresenterConfig, *, markers: MarkerOutput | None = None,
                 eye: EyeSource | None = None, keys: KeySource | None = None,
                 session_log: SessionLog | None = None, tap: ScreenTap | None = None):
        self.conn = conn
        self.display = display
        self.cfg = cfg
        self.layout = display.layout
        self.markers = markers or MarkerOutput()
        self.eye = eye or NoEye()
        named = list(cfg.keys.named().values())
        self.keys = keys or display.keys(named, cfg.keys.backend)
        self.log = session_log
        self.tap = tap
        if self.log:
            self.log.write("keys", backend=getattr(self.keys, "backend", None), keys=named)
        self.queue: collections.deque[protocol.Message] = collections.deque()
        self.done: set[str] = set()               # pids shown or aborted: never shown again
        self.result = Result()
        self.timing: Timing | None = None
        self.trial_index = 0
        self._welcome = None
        self._features: tuple = ()               # protocol.FEATURES the server's welcome lists
        self._unreported: dict[str, Record] = {}  # the current block's presentations not yet reported
        self._open: list[Record] = []             # on screen, or waiting for the flip that ends them
        self._marker_high = False
        self._marker_errors = 0
        self._marker_log = RateLimitedLog(log, burst=10)   # the first 10, then one line per 10 s
        self._quit: str | None = None
        self._idle_drawn = False
        self._paused = False                     # the pause key's gray screen is up
        self._key_hold = False                   # the pause key holds a pause
        self._server_hold: str | None = None     # the server's PAUSE holds one (its reason)
        self._hold_welcome = None                # ... under this welcome
        conn.take_up(("pause",))                 # PAUSE / RESUME from a server that offers them

    # ================================================================ run
    def run(self) -> Result:
        """Present blocks until the server ends the session or the experimenter quits."""
        reason = "done"
        try:
            self._wait_welcome()
            self._main_loop()
            reason = self._quit or "done"
        except KeyboardInterrupt:
            reason = "interrupted (Ctrl-C)"
        except BaseException as exc:
            reason = f"error: {exc!r}"
            raise
        finally:
            self._shut_down(reason)
        return self.result

    def _wait_welcome(self) -> None:
        deadline = time.monotonic() + self.cfg.connection.welcome_timeout_s
        self._draw_idle()
        while self.conn.welcome is None and not self.conn.ended:
            if time.monotonic() > deadline:
                raise SessionError(f"no welcome from the server at {self.conn.endpoint} within "
                                   f"{self.cfg.connection.welcome_timeout_s:.0f} s")
            self._take(self.conn.poll(0.05))
            if self._handle_keys() == "quit":
                return
        self._apply_welcome()

    def _main_loop(self) -> None:
        while not self.conn.ended and self._quit is None:
            if self.queue:
                self._present_block(self.queue.popleft())
                continue
            self._draw_idle()
            self._take(self.conn.poll(IDLE_POLL_S))
            self._handle_keys()
            if self.log:
                self.log.flush()

    # ============================================================ settings
    def _apply_welcome(self) -> None:
        welcome = self.conn.welcome
        if welcome is None or welcome is self._welcome:
            return
        self._welcome = welcome
        settings = welcome.settings
        self._features = tuple(settings.get("features") or ())
        period = self.display.frame_period
        expected = settings.get("frame_rate_hz")
        if expected and abs(expected - 1.0 / period) > 0.01 * expected:
            log.warning("the server's config expects a %.1f Hz display; this one is configured for %.1f Hz",
                        expected, 1.0 / period)
        max_code = settings.get("max_event_code", 255)
        if max_code > self.markers.max_code:
            raise ConfigError(f"the server may send event codes up to {max_code}, but the {self.markers.kind} "
                              f"marker output carries at most {self.markers.max_code}")
        t = self.cfg.trial
        self.timing = Timing(period, max(1, frames_for(settings["on_ms"], period)),
                             frames_for(settings["off_ms"], period),
                             frames_for(t.fixation_ms, period) if self.eye.enabled else 0,
                             frames_for(t.inter_trial_ms, period))
        log.info("presenting %d frames on, %d off (%.2f ms a frame); %d presentations a trial",
                 self.timing.on_frames, self.timing.off_frames, period * 1000, t.presentations)
        if self.log:
            self.log.write("welcome", session=self.conn.session, peer_id=welcome.peer_id, settings=settings,
                           on_frames=self.timing.on_frames, off_frames=self.timing.off_frames,
                           fixation_frames=self.timing.fixation_frames,
                           inter_trial_frames=self.timing.inter_trial_frames, frame_period=period)

    # ============================================================ messages
    def _take(self, messages) -> None:
        for msg in messages:
            if msg.type == MsgType.BLOCK:
                self.queue.append(msg)
            elif msg.type in (MsgType.PAUSE, MsgType.RESUME):
                self._server_pause(msg.type == MsgType.PAUSE, msg.body.reason)
            elif msg.type != MsgType.END:
                log.warning("presenter ignores %s", msg.type.value)

    def _handle_keys(self) -> str | None:
        """Between trials and while idle: the quit key quits, the pause key pauses, the calibrate
        key runs the tracker's setup, the validate key its validation; the server's pause pauses."""
        for key in self.keys.poll():
            if key == self.cfg.keys.quit:
                self._request_quit(f"quit: {key} pressed")
                return "quit"
            if key == self.cfg.keys.pause:
                self._hold_by_key(True)
                return self._pause()
            if key == self.cfg.keys.calibrate:
                return self._calibrate()
            if key == self.cfg.keys.validate:
                return self._validate()
        if self._server_holds():
            return self._pause()
        return None

    def _server_pause(self, hold: bool, reason: str) -> None:
        """PAUSE / RESUME from the server: noted here, acted on at the next frame that may stop."""
        if hold:
            self._hold_welcome = self.conn.welcome
        if hold == (self._server_hold is not None):
            return
        self._server_hold = (reason or "server") if hold else None
        log.warning("the server %s%s", "paused the presenter" if hold else "resumed", f" ({reason})" if reason else "")
        if self.log:
            self.log.write("hold", source="server", held=hold, reason=reason, frame=self.display.frame_index)

    def _server_holds(self) -> bool:
        """Whether the server holds a pause.  A hold belongs to the connection that was told it: after
        a new welcome (a reconnect, a restarted server) it is lifted, and a server that still holds
        one says PAUSE again right after the welcome."""
        if self._server_hold is not None and self.conn.welcome is not self._hold_welcome:
            self._server_pause(False, "a new welcome: the pause was the old connection's")
        return self._server_hold is not None

    def _hold_by_key(self, hold: bool) -> None:
        """The pause key takes or releases the presenter's own hold; the server hears of it
        (PAUSED / RESUMED) and stops its block timer meanwhile (docs/protocol.md)."""
        self._key_hold = hold
        if hold:
            self.conn.send(MsgType.PAUSED, protocol.Paused("pause key"), reliable=True)
        else:
            self.conn.send(MsgType.RESUMED, protocol.Resumed("pause key"), reliable=True)
        if self.log:
            self.log.write("hold", source="key", held=hold, frame=self.display.frame_index)

    def _calibrate(self) -> str:
        """The tracker's own setup (calibration, validation), in a worker thread: it blocks for
        minutes, and meanwhile this thread keeps the connection's heartbeats going and queues the
        blocks that come.  Nothing else touches the tracker or the keyboard until it is over."""
        if not self.eye.can_calibrate:
            log.warning("calibrate key: the %s eye source has no calibration", type(self.eye).__name__)
            return "resume"
        log.warning("tracker setup started")
        if self.log:
            self.log.write("calibration_start")
            self.log.flush()
        told = self._tell_server_paused("tracker setup")
        self.display.draw(None, fixation=False, photodiode_white=False)
        self._flip()
        outcome: dict = {}

        def setup() -> None:
            try:
                outcome["result"] = self.eye.calibrate()
            except Exception as exc:  # the session goes on; without a tracker no trial starts
                outcome["error"] = repr(exc)

        worker = threading.Thread(target=setup, name="tracker-setup", daemon=True)
        worker.start()
        while worker.is_alive():
            self._take(self.conn.poll(IDLE_POLL_S))
        worker.join()
        self.keys.clear()  # the setup's own keys (space, escape) were meant for it
        self._idle_drawn = False
        if "error" in outcome:
            line = f"tracker setup failed: {outcome['error']}"
            log.error("%s", line)
        else:
            line = f"tracker setup done: {outcome.get('result')}"
            log.warning("%s", line)
        if self.log:
            self.log.write("calibration", when="session", **outcome)
            self.log.flush()
        if told and not self.conn.ended:
            self.conn.send(MsgType.RESUMED, protocol.Resumed(line[:500]), reliable=True)
        return "resume"

    def _tell_server_paused(self, reason: str) -> bool:
        """A tracker's setup or validation holds the screen for minutes: the server is told (PAUSED,
        its block timer stands still) unless a pause already holds it; True if it was told."""
        if self._paused or self.conn.welcome is None or self.conn.ended:
            return False
        self.conn.send(MsgType.PAUSED, protocol.Paused(reason), reliable=True)
        return True

    def _validate(self) -> str:
        """PsychoPy's validation of the tracker, drawn in this window by this thread (the window's
        GL context lives here).  Meanwhile a helper thread alone uses the connection: heartbeats
        go on and blocks are queued.  The server is told as for the pause key (its block timer
        stands still), and the result's one line comes back to it as the RESUMED reason, which
        its journal keeps.  A failed validation is a warning; the session goes on."""
        if not self.eye.can_validate:
            log.warning("validate key: the %s eye source has no validation (it needs eye.source = 'iohub')",
                        type(self.eye).__name__)
            return "resume"
        log.warning("eye validation started")
        if self.log:
            self.log.write("validation_start")
            self.log.flush()
        tell_server = self._tell_server_paused("eye validation")
        stop = threading.Event()

        def pump() -> None:
            while not stop.is_set():
                self._take(self.conn.poll(IDLE_POLL_S))

        pumper = threading.Thread(target=pump, name="connection-pump", daemon=True)
        pumper.start()
        try:
            summary, line = validate_eye(self.eye)
        finally:
            stop.set()
            pumper.join()
        self.keys.clear()  # the procedure's own keys (escape cancels it) were meant for it
        self._idle_drawn = False
        if self.log:
            self.log.write("validation", when="session", **summary)
            self.log.flush()
        if tell_server and not self.conn.ended:
            self.conn.send(MsgType.RESUMED, protocol.Resumed(line), reliable=True)
        return "resume"

    def _request_quit(self, reason: str) -> None:
        log.warning("%s: reporting what is left, then leaving", reason)
        self._quit = reason
        if self.log:
            self.log.write("quit", reason=reason)

    def _pause(self) -> str:
        """Gray screen while the pause key or the server holds a pause; heartbeats and blocks
        keep coming.  The pause key toggles its own hold: it cannot lift the server's."""
        held_by = [name for name, on in (("key", self._key_hold), ("server", self._server_hold is not None)) if on]
        log.warning("paused by the %s (%r: the presenter's own pause on or off, %r to quit)",
                    " and the ".join(held_by), self.cfg.keys.pause, self.cfg.keys.quit)
        if self.log:
            self.log.write("pause", by=held_by, reason=self._server_hold or "")
            self.log.flush()
        self.display.draw(None, fixation=False, photodiode_white=False)
        self._flip()
        self._idle_drawn = False
        if self.tap:   # gray from here on: a simulated rig's clock runs on (its last counts complete)
            self.tap.send(0, self.display.frame_index, self.display.frame_period, 0.0)
        self._paused = True
        try:
            return self._paused_loop()
        finally:
            self._paused = False

    def _paused_loop(self) -> str:
        while not self.conn.ended:
            if not self._key_hold and not self._server_holds():
                log.warning("resumed")
                if self.log:
                    self.log.write("resume")
                return "resume"
            self._take(self.conn.poll(IDLE_POLL_S))
            for key in self.keys.poll():
                if key == self.cfg.keys.quit:
                    self._request_quit(f"quit: {key} pressed while paused")
                    return "quit"
                if key in (self.cfg.keys.calibrate, self.cfg.keys.validate):
                    if key == self.cfg.keys.calibrate:
                        self._calibrate()
                    else:
                        self._validate()
                    self.display.draw(None, fixation=False, photodiode_white=False)  # still paused
                    self._flip()
                    continue
                if key == self.cfg.keys.pause:
                    self._hold_by_key(not self._key_hold)
                    if self._server_hold is not None:
                        log.warning("the pause key %s the presenter's own pause; the server's holds (%s)",
                                    "took" if self._key_hold else "released", self._server_hold)
        return "end"

    # ============================================================== frames
    def _draw_idle(self) -> None:
        """Gray, the fixation point, the photodiode patch black: flipped once, then left up."""
        if not self._idle_drawn:
            self.display.draw(None, fixation=True, photodiode_white=False)
            self._flip()
            self._idle_drawn = True

    def _flip(self, code: int | None = None):
        """Flip; fire the marker; close the records whose last frame this flip ended."""
        if code is not None:
            self.display.call_on_flip(self._send_marker, code)
            self._marker_high = True
        elif self._marker_high:
            self.display.call_on_flip(self._clear_marker)
            self._marker_high = False
        info = self.display.flip()
        finished = []
        for rec in self._open:
            if info.index > rec.onset_index:
                rec.intervals.append(info.interval)  # the frame shown at flip index-1 lasted this long
            if rec.end_index is not None and info.index > rec.end_index:
                finished.append(rec)
        for rec in finished:
            self._open.remove(rec)
            self._report(rec)
        self._take(self.conn.poll(0))
        return info

    def _send_marker(self, code: int) -> None:
        try:
            self.markers.send(code)
        except Exception as exc:  # a marker line fault must not stop the frame loop; the log says so
            self._marker_error(exc, code)

    def _clear_marker(self) -> None:
        try:
            self.markers.clear()
        except Exception as exc:
            self._marker_error(exc, 0)

    def _marker_error(self, exc: Exception, code: int) -> None:
        self._marker_errors += 1
        self._marker_log.error("marker", "event marker %d not sent (%d failures so far): %r", code,
                               self._marker_errors, exc)
        if self.log:
            self.log.write("marker_error", code=code, error=repr(exc))

    def _next_frame_time(self) -> float:
        """The frame clock (flips times the nominal period) of the frame about to be drawn."""
        return (self.display.frame_index + 1) * self.display.frame_period

    def _eye_in(self) -> bool:
        if not self.eye.enabled:
            return True
        return self.layout.eye_inside(self.eye.gaze(self._next_frame_time()),
                                      self.cfg.trial.fixation_window_deg)

    # ============================================================== blocks
    def _present_block(self, msg: protocol.Message) -> None:
        self._apply_welcome()  # a new server may have new settings
        block: protocol.Block = msg.body
        todo: list[tuple[protocol.PresentationSpec, object]] = []
        skipped: list[tuple[protocol.PresentationSpec, object]] = []
        for spec, image in zip(block.presentations, msg.images()):
            (skipped if spec.pid in self.done else todo).append((spec, image))
        if skipped:
            log.warning("block %d: %d presentations were shown or aborted before; not showing them again",
                        block.block_id, len(skipped))
        if self.log:
            self.log.write("block", block_id=block.block_id, generation=block.generation,
                           pids=[s.pid for s, _ in todo], skipped=[s.pid for s, _ in skipped])
        if not todo:
            return
        handles = self.display.prepare([image for _, image in todo])  # textures ready before the first flip
        records = [Record(block.block_id, spec) for spec, _ in todo]
        self._unreported = {r.spec.pid: r for r in records}
        log.info("block %d: %d presentations", block.block_id, len(records))
        n = self.cfg.trial.presentations
        try:
            for start in range(0, len(records), n):
                outcome = self._run_trial(records[start:start + n], handles[start:start + n])
                if outcome in ("quit", "end"):
                    return
        finally:
            self.display.release(handles)
            if not self.conn.ended and self.tap:
                # the screen is gray from here on: lets a simulated rig's clock run on
                self.tap.send(0, self.display.frame_index, self.display.frame_period, 0.0)
            if self.log:
                self.log.flush()

    # ============================================================== trials
    def _run_trial(self, records: list[Record], handles: list) -> str:
        """One fixation period and its presentations: 'done', 'break', 'pause', 'quit' or 'end'."""
        T = self.timing
        assert T is not None, "timing is set at the welcome, before any block"
        held = 0
        iti = T.inter_trial_frames
        while held < T.fixation_frames or iti > 0 or self._server_holds():  # gray, fixation point on
            if self.conn.ended:
                return "end"
            key = self._handle_keys()
            if key in ("quit", "end"):
                return key
            if key == "resume":
                held, iti = 0, T.inter_trial_frames
                continue
            if iti > 0:
                iti -= 1
            else:
                held = held + 1 if self._eye_in() else 0
            self.display.draw(None, fixation=True, photodiode_white=False)
            self._flip()
        trial = self.trial_index
        self.trial_index += 1
        per = T.on_frames + T.off_frames
        self.eye.begin_trial(trial, self._next_frame_time(), len(records) * per * T.period)
        for rec in records:
            rec.trial = trial
        outcome, reason, by_key = "done", "", False
        for rec, handle in zip(records, handles):
            for f in range(per):
                if self.conn.ended:
                    return "end"
                for key in self.keys.poll():
                    if key == self.cfg.keys.quit:
                        self._request_quit(f"quit: {key} pressed")
                        outcome, reason = "quit", self._quit or f"quit: {key} pressed"
                    elif key == self.cfg.keys.pause and outcome == "done":
                        outcome, reason = "pause", "paused"
                        by_key = True
                    elif key == self.cfg.keys.calibrate and outcome == "done" and self.eye.can_calibrate:
                        outcome, reason = "calibrate", "tracker setup"
                    elif key == self.cfg.keys.validate and outcome == "done" and self.eye.can_validate:
                        outcome, reason = "validate", "eye validation"
                if outcome == "done" and f == 0 and self._server_holds():
                    # the server's pause: the presentation before this one ran all its frames
                    outcome, reason = "pause", f"paused by the server ({self._server_hold})"
                if outcome == "done" and not self._eye_in():
                    outcome, reason = "break", "fixation break"
                if outcome != "done":
                    break
                onset = f == 0
                self.display.draw(handle if f < T.on_frames else None, fixation=True, photodiode_white=onset)
                frame = self.display.capture() if onset and self.tap else None
                info = self._flip(rec.spec.code if onset else None)
                if onset:
                    rec.onset, rec.onset_index = info.time, info.index
                    self._open.append(rec)
                    if self.tap:
                        self.tap.send(rec.spec.code, info.index, self.display.frame_period, info.time, frame)
                if f < T.on_frames:
                    rec.frames += 1
            if outcome != "done":
                break
            rec.end_index = self.display.frame_index
        self.eye.end_trial()
        if outcome != "done":
            self._abort(records, reason)
        self._idle_drawn = False
        self._draw_idle()  # clears the screen at once; its flip closes the trial's last records
        if self.log:
            self.log.write("trial", trial=trial, block_id=records[0].block_id, outcome=outcome,
                           pids=[r.spec.pid for r in records])
            self.log.flush()
        if outcome == "pause":
            if by_key:
                self._hold_by_key(True)
            return self._pause()
        if outcome == "calibrate":
            self._calibrate()
        if outcome == "validate":
            self._validate()
        return outcome

    def _abort(self, records: list[Record], reason: str) -> None:
        """Abort every record of the trial not yet over: on screen, or not yet started."""
        for rec in records:
            if rec.end_index is not None:
                continue  # its frames are over: shown (its report waits for the next flip)
            rec.status, rec.reason = "aborted", reason
            if rec.onset is not None:
                rec.end_index = self.display.frame_index  # was on screen: closed by the next flip
            else:
                self._report(rec)

    # ============================================================= reports
    def _report(self, rec: Record) -> None:
        if rec.spec.pid in self.done:
            return
        period = self.display.frame_period
        dropped = sum(1 for dt in rec.intervals if dt > DROPPED_FACTOR * period)
        # the trial number only to a server that asked for it (an older one refuses the field)
        trial = rec.trial if "trial" in self._features else -1
        body = protocol.Shown(rec.block_id, rec.spec.pid, rec.status, rec.onset, rec.frames, dropped, trial)
        self.conn.send(MsgType.SHOWN, body, reliable=True)
        self.done.add(rec.spec.pid)
        self._unreported.pop(rec.spec.pid, None)
        if rec.status == "shown":
            self.result.shown += 1
        else:
            self.result.aborted += 1
        if self.log:
            self.log.write("presentation", block_id=rec.block_id, pid=rec.spec.pid, code=rec.spec.code,
                           image_id=rec.spec.image_id, trial=rec.trial, status=rec.status, reason=rec.reason,
                           onset=rec.onset, onset_frame=rec.onset_index if rec.onset is not None else None,
                           frames=rec.frames, dropped=dropped, intervals=[round(dt, 6) for dt in rec.intervals])

    def _abort_everything(self, reason: str) -> None:
        """Leaving: everything received and not yet reported is reported aborted."""
        left = list(self._unreported.values())
        for msg in self.queue:
            left.extend(Record(msg.body.block_id, spec) for spec in msg.body.presentations)
        self.queue.clear()
        for rec in left:
            if rec.spec.pid in self.done:
                continue
            if rec in self._open:
                self._open.remove(rec)
            if not (rec.status == "shown" and rec.end_index is not None):  # not all its frames were up
                rec.status, rec.reason = "aborted", reason
            self._report(rec)
        if left:
            log.warning("%s: reported %d presentations aborted", reason, len(left))

    def _shut_down(self, reason: str) -> None:
        self.result.reason = reason
        try:
            if not self.conn.ended and self.conn.welcome is not None:
                self._abort_everything(reason)
                if not self.conn.flush(self.cfg.connection.flush_timeout_s, self._take):
                    log.warning("%d reports were not acknowledged within %.1f s", self.conn.unacknowledged,
                                self.cfg.connection.flush_timeout_s)
            self.result.unacknowledged = self.conn.unacknowledged
            if self.log:
                self.log.write("close", reason=reason, shown=self.result.shown, aborted=self.result.aborted,
                               unacknowledged=self.result.unacknowledged, ended_by_server=self.conn.ended,
                               marker_errors=self._marker_errors)
        finally:
            for closer in (self.display.close, self.markers.close, self.eye.close, self.keys.close,
                           self.tap.close if self.tap else None, lambda: self.conn.close(reason),
                           self.log.close if self.log else None):
                if closer is None:
                    continue
                try:
                    closer()
                except Exception as exc:  # closing the rest matters more than this one
                    log.error("while closing: %r", exc)
