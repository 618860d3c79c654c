"""Fakes for the presenter's tests (no tests here).

ScriptedServer: a real ZeroMQ ROUTER on 127.0.0.1 (port 0), in a thread, that
speaks the server's side of the protocol: welcome, blocks, heartbeats, acks
(optionally late), re-queueing of aborted presentations as a new block, END
once every presentation is accounted for, a restart on the same endpoint, and
any other message the test hands it (`tell`: PAUSE, RESUME).
Recording displays keep what each frame showed.  Fake ports record writes.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from stimulus_client import config as pconfig
from xdream.peer import PeerConnection
from stimulus_client.display import HeadlessDisplay
from stimulus_client.eye_sources import make_eye
from stimulus_client.presenter import Presenter
from stimulus_client.session_log import SessionLog
from xdream import protocol
from xdream.protocol import MsgType

REPO = Path(__file__).resolve().parents[1]
LSL_CFG = REPO / "tests" / "lsl_api.cfg"
# liblsl must never send multicast beyond this machine: set before any pylsl import in this process
os.environ["LSLAPICFG"] = str(LSL_CFG)

SETTINGS = {"on_ms": 50.0, "off_ms": 33.3, "image_size_px": 40, "window_size": [320, 240],
            "frame_rate_hz": 60.0, "max_event_code": 255, "shuffle": True}
ON, OFF = 3, 2   # frames at 60 Hz for SETTINGS


def solid_image(i: int, h: int = 20, w: int = 30) -> np.ndarray:
    """A flat colour per index, none gray, none black or white: tells the images apart on screen."""
    return np.full((h, w, 3), (40 + 13 * i % 200, 220 - 7 * i % 180, 90 + 29 * i % 150), dtype=np.uint8)


def asymmetric_image(h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    """Top half red, a blue strip on the left, a green square bottom-right, dark noise elsewhere."""
    img = np.random.default_rng(seed).integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    img[: h // 2, :, 0] = 255
    img[:, :4, 2] = 255
    img[-6:, -6:] = (0, 255, 0)
    return img


def make_block(block_id: int, n: int, first_code: int = 1, image=solid_image, prefix: str = "b"):
    specs, images = [], []
    for i in range(n):
        img = image(block_id * 100 + i)
        specs.append(protocol.PresentationSpec(f"{prefix}{block_id:04d}-{i:03d}", first_code + i,
                                               f"img{block_id}-{i}", img.shape[0], img.shape[1]))
        images.append(img)
    return protocol.Block(block_id, block_id, specs), images


def config(**tables) -> pconfig.PresenterConfig:
    """A small 320x240 monitor at 10 px/deg (to PsychoPy's rounding), plus the tables given."""
    data = {"monitor": {"resolution": [320, 240], "width_cm": 32.0, "distance_cm": 57.29578,
                        "refresh_hz": 60.0},
            "connection": {"flush_timeout_s": 5.0, "welcome_timeout_s": 30.0}}
    for name, table in tables.items():
        data.setdefault(name, {}).update(table)
    return pconfig.from_dict(data)


class ScriptedServer:
    def __init__(self, settings=None, *, heartbeat_s=0.1, peer_timeout_s=5.0, session="t",
                 ack_delay_s=0.0, end_when_done=True, requeue=False, disconnect_after=None, outage_s=0.2,
                 end_delay_s=0.0):
        self.settings = dict(settings or SETTINGS)
        self.heartbeat_s, self.peer_timeout_s, self.session = heartbeat_s, peer_timeout_s, session
        self.ack_delay_s, self.end_when_done, self.requeue = ack_delay_s, end_when_done, requeue
        self.disconnect_after, self.outage_s = disconnect_after, outage_s
        self.end_delay_s = end_delay_s    # END this long after every report is in (lets re-sent blocks arrive)
        self._all_in_at: float | None = None
        self.ctx = zmq.Context()
        self.ctx.linger = 0   # every socket: a failed test's context never blocks in term()
        self.router = self._bind("tcp://127.0.0.1:0")
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.incarnation = 0              # bumped by a restart on the same endpoint
        self.received: list[tuple[float, int, protocol.Message]] = []   # (time, incarnation, message)
        self.reports: list[tuple[int, protocol.Message]] = []           # SHOWN: (incarnation, message)
        self.status: dict[str, str] = {}  # pid -> last status
        self.sent_blocks: list[tuple[protocol.Block, list]] = []
        self.bye: str | None = None
        self.ended = threading.Event()
        self.finished = threading.Event()  # END sent, or BYE received
        self.error: BaseException | None = None
        self._peer = None
        self._seq = 0
        self._acks: list[tuple[float, int]] = []
        self._outgoing: queue.Queue = queue.Queue()
        self._told: queue.Queue = queue.Queue()    # (type, body, event set once sent)
        self.told: list[tuple[float, protocol.Message]] = []   # (time sent, message) of those
        self._next_block = 1000
        self._requeued: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    # ----------------------------------------------------------- the test's side
    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def send_block(self, block: protocol.Block, images) -> None:
        self._outgoing.put((block, images))

    def tell(self, msg_type: MsgType, body) -> threading.Event:
        """Send this message to the presenter (once it is welcomed); the event is set once sent."""
        sent = threading.Event()
        self._told.put((msg_type, body, sent))
        return sent

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.ctx.destroy(linger=0)
        if self.error:
            raise self.error

    def shown_pids(self, status: str) -> list[str]:
        return sorted(p for p, s in self.status.items() if s == status)

    def types(self, incarnation=None) -> list[str]:
        return [m.type.value for _, i, m in self.received if incarnation in (None, i)]

    # ----------------------------------------------------------- the thread
    def _bind(self, endpoint):
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(endpoint)
        return sock

    def _send(self, msg_type, body, images=()):
        if self._peer is None:
            return
        self._seq += 1
        try:
            self.router.send_multipart([self._peer, *protocol.encode(msg_type, body, session=self.session,
                                                                     seq=self._seq, images=images)])
        except zmq.ZMQError:
            self._peer = None  # gone: ROUTER_MANDATORY

    def _run(self):
        try:
            last_beat = 0.0
            while not self._stop.is_set():
                if self.router.poll(10):
                    while self.router.poll(0):
                        frames = self.router.recv_multipart()
                        self._on_message(frames[0], protocol.decode(frames[1:]))
                now = time.monotonic()
                while self._acks and self._acks[0][0] <= now:
                    self._send(MsgType.ACK, protocol.Ack(self._acks.pop(0)[1]))
                if self._peer is not None and self.welcomed:
                    while not self._outgoing.empty():
                        block, images = self._outgoing.get()
                        self.sent_blocks.append((block, images))
                        self._send(MsgType.BLOCK, block, images)
                    while not self._told.empty():
                        msg_type, body, sent = self._told.get()
                        self._send(msg_type, body)
                        self.told.append((time.time(), protocol.Message(msg_type, body)))
                        sent.set()
                    if now - last_beat > self.heartbeat_s:
                        self._send(MsgType.HEARTBEAT, protocol.Heartbeat())
                        last_beat = now
                    self._maybe_finish()
        except BaseException as exc:  # surfaces in close()
            self.error = exc

    welcomed = False

    def _on_message(self, rid, msg: protocol.Message):
        self.received.append((time.time(), self.incarnation, msg))
        if msg.type != MsgType.HELLO and rid != self._peer:
            # as the real server: a connection that has not said hello (here: since a restart) is refused
            self.router.send_multipart([rid, *protocol.encode(
                MsgType.ERROR, protocol.Error(f"{msg.type.value} before hello: {protocol.HELLO_FIRST}", msg.seq),
                session=self.session)])
            return
        if msg.type == MsgType.HELLO:
            self._peer = rid
            self._send(MsgType.WELCOME, protocol.Welcome("presenter-1", self.heartbeat_s, self.peer_timeout_s,
                                                         self.settings))
            if self.welcomed:  # a restarted server sends the open blocks again, same pids
                for block, images in self.sent_blocks:
                    self._send(MsgType.BLOCK, block, images)
            self.welcomed = True
        elif msg.type == MsgType.SHOWN:
            self.reports.append((self.incarnation, msg))
            self.status[msg.body.pid] = msg.body.status
            n = sum(1 for i, _ in self.reports if i == 0)
            if self.incarnation == 0 and self.disconnect_after is not None and n >= self.disconnect_after:
                self._restart()
                return
            self._acks.append((time.monotonic() + self.ack_delay_s, msg.seq))
        elif msg.type in (MsgType.PAUSED, MsgType.RESUMED):   # acknowledged, as the real server does
            self._acks.append((time.monotonic() + self.ack_delay_s, msg.seq))
        elif msg.type == MsgType.BYE:
            self.bye = msg.body.reason
            self.finished.set()

    def _restart(self):
        """The server goes away (its socket closes, unacked reports are lost with it) and comes back."""
        self.router.close(linger=0)
        self._peer = None
        self._acks.clear()
        time.sleep(self.outage_s)
        self.router = self._bind(self.endpoint)
        self.incarnation += 1

    def _maybe_finish(self):
        if self.ended.is_set() or self._acks or not self._outgoing.empty() or not self.sent_blocks:
            return
        pids = [s.pid for b, _ in self.sent_blocks for s in b.presentations]
        if any(p not in self.status for p in pids):
            return
        if self.requeue:  # as the server's 'requeue' policy: aborted ones come back in a new block
            again = [(s, img) for b, images in self.sent_blocks for s, img in zip(b.presentations, images)
                     if self.status[s.pid] == "aborted" and s.pid not in self._requeued]
            if again:
                self._requeued.update(s.pid for s, _ in again)
                bid = self._next_block
                self._next_block += 1
                specs = [protocol.PresentationSpec(f"r{bid}-{i:03d}", 1 + (bid * 7 + i) % 250, s.image_id,
                                                   s.height, s.width) for i, (s, _) in enumerate(again)]
                self._outgoing.put((protocol.Block(bid, 0, specs), [img for _, img in again]))
                return
        if self.end_when_done:
            if self._all_in_at is None:
                self._all_in_at = time.monotonic()
            if time.monotonic() < self._all_in_at + self.end_delay_s:
                return
            self._send(MsgType.END, protocol.End("finished"))
            self.ended.set()
            self.finished.set()


class RecordingHeadless(HeadlessDisplay):
    """Headless, keeping what each flip showed: (index, image array or None, fixation, photodiode white)."""

    def __init__(self, cfg, pace_s=0.0):
        super().__init__(cfg)
        self.shown: list[tuple[int, object, bool, bool]] = []
        self.pace_s = pace_s

    def flip(self):
        drawn = self._drawn
        info = super().flip()
        self.shown.append((info.index, *drawn))
        if self.pace_s:
            time.sleep(self.pace_s)
        return info


def recording_window(cfg, pace_s=0.0):
    """A PsychoPy window that reads back every frame from the back buffer before its flip."""
    from stimulus_client.display import PsychoPyDisplay

    class RecordingWindow(PsychoPyDisplay):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.frames: list[tuple[int, np.ndarray]] = []

        def flip(self):
            image = self.capture()
            info = super().flip()
            self.frames.append((info.index, image))
            if pace_s:
                time.sleep(pace_s)
            return info

    return RecordingWindow(cfg)


def presenter(cfg, display, server: ScriptedServer, log_dir, **kwargs) -> Presenter:
    conn = PeerConnection(server.endpoint, "presenter", cfg.connection.name)
    eye = kwargs.pop("eye", None) or make_eye(cfg, display)
    return Presenter(conn, display, cfg, eye=eye, session_log=SessionLog(log_dir, cfg.connection.name), **kwargs)


class FakeParallelPort:
    """psychopy.parallel.ParallelPort's one method the presenter uses, recording (frame, value)."""

    def __init__(self, display=None):
        self.display = display
        self.writes: list[tuple[int, int]] = []

    def setData(self, value):
        self.writes.append((self.display.frame_index if self.display else -1, value))


class FakeSerialPort:
    """serial.Serial's write/close, recording (frame, bytes)."""

    def __init__(self, display=None):
        self.display = display
        self.writes: list[tuple[int, bytes]] = []
        self.closed = False

    def write(self, data: bytes):
        self.writes.append((self.display.frame_index if self.display else -1, bytes(data)))
        return len(data)

    def close(self):
        self.closed = True
