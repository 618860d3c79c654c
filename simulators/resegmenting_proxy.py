"""A TCP proxy on 127.0.0.1 that re-cuts the byte stream, for tests of byte-stream adapters.

TCP keeps the order of bytes, not the boundaries of writes: what one side writes
in one call may reach the other side's reads cut in two, or joined with the next
write.  On loopback the kernel mostly hands writes over whole, so an adapter that
treats one recv() as one message passes every test here and fails on a real
network.  This proxy sits between an adapter and a simulated peer and, in each
direction, forwards the bytes in pieces of random size (log-uniform from 1 byte
to `max_piece`, 64 KiB by default, seeded): a piece may end inside a write or
join several writes.  Between two pieces it pauses `gap_s`, so that a reader
waiting on the socket sees them apart; when fewer bytes are buffered than the
piece it drew, it waits `hold_s` for more (a join) before sending what it has.

`split_only_after`, per direction, keeps pieces from ending anywhere but right
after that byte (or at the end of a burst, when nothing more came for `hold_s`).
Use it only where the real receiver itself depends on read boundaries and no
sender can prevent that (Intan RHX parses each read of its command port whole,
so a command cut in two is two broken commands in RHX too): there, a piece
still joins writes and splits between commands, but never inside one.

    proxy = ResegmentingProxy(("127.0.0.1", peer_port), seed=3)
    adapter connects to ("127.0.0.1", proxy.port)
    ...
    proxy.close()

Each accepted client gets its own connection to the target (the proxy keeps
listening, so an adapter can reconnect); if the target refuses for
`connect_patience_s`, the client is closed at once.  When one side closes, the
other sees the close after the bytes already sent.  Any TCP adapter's tests can
use it: see tests/test_intan.py's `route` fixture.

`resegment(peer, options, seed)` puts one proxy in front of each TCP port a
simulated wire peer declares (its `TCP_PORTS`), and is what `SimulatedSource`
does when given a seed (or `XDREAM_RESEGMENT_SEED` in the environment, which
reaches the recorder process of `xdream dry-run`): a test-facing hook, so that
the dry runs and the adapter compliance suite also run through it.  It lives in
simulators/ for that reason (tests/resegmenting_proxy.py re-exports it).
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import struct
import threading
import time

import numpy as np

UP, DOWN = "up", "down"          # client -> target, target -> client
ENV_SEED = "XDREAM_RESEGMENT_SEED"   # set: simulated TCP peers are reached through proxies of this seed


class ResegmentingProxy:
    def __init__(self, target: tuple[str, int], seed: int, *, max_piece: int = 1 << 16,
                 gap_s: float = 0.0005, hold_s: float = 0.002, connect_patience_s: float = 2.0,
                 split_only_after: dict[str, bytes] | None = None):
        self.target = target
        self.seed = seed
        self.max_piece = max_piece
        self.gap_s = gap_s
        self.hold_s = hold_s
        self.connect_patience_s = connect_patience_s
        self.split_only_after = split_only_after or {}
        self.pieces = {UP: 0, DOWN: 0}         # pieces forwarded, for tests that want to see cutting happen
        self.bytes = {UP: 0, DOWN: 0}
        self.sizes: dict[str, list[int]] = {UP: [], DOWN: []}     # each piece's length
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._closed = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port: int = self._listener.getsockname()[1]
        self._connections = 0
        threading.Thread(target=self._accept_loop, daemon=True, name=f"reseg-accept-{self.port}").start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    # -- connections -----------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._connections += 1
            threading.Thread(target=self._connect, args=(client, self._connections), daemon=True,
                             name=f"reseg-conn-{self.port}-{self._connections}").start()

    def _connect(self, client: socket.socket, index: int) -> None:
        self._track(client)
        deadline = time.monotonic() + self.connect_patience_s
        server = None
        while server is None and not self._closed.is_set():
            try:
                server = socket.create_connection(self.target, timeout=1.0)
            except OSError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)       # the target may start listening a moment later (RHX does)
        if server is None:
            # like a refusal, as near as an accepted connection can come: closed with a reset
            with contextlib.suppress(OSError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
            return
        self._track(server)
        try:
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(None)
        except OSError:        # close() came first
            return
        done = threading.Barrier(2, action=lambda: [s.close() for s in (client, server)])
        for direction, src, dst in ((UP, client, server), (DOWN, server, client)):
            rng = np.random.default_rng([self.seed, index, direction == UP])
            threading.Thread(target=self._pump, args=(direction, src, dst, rng, done), daemon=True,
                             name=f"reseg-{direction}-{self.port}-{index}").start()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.append(s)

    # -- one direction -----------------------------------------------------------------------
    def _piece(self, rng: np.random.Generator) -> int:
        return min(self.max_piece, max(1, int(math.exp(rng.uniform(0.0, math.log(self.max_piece + 1))))))

    def _pump(self, direction: str, src: socket.socket, dst: socket.socket, rng: np.random.Generator,
              done: threading.Barrier) -> None:
        buf = bytearray()
        eof = need_more = False
        delimiter = self.split_only_after.get(direction)
        try:
            while not (eof and not buf):
                want = self._piece(rng)
                burst_ended = eof
                while (len(buf) < want or need_more) and not eof:
                    ready, _, _ = select.select([src], [], [], self.hold_s)
                    if not ready:
                        burst_ended = True
                        if buf:
                            break
                        continue        # nothing at all yet: keep waiting
                    try:
                        data = src.recv(1 << 16)
                    except OSError:
                        data = b""
                    if not data:
                        eof = burst_ended = True
                    buf += data
                    need_more = False
                cut = self._cut(buf, want, delimiter, burst_ended)
                need_more = cut == 0    # a command not yet whole: read the rest first
                if need_more:
                    continue
                with self._lock:        # counted first, so that a reader who has the bytes sees them counted
                    self.pieces[direction] += 1
                    self.bytes[direction] += cut
                    self.sizes[direction].append(cut)
                dst.sendall(bytes(buf[:cut]))
                del buf[:cut]
                if buf and self.gap_s:
                    time.sleep(self.gap_s)
        except (OSError, ValueError):      # a socket closed under us (close(), or the other side)
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with contextlib.suppress(threading.BrokenBarrierError):
                done.wait(timeout=30)

    @staticmethod
    def _cut(buf: bytearray, want: int, delimiter: bytes | None, burst_ended: bool) -> int:
        """Where this piece ends: `want` bytes in, or with a delimiter only right after one."""
        if delimiter is None:
            return min(want, len(buf))
        before = buf.rfind(delimiter, 0, min(want, len(buf)))
        if before >= 0:
            return before + 1
        after = buf.find(delimiter, want)
        if after >= 0:
            return after + 1
        return len(buf) if burst_ended else 0


def resegment(peer, options: dict[str, str], seed: int) -> tuple[dict[str, str], list[ResegmentingProxy]]:
    """`options` (the adapter's, as peer.adapter_options() gives them) with each TCP port of `peer`
    replaced by a proxy's; the proxies, for the caller to close.  A peer declares its ports as
    TCP_PORTS: {option name: None, or the byte after which alone its receiver may see a read end}."""
    ports = getattr(peer, "TCP_PORTS", None)
    if not ports:
        raise ValueError(f"{type(peer).__name__} declares no TCP byte-stream port to re-segment")
    host = options.get("host", "127.0.0.1")
    options = dict(options)
    proxies: list[ResegmentingProxy] = []
    try:
        for key, delimiter in ports.items():
            proxy = ResegmentingProxy((host, int(options[key])), seed + len(proxies), connect_patience_s=1.0,
                                      split_only_after={UP: delimiter} if delimiter is not None else None)
            proxies.append(proxy)
            options[key] = str(proxy.port)
    except BaseException:
        for proxy in proxies:
            proxy.close()
        raise
    return options, proxies
