"""The peer side of the wire against a hand-held ROUTER: heartbeats, a silent
server, reconnect, and reports kept until acknowledged."""

import time

import zmq

from xdream import protocol
from xdream.peer import PeerConnection
from xdream.protocol import MsgType


def router(ctx):
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:0")
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def recv(sock, timeout_s=5.0):
    assert sock.poll(int(timeout_s * 1000)), "nothing arrived"
    ident, *frames = sock.recv_multipart()
    return ident, protocol.decode(frames)


def welcome(sock, ident, timeout_s=0.6):
    sock.send_multipart([ident, *protocol.encode(MsgType.WELCOME, protocol.Welcome("p-1", 0.1, timeout_s, {}),
                                                 session="s")])


def pump(conn, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        conn.poll(0.02)


def test_heartbeats_reconnect_and_unacked_reports_are_resent(zmq_ctx):
    sock, ep = router(zmq_ctx)
    conn = PeerConnection(ep, "presenter", "pres", context=zmq_ctx)
    ident, hello = recv(sock)
    assert hello.type == MsgType.HELLO and hello.body.name == "pres"
    welcome(sock, ident)
    conn.wait_welcome(5)
    assert conn.session == "s"

    acked = conn.send(MsgType.SHOWN, protocol.Shown(0, "p0", "shown", 1.0, 6), reliable=True)
    lost = conn.send(MsgType.SHOWN, protocol.Shown(0, "p1", "shown", 1.1, 6), reliable=True)
    sock.send_multipart([ident, *protocol.encode(MsgType.ACK, protocol.Ack(acked), session="s")])
    pump(conn, 0.3)
    assert conn.unacknowledged == 1

    # the server goes silent: the peer keeps sending heartbeats, then reconnects and says hello again
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(m.type == MsgType.HELLO for _, m in seen):
        conn.poll(0.02)
        while sock.poll(0):
            seen.append(recv(sock))
    types = [m.type for _, m in seen]
    assert MsgType.HEARTBEAT in types and MsgType.HELLO in types
    new_ident = [i for i, m in seen if m.type == MsgType.HELLO][-1]
    welcome(sock, new_ident, timeout_s=5.0)
    resent = None
    deadline = time.monotonic() + 5
    while resent is None and time.monotonic() < deadline:
        conn.poll(0.02)
        if sock.poll(0):
            _, msg = recv(sock)
            if msg.type == MsgType.SHOWN:
                resent = msg
    assert resent is not None and resent.seq == lost and resent.body.pid == "p1"
    conn.close()
