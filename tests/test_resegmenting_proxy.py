"""The re-segmenting proxy: the same bytes come out, in other pieces."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np

from tests.resegmenting_proxy import DOWN, UP, ResegmentingProxy


def _server():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def _read_all(sock: socket.socket, n: int, limit_s: float = 10.0) -> tuple[bytes, int]:
    """n bytes, and in how many reads they came."""
    data, reads = b"", 0
    sock.settimeout(limit_s)
    while len(data) < n:
        got = sock.recv(1 << 20)
        if not got:
            break
        data += got
        reads += 1
    return data, reads


def test_bytes_pass_both_ways_unchanged_in_other_pieces():
    listener = _server()
    proxy = ResegmentingProxy(listener.getsockname(), seed=1)
    payload = np.random.default_rng(0).bytes(300_000)
    try:
        client = socket.create_connection(("127.0.0.1", proxy.port))
        server, _ = listener.accept()
        with client, server:
            threading.Thread(target=lambda: [server.sendall(payload[i:i + 4096])
                                             for i in range(0, len(payload), 4096)], daemon=True).start()
            down, reads = _read_all(client, len(payload))
            assert down == payload and reads > 10
            client.sendall(b"hello;" * 1000)
            up, _ = _read_all(server, 6000)
            assert up == b"hello;" * 1000
            sizes = proxy.sizes[DOWN]                      # writes of 4096 bytes: cut, and joined
            assert min(sizes) < 4096 < max(sizes) and sum(sizes) == len(payload)
            assert proxy.bytes[DOWN] == len(payload) and proxy.bytes[UP] == 6000
            server.close()
            assert client.recv(10) == b""                    # a close passes through
    finally:
        proxy.close()
        listener.close()


def test_split_only_after_never_cuts_inside_a_command():
    listener = _server()
    proxy = ResegmentingProxy(listener.getsockname(), seed=2, split_only_after={UP: b";"})
    try:
        client = socket.create_connection(("127.0.0.1", proxy.port))
        server, _ = listener.accept()
        with client, server:
            text = "".join(f"set a-{i:03d}.tcpdataoutputenabledspike true;" for i in range(200)).encode()
            client.sendall(text)
            server.settimeout(10)
            reads = []
            got = b""
            while len(got) < len(text):
                piece = server.recv(1 << 16)
                reads.append(piece)
                got += piece
                time.sleep(0.001)
            assert got == text and all(r.endswith(b";") for r in reads)
            assert proxy.pieces[UP] > 1
    finally:
        proxy.close()
        listener.close()


def test_a_target_that_does_not_listen_gets_the_client_closed():
    s = _server()
    port = s.getsockname()[1]
    s.close()
    proxy = ResegmentingProxy(("127.0.0.1", port), seed=3, connect_patience_s=0.2)
    try:
        client = socket.create_connection(("127.0.0.1", proxy.port))
        client.settimeout(5)
        with client:
            try:
                assert client.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        proxy.close()
