"""The peer side of the wire: a DEALER that says hello, keeps heartbeats going,
reconnects with backoff when the server goes silent (zguide's Lazy/Paranoid
Pirate), and keeps every report until the server acknowledges it.

Synchronous on purpose: the presenter's frame loop is blocking, so it polls
this connection with a short timeout between flips.
"""

from __future__ import annotations

import logging
import time

import zmq

from xdream import protocol
from xdream.curve import ClientKeys, secure_client
from xdream.errors import ProtocolError, SessionError
from xdream.protocol import MsgType

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_S = 1.0
DEFAULT_TIMEOUT_S = 10.0
MAX_BACKOFF_S = 8.0


class PeerConnection:
    def __init__(self, endpoint: str, role: str, name: str, channels: int = 0,
                 context: zmq.Context | None = None, curve: ClientKeys | None = None):
        self.endpoint = endpoint
        self.curve = curve   # CURVE keys for a server that requires them (xdream/curve.py)
        self.hello = protocol.Hello(role, name, channels)  # type: ignore[arg-type]  # checked just below
        self.hello.check()
        self.context = context or zmq.Context.instance()
        self.session = ""
        self.welcome: protocol.Welcome | None = None
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self.timeout_s = DEFAULT_TIMEOUT_S
        self.ended = False
        self._socket: zmq.Socket | None = None
        self._seq = 0
        self._outbox: dict[int, tuple] = {}  # seq -> (type, body, images, session), until acknowledged
        self._retry_at: float | None = None
        self.reconnects = 0
        self._last_recv = time.monotonic()
        self._last_send = 0.0
        self._backoff = 0.5
        self._early: list[protocol.Message] = []  # arrived while waiting for the welcome
        self._hello_at = 0.0
        # features that change what the server may send this peer (protocol.FEATURES): taken up after
        # each welcome that lists them (`take_up`); an older server lists none and is told nothing
        self.accepts: tuple[str, ...] = ()
        self.taken_up: tuple[str, ...] = ()   # what the last welcome offered of `accepts`, as sent
        self._connect()

    # ------------------------------------------------------------- public
    def wait_welcome(self, timeout_s: float) -> protocol.Welcome:
        """Block until the server has welcomed us; messages that arrive early are kept."""
        deadline = time.monotonic() + timeout_s
        while self.welcome is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SessionError(f"no welcome from the server at {self.endpoint} within {timeout_s:.0f} s")
            self._early.extend(self._poll_socket(min(left, 0.2)))
        return self.welcome

    def send(self, msg_type: MsgType, body, images=(), reliable: bool = False) -> int:
        """Send a message; `reliable` ones are resent after a reconnect until acked."""
        self._seq += 1
        if reliable:
            self._outbox[self._seq] = (msg_type, body, images, self.session)
        self._send_frames(protocol.encode(msg_type, body, session=self.session, seq=self._seq, images=images))
        return self._seq

    def take_up(self, features: tuple[str, ...]) -> None:
        """Accept these features from every welcome that offers them (now, if one came already)."""
        self.accepts = tuple(features)
        if self.welcome is not None:
            self._send_features(self.welcome)

    @property
    def unacknowledged(self) -> int:
        return len(self._outbox)

    def poll(self, timeout_s: float) -> list[protocol.Message]:
        """Wait up to timeout_s for messages; returns those the caller must act on
        (BLOCK, BLOCK_INFO, END), having handled welcome/ack/heartbeat/error."""
        out, self._early = self._early, []
        out.extend(self._poll_socket(timeout_s))
        return out

    def _live_socket(self) -> zmq.Socket:
        if self._socket is None:
            raise SessionError(f"the connection to {self.endpoint} is closed")
        return self._socket

    def _poll_socket(self, timeout_s: float) -> list[protocol.Message]:
        out = []
        sock = self._live_socket()
        if sock.poll(int(timeout_s * 1000)):
            while sock.poll(0):
                frames = sock.recv_multipart(copy=False)
                self._last_recv = time.monotonic()
                try:
                    msg = protocol.decode(frames)
                except ProtocolError as exc:
                    log.error("dropped a malformed message from the server: %s", exc)
                    continue
                if self._handle(msg):
                    out.append(msg)
        self._keep_alive()
        return out

    def close(self, reason: str = "done") -> None:
        if self._socket is None:
            return
        if not self.ended:
            try:
                self.send(MsgType.BYE, protocol.Bye(reason))
            except zmq.ZMQError:
                pass
        if self._outbox:
            log.warning("closing with %d reports the server never acknowledged", len(self._outbox))
        self._socket.close(linger=500)
        self._socket = None

    # ------------------------------------------------------------ private
    def _connect(self) -> None:
        self._socket = self.context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # no frame above the largest legal one (an image of 8192 x 8192) is taken in
        self._socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        if self.curve is not None:
            secure_client(self._socket, self.curve)
        self._socket.connect(self.endpoint)
        self._last_recv = time.monotonic()
        self._say_hello()

    def _say_hello(self) -> None:
        self._seq += 1
        self._send_frames(protocol.encode(MsgType.HELLO, self.hello, session=self.session, seq=self._seq))
        self._hello_at = time.monotonic()

    def _send_frames(self, frames) -> None:
        try:
            # never block: a DEALER with no live connection (a server not there yet, or one that
            # refused this peer's CURVE handshake) would otherwise hang the caller forever; a report
            # stays in the outbox and a hello is said again on reconnect
            self._live_socket().send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.debug("no connection to %s yet: a message was not queued", self.endpoint)
        self._last_send = time.monotonic()

    def _handle(self, msg: protocol.Message) -> bool:
        if msg.type == MsgType.WELCOME:
            self.welcome = msg.body
            self.session = msg.session
            self.heartbeat_s = msg.body.heartbeat_s
            self.timeout_s = msg.body.peer_timeout_s
            self._backoff = 0.5
            self._send_features(msg.body)
            # resend what the last server never acked, in the session it was made for: a resumed
            # server (same session) takes it; another session's server rejects it, and it is dropped
            for seq, (msg_type, body, images, session) in self._outbox.items():
                self._send_frames(protocol.encode(msg_type, body, session=session or self.session, seq=seq,
                                                  images=images))
            log.info("welcomed by %s as %s (session %s)", self.endpoint, msg.body.peer_id, msg.session)
            return False
        if msg.type == MsgType.ACK:
            self._outbox.pop(msg.body.ref_seq, None)
            return False
        if msg.type == MsgType.ERROR and protocol.HELLO_FIRST in msg.body.reason:
            # a restarted server does not know us: say hello again (reports stay in the outbox).
            # Everything queued before the hello draws the same error: one hello answers them all.
            if self.welcome is None and time.monotonic() - self._hello_at < self.heartbeat_s:
                return False
            log.warning("server at %s does not know this peer; saying hello again", self.endpoint)
            self.welcome = None
            self._say_hello()
            return False
        if msg.type == MsgType.ERROR:
            log.error("server rejected message %d: %s", msg.body.ref_seq, msg.body.reason)
            self._outbox.pop(msg.body.ref_seq, None)  # resending a rejected report cannot help
            return False
        if msg.type == MsgType.HEARTBEAT:
            return False
        if msg.type == MsgType.END:
            self.ended = True
        return True

    def _send_features(self, welcome: protocol.Welcome) -> None:
        """FEATURES on this connection, before anything else after its welcome; not kept in the
        outbox: a new connection gets a new welcome, and says it again."""
        offered = welcome.settings.get("features")
        offered = offered if isinstance(offered, list) else []
        self.taken_up = tuple(f for f in self.accepts if f in offered)
        if self.taken_up:
            self.send(MsgType.FEATURES, protocol.Features(list(self.taken_up)))

    def _keep_alive(self) -> None:
        """Heartbeats, and reconnect once the server has been silent for timeout_s.

        Never sleeps: the presenter polls between flips, and a sleep would freeze
        the screen mid-presentation.  The backoff is a deadline; until it passes,
        the old socket stays open (sends queue on it, nothing blocks)."""
        now = time.monotonic()
        silent = now - self._last_recv
        if self._retry_at is None and silent > self.timeout_s:
            self._retry_at = now + self._backoff
            log.warning("server at %s silent for %.1f s; reconnecting in %.1f s",
                        self.endpoint, silent, self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        elif self._retry_at is not None and silent <= self.timeout_s:
            self._retry_at = None  # it spoke after all
        if self._retry_at is not None:
            if now >= self._retry_at:
                self._retry_at = None
                self.reconnects += 1
                self._live_socket().close(linger=0)
                self._connect()
            return
        if now - self._last_send > self.heartbeat_s:
            self._seq += 1
            self._send_frames(protocol.encode(MsgType.HEARTBEAT, protocol.Heartbeat(),
                                              session=self.session, seq=self._seq))

    def flush(self, timeout_s: float, on_message=None) -> bool:
        """Wait up to timeout_s for every report to be acknowledged; True if all were.

        Messages for the application that arrive meanwhile go to on_message."""
        deadline = time.monotonic() + timeout_s
        while self.unacknowledged and not self.ended:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for msg in self.poll(min(left, 0.05)):
                if on_message is not None:
                    on_message(msg)
        return self.unacknowledged == 0
