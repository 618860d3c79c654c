"""The real presenter process against a test-held server socket and screen tap.

In window mode the frames come from PsychoPy's back buffer under Xvfb: what
the simulated neuron will see is what PsychoPy drew, so these tests catch
colour-order, orientation, position and scaling bugs."""

import subprocess
import sys

import numpy as np
import pytest
import zmq

from xdream import protocol
from xdream.protocol import MsgType

SETTINGS = {"on_ms": 50.0, "off_ms": 16.7, "image_size_px": 40, "window_size": [160, 120],
            "frame_rate_hz": 60.0, "max_event_code": 255, "shuffle": True}


def asymmetric_image(h=40, w=60, seed=0):
    """Top half red, a blue strip on the left, a green square bottom-right, noise elsewhere."""
    img = np.random.default_rng(seed).integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    img[: h // 2, :, 0] = 255
    img[:, :8, 2] = 255
    img[-10:, -10:] = (0, 255, 0)
    return img


class FakeServer:
    def __init__(self):
        self.ctx = zmq.Context()
        self.ctx.linger = 0   # every socket: a failed test's context never blocks in term()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.bind("tcp://127.0.0.1:0")
        self.tap = self.ctx.socket(zmq.PULL)
        self.tap.bind("tcp://127.0.0.1:0")
        self.seq = 0
        self.peer = None

    def endpoint(self, sock):
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, msg_type, body, images=()):
        self.seq += 1
        self.router.send_multipart([self.peer, *protocol.encode(msg_type, body, session="t", seq=self.seq,
                                                                images=images)])

    def recv(self, sock, timeout_s=60):
        assert sock.poll(int(timeout_s * 1000)), "nothing arrived in time"
        frames = sock.recv_multipart()
        if sock is self.router:
            self.peer = frames[0]
            frames = frames[1:]
        return protocol.decode(frames)

    def recv_type(self, msg_type, timeout_s=60):
        while True:
            msg = self.recv(self.router, timeout_s)
            if msg.type == msg_type:
                return msg

    def close(self):
        self.ctx.destroy(linger=0)


def run_presenter(extra_args, log_dir, env=None):
    srv = FakeServer()
    cmd = [sys.executable, "-m", "xdream.cli", "present", "--server", srv.endpoint(srv.router),
           "--screen-tap", srv.endpoint(srv.tap), "--window-size", "160", "120", "--log-dir", str(log_dir),
           *extra_args]
    proc = subprocess.Popen(cmd, env=env)
    try:
        hello = srv.recv_type(MsgType.HELLO)
        assert hello.body.role == "presenter"
        srv.send(MsgType.WELCOME, protocol.Welcome("presenter-1", 1.0, 10.0, SETTINGS))
        images = [asymmetric_image(seed=0), asymmetric_image(seed=1)[::-1].copy()]
        specs = [protocol.PresentationSpec(f"b0000-{i:03d}", 10 + i, f"img{i}", 40, 60) for i in range(2)]
        srv.send(MsgType.BLOCK, protocol.Block(0, 0, specs), images=images)
        frames = [srv.recv(srv.tap) for _ in range(3)]
        reports = [srv.recv_type(MsgType.SHOWN) for _ in range(2)]
        for r in reports:
            srv.send(MsgType.ACK, protocol.Ack(r.seq))
        srv.send(MsgType.END, protocol.End("test over"))
        assert proc.wait(timeout=30) == 0
        return images, frames, reports
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.close()


def check_frames_and_reports(images, frames, reports):
    onsets, idle = frames[:2], frames[2]
    assert [f.body.code for f in onsets] == [10, 11]
    assert idle.body.code == 0 and idle.frames == ()   # the screen went idle after the block
    for frame, image in zip(onsets, images):
        drawn = frame.images()[0]
        assert drawn.shape == (120, 160, 3)                       # the whole window, not the array
        top, left = (120 - 40) // 2, (160 - 60) // 2
        np.testing.assert_array_equal(drawn[top:top + 40, left:left + 60], image)  # pixel for pixel
        surround = drawn.copy()
        surround[top:top + 40, left:left + 60] = 128
        assert (surround == 128).all()                            # gray everywhere else
    # durations in frames of the configured 60 Hz: 50 ms on = 3 frames, 16.7 ms off = 1 frame
    assert [r.body.frames for r in reports] == [3, 3]
    assert onsets[1].body.frame_index - onsets[0].body.frame_index == 4
    assert [r.body.pid for r in reports] == ["b0000-000", "b0000-001"]
    assert all(r.body.status == "shown" for r in reports)
    assert reports[1].body.onset > reports[0].body.onset


def test_headless_presenter_frames_and_reports(tmp_path):
    check_frames_and_reports(*run_presenter(["--headless"], tmp_path))


@pytest.mark.window
def test_psychopy_window_draws_the_image_as_sent(display, tmp_path):
    check_frames_and_reports(*run_presenter([], tmp_path))
