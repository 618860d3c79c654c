"""Throughput of the rig adapters: how many times faster than real time each
one decodes a 384-channel rig through its real wire format on loopback.

For each rig with a simulated peer (simulators/wire_peers.py), the peer is fed
a synthetic rig -- Poisson spikes at 50 Hz on every channel and an event code
every 100 ms, in 50 ms chunks, every time a sample number of its 30 kHz clock
as a real rig's are (RigEvents with `rate`) -- as fast as the adapter takes it (never more
than `window_s` of rig time ahead of what the adapter has decoded, counted in
spikes, so no socket buffer overflows), and the adapter is polled until every
spike and code has come out.  A rig counts only if every event arrived: spikes
per channel and the codes in order are checked.

Each rig runs twice:
- peer "thread": the peer encodes and sends from a thread of the adapter's own
  process, so the two share one GIL (the figure this benchmark always gave);
- peer "process": the peer runs in a process of its own, as a rig's software
  does (the Open Ephys GUI, RHX, an LSL app); a peer that can encode ahead
  (`encode`/`send_encoded`: the Open Ephys GUI, whose encoding is C++ on a real
  rig) does so before the clock starts, and only its sending is timed.

Figures: rig seconds per wall second until every event was out ("x real
time"; codes come last, as adapters hold each one until its window is whole),
the same until the last spike ("x spikes"), rig seconds per CPU second spent in
the adapter's poll ("x CPU"), and, with the peer in its own process, the CPU of
the adapter's whole process (libzmq's I/O thread included).  The peer's CPU is
reported apart.  Not a test: figures go to docs/benchmarks.md.

    xdream bench adapters [--seconds 20] [--rigs openephys,intan,lsl] [--json]
    python -m benchmarks.adapters
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import threading
import time
from fractions import Fraction

import numpy as np

from recording_adapters.events import RigEvents

log = logging.getLogger(__name__)

CHANNELS = 384
RATE_HZ = 50.0
CODE_EVERY_S = 0.1
CHUNK_S = 0.05
SAMPLE_HZ = 30000
TICKS = Fraction(SAMPLE_HZ)             # the rig's events are sample numbers of this rate
CHUNK = round(CHUNK_S * SAMPLE_HZ)      # ticks per chunk
CODE_EVERY = round(CODE_EVERY_S * SAMPLE_HZ)
TAIL_S = 1.0   # spikes without codes after the last code: adapters hold a code until its window is past
FLUSH_S = 1.0  # then empty chunks: an adapter may keep the stream's last moments until time moves on


def synthetic_rig(start: int, seconds: float, tail_s: float = TAIL_S, channels: int = CHANNELS,
                  seed: int = 0) -> list[RigEvents]:
    """The rig's stream from sample `start` in chunks, every time a sample number (tick of SAMPLE_HZ):
    sorted spikes, a code every 100 ms for `seconds`, then `tail_s` of spikes alone; each chunk's
    watermark at its end."""
    rng = np.random.default_rng([seed, int(start)])
    n_codes = int(round(seconds / CODE_EVERY_S))
    chunks = []
    for i in range(int(round((seconds + tail_s) / CHUNK_S))):
        t0, t1 = start + i * CHUNK, start + (i + 1) * CHUNK
        n = rng.poisson(channels * RATE_HZ * CHUNK_S)
        # at most one spike per channel and sample (a neuron's refractory period)
        samples = rng.integers(t0, t1, n)
        chans = rng.integers(0, channels, n)
        pairs = np.unique(samples * channels + chans)     # sorted by sample, then channel
        samples, chans = pairs // channels, pairs % channels
        codes = [(start + k * CODE_EVERY, k % 255 + 1) for k in range(n_codes)
                 if t0 <= start + k * CODE_EVERY < t1]
        chunks.append(RigEvents(codes=codes, spike_times=samples.astype(np.int64),
                                spike_channels=chans.astype(np.int64), watermark=t1, rate=TICKS))
    return chunks


def _end(chunk: RigEvents) -> int:
    """A chunk's watermark: the sample its successor starts at."""
    assert chunk.watermark is not None
    return int(chunk.watermark)


def warm_up(peer, source, limit_s: float = 30.0) -> int:
    """Feed spikes (no codes) at real-time pace until the adapter delivers one: connections made,
    acquisition started.  Returns the sample the measured stream starts at."""
    t = 0
    deadline = time.monotonic() + limit_s
    while not getattr(peer, "running", True) and time.monotonic() < deadline:
        time.sleep(0.005)  # a peer that a client must start (Intan RHX): data before would not exist
    flowing = 0
    while time.monotonic() < deadline:
        (chunk,) = synthetic_rig(t, 0.0, CHUNK_S, seed=1)
        peer.send(chunk)
        t = _end(chunk)
        ev = source.poll(CHUNK_S)
        flowing = flowing + 1 if len(ev.spike_times) else 0
        if flowing >= 5:  # the stream is established; let what is in flight come out
            for k in range(1, 11):  # time moves on without spikes: a rig sending whole blocks flushes
                peer.send(RigEvents(watermark=t + k * CHUNK, rate=TICKS))
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < 0.3 and time.monotonic() < deadline:
                if len(source.poll(0.01).spike_times):
                    quiet_since = time.monotonic()
            return t + 10 * CHUNK  # a clean margin past anything sent so far
    raise TimeoutError(f"the adapter delivered no spike within {limit_s:.0f} s of warm-up")


def bench_rig(name: str, seconds: float, window_s: float = 0.5, timeout_s: float | None = None,
              peer_process: bool = False) -> dict:
    """One rig: the peer sends from a thread of this process (sharing its GIL with the adapter) or,
    with `peer_process`, from a process of its own, as a real rig's software does."""
    from recording_adapters.sources import build_source

    feed = _ProcessFeed(name, seconds, window_s) if peer_process else _ThreadFeed(name, seconds, window_s)
    source = None
    try:
        source = build_source(name, feed.adapter_options())
        chunks = feed.warm_up(source)
        sent_spikes = np.bincount(np.concatenate([c.spike_channels for c in chunks]), minlength=CHANNELS)
        sent_codes = [code for c in chunks for code in c.codes]
        got_spikes = np.zeros(CHANNELS, dtype=np.int64)
        got_codes: list[tuple[float, int]] = []
        limit = timeout_s or 60.0 + 5 * seconds
        start = time.perf_counter()
        poll_cpu = 0.0
        process_cpu = time.process_time()  # every thread here, libzmq's I/O thread included
        spikes_done = None  # wall time when the last spike came out (codes may be held longer)
        feed.start()
        while time.perf_counter() - start < limit and not feed.error:
            c0 = time.thread_time()
            ev = source.poll(0.005)
            poll_cpu += time.thread_time() - c0
            if len(ev.spike_channels):
                got_spikes += np.bincount(ev.spike_channels, minlength=CHANNELS)[:CHANNELS]
                feed.decoded(int(got_spikes.sum()))
                if spikes_done is None and got_spikes.sum() >= sent_spikes.sum():
                    spikes_done = time.perf_counter() - start
            got_codes += ev.codes
            if got_spikes.sum() >= sent_spikes.sum() and len(got_codes) >= len(sent_codes):
                break
        wall = time.perf_counter() - start
        process_cpu = time.process_time() - process_cpu
        peer_cpu = feed.finish()
        complete = bool(np.array_equal(got_spikes, sent_spikes)) and [c for _, c in got_codes] == \
            [c for _, c in sent_codes]
        rig_s = seconds + TAIL_S
        return {"rig": name, "peer": "process" if peer_process else "thread",
                "rig_seconds": rig_s, "wall_seconds": round(wall, 3),
                "x_real_time": round(rig_s / wall, 1) if complete else None,
                "spikes_wall_seconds": round(spikes_done, 3) if spikes_done else None,
                "x_real_time_spikes": round(rig_s / spikes_done, 1) if spikes_done else None,
                "adapter_cpu_s": round(poll_cpu, 3), "peer_cpu_s": round(peer_cpu, 3),
                # with the peer in its own process, this process's CPU is the adapter's whole cost
                "adapter_process_cpu_s": round(process_cpu, 3) if peer_process else None,
                "x_real_time_adapter_cpu": round(rig_s / poll_cpu, 1) if complete and poll_cpu > 0 else None,
                "spikes_sent": int(sent_spikes.sum()), "spikes_decoded": int(got_spikes.sum()),
                "codes_sent": len(sent_codes), "codes_decoded": len(got_codes), "complete": complete,
                "error": feed.error[0] if feed.error else None}
    finally:
        if source is not None:
            source.close()
        feed.close()


def _send_paced(peer, chunks: list[RigEvents], window_s: float, decoded, error: list,
                encoded: list | None = None) -> None:
    """Send the measured chunks, never more than window_s of rig time ahead of what the adapter has
    decoded (counted in spikes: an adapter may report times in its own clock, e.g. LSL's
    local_clock, so nothing here compares times across the wire), then FLUSH_S of empty chunks.
    `encoded`: each chunk's messages, encoded beforehand by the peer (peer.send_encoded sends them)."""
    sent_before = np.cumsum([0] + [len(c.spike_times) for c in chunks])
    ahead = int(round(window_s / CHUNK_S))
    for i, chunk in enumerate(chunks):
        while decoded() < sent_before[max(0, i - ahead)] and not error:
            time.sleep(0.0005)
        peer.send_encoded(encoded[i]) if encoded is not None else peer.send(chunk)
    if encoded is not None:
        peer.send_encoded(encoded[-1])
    else:
        for chunk in _flush_chunks(chunks):
            peer.send(chunk)


def _flush_chunks(chunks: list[RigEvents]) -> list[RigEvents]:
    end = _end(chunks[-1])
    return [RigEvents(watermark=end + (i + 1) * CHUNK, rate=TICKS) for i in range(int(round(FLUSH_S / CHUNK_S)))]


class _ThreadFeed:
    """The peer on a thread of this process: its encoding competes with the adapter for the GIL."""

    def __init__(self, name: str, seconds: float, window_s: float):
        from simulators.wire_peers import start_peer

        self.peer = start_peer(name, CHANNELS)
        self.seconds, self.window_s = seconds, window_s
        self.error: list[str] = []
        self._decoded = 0
        self._cpu = 0.0
        self._thread = None

    def adapter_options(self) -> dict[str, str]:
        return self.peer.adapter_options()

    def warm_up(self, source) -> list[RigEvents]:
        self.chunks = synthetic_rig(warm_up(self.peer, source), self.seconds)
        return self.chunks

    def decoded(self, n: int) -> None:
        self._decoded = n

    def start(self) -> None:
        def send() -> None:
            c0 = time.thread_time()
            try:
                _send_paced(self.peer, self.chunks, self.window_s, lambda: self._decoded, self.error)
            except BaseException as exc:  # reported: a dead sender is a failed run
                self.error.append(repr(exc))
            self._cpu = time.thread_time() - c0

        self._thread = threading.Thread(target=send, daemon=True)
        self._thread.start()

    def finish(self) -> float:
        if self._thread is not None:
            self._thread.join(5)
        return self._cpu

    def close(self) -> None:
        self.peer.close()


def _peer_process(name: str, seconds: float, window_s: float, conn, decoded) -> None:
    """A peer process: warm-up chunks at real-time pace until told the stream flows, then the
    measured stream paced by `decoded` (shared with the adapter's process); returns its CPU time."""
    from simulators.wire_peers import start_peer

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    peer = start_peer(name, CHANNELS)
    error: list = []
    try:
        conn.send(peer.adapter_options())
        deadline = time.monotonic() + 30.0
        while not getattr(peer, "running", True) and time.monotonic() < deadline:
            time.sleep(0.005)  # a peer that a client must start (Intan RHX)
        t = 0
        while not conn.poll(0):  # the adapter says when spikes flow
            (chunk,) = synthetic_rig(t, 0.0, CHUNK_S, seed=1)
            peer.send(chunk)
            t = _end(chunk)
            time.sleep(CHUNK_S)
        conn.recv()
        for k in range(1, 11):  # time moves on without spikes: a rig sending whole blocks flushes
            peer.send(RigEvents(watermark=t + k * CHUNK, rate=TICKS))
        begin = t + 10 * CHUNK
        chunks = synthetic_rig(begin, seconds)
        encoded = None
        if hasattr(peer, "encode"):  # encode ahead: the real rig's encoder is native code, not timed here
            encoded = [peer.encode(c) for c in chunks]
            encoded.append([m for c in _flush_chunks(chunks) for m in peer.encode(c)])
        conn.send(begin)
        conn.recv()  # go
        c0 = time.process_time()
        _send_paced(peer, chunks, window_s, lambda: decoded.value, error, encoded)
        conn.send(("done", time.process_time() - c0))
        conn.poll(60.0)  # keep the peer's sockets open until the adapter has finished
    except BaseException as exc:
        conn.send(("error", repr(exc)))
    finally:
        peer.close()


class _ProcessFeed:
    """The peer in a process of its own, as a real rig's software is (the GUI, RHX, an LSL app):
    the adapter's figures are then its own, not shared with the encoder's GIL."""

    def __init__(self, name: str, seconds: float, window_s: float):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no fork: this process holds ZeroMQ contexts and threads
        self._conn, child = ctx.Pipe()
        self._decoded = ctx.RawValue("q", 0)
        self.seconds = seconds
        self._errors: list[str] = []
        self._result = None  # ("done", peer CPU s) once the peer has sent everything
        self._proc = ctx.Process(target=_peer_process, args=(name, seconds, window_s, child, self._decoded),
                                 daemon=True)
        self._proc.start()

    def _recv(self, timeout_s: float = 60.0):
        if not self._conn.poll(timeout_s):
            raise TimeoutError(f"the peer process said nothing for {timeout_s:.0f} s")
        msg = self._conn.recv()
        if isinstance(msg, tuple) and msg[0] == "error":
            raise RuntimeError(f"peer process: {msg[1]}")
        return msg

    def adapter_options(self) -> dict[str, str]:
        return self._recv()

    def warm_up(self, source, limit_s: float = 30.0) -> list[RigEvents]:
        deadline = time.monotonic() + limit_s
        flowing = 0
        while flowing < 5:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the adapter delivered no spike within {limit_s:.0f} s of warm-up")
            # polls with spikes, not in a row: the peer's pace is its own, so some polls come up empty
            flowing += bool(len(source.poll(CHUNK_S).spike_times))
        self._conn.send("flowing")
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 0.3 and time.monotonic() < deadline:
            if len(source.poll(0.01).spike_times):
                quiet_since = time.monotonic()
        return synthetic_rig(self._recv(), self.seconds)  # the same chunks as the peer's (seeded)

    def decoded(self, n: int) -> None:
        self._decoded.value = n

    def start(self) -> None:
        self._conn.send("go")

    @property
    def error(self) -> list[str]:
        """What went wrong in the peer process, looked for without waiting."""
        if self._result is None and self._conn.poll(0):
            try:
                self._result = self._recv(0)
            except RuntimeError as exc:
                self._result = ("error", 0.0)
                self._errors.append(str(exc))
        return self._errors

    def finish(self) -> float:
        try:
            result = self._result or self._recv(10.0)
        except (TimeoutError, RuntimeError) as exc:
            self._errors.append(repr(exc))
            return 0.0
        return result[1] if result[0] == "done" else 0.0

    def close(self) -> None:
        try:
            self._conn.send("close")
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


def run(rigs: list[str] | None, seconds: float) -> dict:
    from simulators.wire_peers import PEERS

    results, skipped = [], {}
    for name in rigs or list(PEERS):
        if name == "lsl" and not os.environ.get("LSLAPICFG"):
            skipped[name] = "LSLAPICFG is not set (liblsl must be confined to 127.0.0.1)"
            continue
        for peer_process in (False, True):
            try:
                results.append(bench_rig(name, seconds, peer_process=peer_process))
            except Exception as exc:  # a rig without a simulated peer, or one that fails: say so, go on
                skipped[f"{name} (peer {'process' if peer_process else 'thread'})"] = f"{type(exc).__name__}: {exc}"
    return {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
                       f"{platform.python_version()}",
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "channels": CHANNELS, "rate_hz": RATE_HZ, "code_every_s": CODE_EVERY_S,
            "results": results, "skipped": skipped}


def print_table(report: dict) -> None:
    print(f"{report['channels']} channels, spikes at {report['rate_hz']:.0f} Hz each, a code every "
          f"{report['code_every_s'] * 1000:.0f} ms; {report['machine']}; load average "
          f"{' '.join(map(str, report['load_average']))}")
    print(f"{'rig':<10} {'peer':<7} {'rig s':>6} {'wall s':>7} {'x real time':>11} {'x (spikes)':>10} "
          f"{'adapter CPU s':>13} {'x (CPU)':>8} {'process CPU s':>13} {'peer CPU s':>10} {'spikes':>16} "
          f"{'codes':>10}  complete")
    for r in report["results"]:
        x = f"{r['x_real_time']:.1f}" if r["x_real_time"] else "-"
        xc = f"{r['x_real_time_adapter_cpu']:.1f}" if r["x_real_time_adapter_cpu"] else "-"
        xs = f"{r['x_real_time_spikes']:.1f}" if r["x_real_time_spikes"] else "-"
        pc = f"{r['adapter_process_cpu_s']:.2f}" if r["adapter_process_cpu_s"] is not None else "-"
        print(f"{r['rig']:<10} {r['peer']:<7} {r['rig_seconds']:>6.1f} {r['wall_seconds']:>7.2f} {x:>11} {xs:>10} "
              f"{r['adapter_cpu_s']:>13.2f} {xc:>8} {pc:>13} {r['peer_cpu_s']:>10.2f} "
              f"{r['spikes_decoded']:>7}/{r['spikes_sent']:<8} {r['codes_decoded']:>4}/{r['codes_sent']:<5}  "
              f"{'yes' if r['complete'] else 'NO'}{'  ' + r['error'] if r['error'] else ''}")
    for name, why in report["skipped"].items():
        print(f"{name:<10} skipped: {why}")


def cli_bench_adapters(args) -> int:
    rigs = [r.strip() for r in args.rigs.split(",")] if getattr(args, "rigs", None) else None
    report = run(rigs, args.seconds)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    return 0 if report["results"] and all(r["complete"] for r in report["results"]) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.adapters", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="rig seconds of codes per rig (default 20)")
    p.add_argument("--rigs", help="comma-separated rigs (default: every one with a simulated peer)")
    p.add_argument("--json", action="store_true")
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    return cli_bench_adapters(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
