"""The presenter peer: blocks in, frames on screen, one report per presentation.

The frame loop is blocking (PsychoPy's is), so the connection is polled with
a zero timeout between flips; between blocks it waits on the socket.
"""

from __future__ import annotations

import collections
import logging

import zmq

from xdream import protocol
from xdream.peer import PeerConnection
from xdream.protocol import MsgType

log = logging.getLogger(__name__)


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


class Presenter:
    """Shows blocks on an already open display.

    The display is opened before the presenter says hello: opening a PsychoPy
    window and measuring its refresh blocks for seconds, and a peer that is
    silent that long after its welcome would be declared lost."""

    def __init__(self, conn: PeerConnection, display, tap: ScreenTap | None = None):
        self.conn = conn
        self.display = display
        self.tap = tap
        self.queue: collections.deque[protocol.Message] = collections.deque()
        self.shown = 0

    def run(self, welcome_timeout_s: float = 60.0) -> int:
        """Present blocks until the server ends the session; returns presentations shown."""
        try:
            settings = self.conn.wait_welcome(welcome_timeout_s).settings
            period = self.display.frame_period
            expected = settings.get("frame_rate_hz")
            if expected and abs(expected - 1.0 / period) > 0.01 * expected:
                log.warning("the server's config expects a %.1f Hz display; this one runs at %.1f Hz",
                            expected, 1.0 / period)
            self.on_frames = max(1, frames_for(settings["on_ms"], period))
            self.off_frames = frames_for(settings["off_ms"], period)
            log.info("presenting %d frames on, %d off (%.2f ms a frame)", self.on_frames, self.off_frames,
                     period * 1000)
            while not self.conn.ended:
                self._take(self.conn.poll(0.05))
                if self.queue:
                    self._present_block(self.queue.popleft())
        finally:
            self.display.close()
            if self.tap:
                self.tap.close()
            self.conn.close()
        return self.shown

    def _take(self, messages) -> None:
        for msg in messages:
            if msg.type == MsgType.BLOCK:
                self.queue.append(msg)
            elif msg.type != MsgType.END:
                log.warning("presenter ignores %s", msg.type.value)

    def _present_block(self, msg: protocol.Message) -> None:
        block: protocol.Block = msg.body
        display = self.display
        handles = display.prepare(msg.images())  # textures ready before the first flip
        log.info("block %d: %d presentations", block.block_id, len(block.presentations))
        for spec, handle in zip(block.presentations, handles):
            if self.conn.ended:
                break
            onset, frame_index, frame = None, 0, None
            display.dropped_frames()
            for f in range(self.on_frames):
                display.draw(handle)
                if f == 0 and self.tap:
                    frame = display.capture()
                t = display.flip()
                if f == 0:
                    onset, frame_index = t, display.frame_index
                    if self.tap:
                        self.tap.send(spec.code, frame_index, display.frame_period, onset, frame)
                self._take(self.conn.poll(0))
            for _ in range(self.off_frames):
                display.draw(None)
                display.flip()
                self._take(self.conn.poll(0))
            report = protocol.Shown(block.block_id, spec.pid, "shown", onset, self.on_frames,
                                    display.dropped_frames())
            self.conn.send(MsgType.SHOWN, report, reliable=True)
            self.shown += 1
        if self.tap:  # the screen is gray from here on: lets a simulated rig's clock run on
            self.tap.send(0, display.frame_index, display.frame_period, 0.0)
