"""What the status stream costs the session loop: generation time without a status stream,
with one and no subscriber, and with a subscriber that never reads (docs/benchmarks.md).

    python -m benchmarks.status_overhead [--quick] [--generations N] [--rounds R]

The real server (server/app.py) runs in this process against two hand-written peers on real
loopback sockets that answer every presentation at once (shown, then counts), so the
generation time is the server's own work: generate, journal, send, score, checkpoint, and the
status hooks.  Modes alternate round by round (A B C A B C ...) so that a machine's drift
spreads over all three; the figure is the median generation time of each mode.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import zmq
import zmq.asyncio

from server.app import EvolutionServer
from xdream import config as config_mod
from xdream import protocol, status_client
from xdream.protocol import MsgType

MODES = ("no status stream", "status, no subscriber", "status, a subscriber that never reads")


def _config(out: Path, generations: int, status: bool):
    cfg = config_mod.load(None)
    cfg.session.out_dir = str(out)
    cfg.session.generations = generations
    cfg.threads = cfg.threads[:2]
    for t in cfg.threads:
        t.optimizer.population = 20
    cfg.reference.count = 2
    cfg.presentation.image_size_px = 64
    cfg.network.heartbeat_s = 0.5
    cfg.network.status_bind = "tcp://127.0.0.1:0" if status else ""
    return cfg.validate()


async def _peer(ctx, endpoint: str, role: str, stop: asyncio.Event) -> None:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    seq = 0
    session = ""

    async def send(t, body):
        nonlocal seq
        seq += 1
        await sock.send_multipart(protocol.encode(t, body, session=session, seq=seq))

    await send(MsgType.HELLO, protocol.Hello(role, role, 2 if role == "recorder" else 0))
    while not stop.is_set():
        if not await sock.poll(100):
            continue
        msg = protocol.decode(await sock.recv_multipart())
        if msg.type == MsgType.WELCOME:
            session = msg.session
        elif msg.type == MsgType.BLOCK and role == "presenter":
            for p in msg.body.presentations:
                await send(MsgType.SHOWN, protocol.Shown(msg.body.block_id, p.pid, "shown", 1.0, 6))
        elif msg.type == MsgType.BLOCK_INFO and role == "recorder":
            for i, p in enumerate(msg.body.presentations):
                await send(MsgType.COUNTS, protocol.Counts(msg.body.block_id, p.pid, "ok", [float(i % 7), 1.0],
                                                           [0.0, 0.0]))
        elif msg.type == MsgType.END:
            break
    sock.close(0)


def _timed(fn, spent: list[float]):
    def call(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            spent[0] += time.perf_counter() - t
    return call


async def _session(out: Path, generations: int, mode: int) -> tuple[list[float], float]:
    cfg = _config(out, generations, status=mode > 0)
    server = EvolutionServer(cfg, out / f"s{time.monotonic_ns()}")
    hooks = [0.0]   # seconds the loop spent in the status hooks (emit, generation)
    server.status.emit = _timed(server.status.emit, hooks)             # type: ignore[method-assign]
    server.status.generation = _timed(server.status.generation, hooks)  # type: ignore[method-assign]
    ctx = zmq.asyncio.Context()
    sync_ctx = zmq.Context()
    stamps: list[float] = []
    endpoint = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    run = asyncio.create_task(server.run(on_endpoint=endpoint.set_result,
                                         on_generation=lambda g, r: stamps.append(time.perf_counter())))
    slow = None
    try:
        ep = await endpoint
        if mode == 2:   # a subscriber that never reads: its queue fills, then the PUB drops for it
            reply = await asyncio.to_thread(status_client.request, sync_ctx, server.status.endpoint, "snapshot")
            slow = sync_ctx.socket(zmq.SUB)
            slow.setsockopt(zmq.RCVHWM, 1)
            slow.setsockopt(zmq.RCVBUF, 4096)
            slow.setsockopt(zmq.SUBSCRIBE, b"")
            slow.connect(status_client.pub_endpoint(server.status.endpoint, reply))
        peers = [asyncio.create_task(_peer(ctx, ep, role, stop)) for role in ("recorder", "presenter")]
        await run
        stop.set()
        await asyncio.gather(*peers)
    finally:
        if slow is not None:
            slow.close(0)
        ctx.destroy(linger=0)
        sync_ctx.destroy(linger=0)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]   # the first generation (warm-up) is left out
    return gaps, hooks[0] / len(stamps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 4 generations (about a minute)")
    ap.add_argument("--generations", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    generations, rounds = (4, 2) if args.quick else (args.generations, args.rounds)
    times: dict[int, list[float]] = {m: [] for m in range(len(MODES))}
    hook_s: dict[int, list[float]] = {m: [] for m in range(len(MODES))}
    with tempfile.TemporaryDirectory(prefix="xdream-status-bench-") as tmp:
        for _ in range(rounds):
            for mode in range(len(MODES)):
                gaps, hooks = asyncio.run(_session(Path(tmp), generations, mode))
                times[mode] += gaps
                hook_s[mode].append(hooks)
    base = statistics.median(times[0])
    print(f"{rounds} rounds x {generations} generations (2 threads x 20 images + 2 references, 64 px)")
    for mode, name in enumerate(MODES):
        med = statistics.median(times[mode])
        on_loop = statistics.mean(hook_s[mode])
        print(f"{name:40s} median {med * 1000:7.1f} ms per generation  ({(med / base - 1) * 100:+5.1f} %)"
              f"  n={len(times[mode])};  on the loop in status hooks {on_loop * 1000:6.3f} ms per generation"
              f" ({on_loop / med * 100:.3f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
