"""Throughput of the rig adapters: how many times faster than real time each
one decodes a 384-channel rig through its real wire format on loopback.

For each rig with a simulated peer (simulators/wire_peers.py), a sender thread
feeds the peer a synthetic rig -- Poisson spikes at 50 Hz on every channel and
an event code every 100 ms, in 50 ms chunks -- as fast as the adapter takes
it (never more than `window_s` of rig time ahead of what the adapter has
decoded, counted in spikes, so no socket buffer overflows), and the adapter is
polled until every spike and code has come out.  A rig counts only if every
event arrived: spikes per channel and the codes in order are checked.

Figures: rig seconds per wall second until every event was out ("x real
time"; codes come last, as adapters hold each one until its window is whole),
the same until the last spike ("x spikes"), and rig seconds per CPU second
spent in the adapter's poll ("x CPU"; the peer's encoding, the rig's work on a
real rig, runs on its own thread and is reported apart).  Not a test: figures
go to docs/benchmarks.md.

    xdream bench adapters [--seconds 20] [--rigs openephys,intan,lsl] [--json]
    python -m recording_adapters.bench
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

import numpy as np

from recording_adapters.events import RigEvents

log = logging.getLogger(__name__)

CHANNELS = 384
RATE_HZ = 50.0
CODE_EVERY_S = 0.1
CHUNK_S = 0.05
SAMPLE_HZ = 30000
TAIL_S = 1.0   # spikes without codes after the last code: adapters hold a code until its window is past
FLUSH_S = 1.0  # then empty chunks: an adapter may keep the stream's last moments until time moves on


def synthetic_rig(start: float, seconds: float, tail_s: float = TAIL_S, channels: int = CHANNELS,
                  seed: int = 0) -> list[RigEvents]:
    """The rig's stream from `start` in chunks: sorted spike times, a code every 100 ms for `seconds`,
    then `tail_s` of spikes alone; each chunk's watermark at its end."""
    rng = np.random.default_rng([seed, int(start * 1000)])
    chunks = []
    for i in range(int(round((seconds + tail_s) / CHUNK_S))):
        t0, t1 = start + i * CHUNK_S, start + (i + 1) * CHUNK_S
        n = rng.poisson(channels * RATE_HZ * CHUNK_S)
        # on a 30 kHz sample grid, at most one spike per channel and sample (a neuron's refractory
        # period); a quarter sample in, so that every rig's own quantization lands on the same sample
        samples = rng.integers(round(t0 * SAMPLE_HZ), round(t1 * SAMPLE_HZ), n)
        chans = rng.integers(0, channels, n)
        pairs = np.unique(samples * channels + chans)
        samples, chans = pairs // channels, pairs % channels
        times = (samples + 0.25) / SAMPLE_HZ
        order = np.argsort(times, kind="stable")
        first, last = int(np.ceil(i * CHUNK_S / CODE_EVERY_S - 1e-9)), int(np.ceil((i + 1) * CHUNK_S / CODE_EVERY_S - 1e-9))
        codes = [(round(start + k * CODE_EVERY_S, 6), k % 255 + 1) for k in range(first, last)
                 if k * CODE_EVERY_S < seconds - 1e-9]
        chunks.append(RigEvents(codes=codes, spike_times=times[order],
                                spike_channels=chans[order], watermark=t1))
    return chunks


def warm_up(peer, source, limit_s: float = 30.0) -> float:
    """Feed spikes (no codes) at real-time pace until the adapter delivers one: connections made,
    acquisition started.  Returns the rig time the measured stream starts at."""
    t = 0.0
    deadline = time.monotonic() + limit_s
    while not getattr(peer, "running", True) and time.monotonic() < deadline:
        time.sleep(0.005)  # a peer that a client must start (Intan RHX): data before would not exist
    flowing = 0
    while time.monotonic() < deadline:
        (chunk,) = synthetic_rig(t, 0.0, CHUNK_S, seed=1)
        peer.send(chunk)
        t = chunk.watermark
        ev = source.poll(CHUNK_S)
        flowing = flowing + 1 if len(ev.spike_times) else 0
        if flowing >= 5:  # the stream is established; let what is in flight come out
            for k in range(1, 11):  # time moves on without spikes: a rig sending whole blocks flushes
                peer.send(RigEvents(watermark=round(t + k * CHUNK_S, 6)))
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < 0.3 and time.monotonic() < deadline:
                if len(source.poll(0.01).spike_times):
                    quiet_since = time.monotonic()
            return round(t + 10 * CHUNK_S, 6)  # a clean margin past anything sent so far
    raise TimeoutError(f"the adapter delivered no spike within {limit_s:.0f} s of warm-up")


def bench_rig(name: str, seconds: float, window_s: float = 0.5, timeout_s: float | None = None) -> dict:
    from recording_adapters.sources import build_source
    from simulators.wire_peers import start_peer

    peer = start_peer(name, CHANNELS)
    source = None
    try:
        source = build_source(name, peer.adapter_options())
        begin = warm_up(peer, source)
        chunks = synthetic_rig(begin, seconds)
        sent_spikes = np.bincount(np.concatenate([c.spike_channels for c in chunks]), minlength=CHANNELS)
        sent_codes = [code for c in chunks for code in c.codes]
        got_spikes = np.zeros(CHANNELS, dtype=np.int64)
        got_codes: list[tuple[float, int]] = []
        # how far the adapter has got, counted in spikes (an adapter may report times in its own
        # clock, e.g. LSL's local_clock, so nothing here compares times across the wire)
        decoded = [0]
        sent_before = np.cumsum([0] + [len(c.spike_times) for c in chunks])
        ahead = int(round(window_s / CHUNK_S))
        error: list[BaseException] = []

        def send_all() -> None:
            try:
                for i, chunk in enumerate(chunks):
                    while decoded[0] < sent_before[max(0, i - ahead)] and not error:
                        time.sleep(0.0005)
                    peer.send(chunk)
            except BaseException as exc:  # reported below: a dead sender is a failed run
                error.append(exc)

        sender_cpu = [0.0]
        flush = [RigEvents(watermark=chunks[-1].watermark + (i + 1) * CHUNK_S)
                 for i in range(int(round(FLUSH_S / CHUNK_S)))]

        def send_timed() -> None:
            c0 = time.thread_time()
            send_all()
            for chunk in flush:
                peer.send(chunk)
            sender_cpu[0] = time.thread_time() - c0

        sender = threading.Thread(target=send_timed, daemon=True)
        limit = timeout_s or 60.0 + 5 * seconds
        start = time.perf_counter()
        poll_cpu = 0.0
        spikes_done = None  # wall time when the last spike came out (codes may be held longer)
        sender.start()
        while time.perf_counter() - start < limit and not error:
            c0 = time.thread_time()
            ev = source.poll(0.005)
            poll_cpu += time.thread_time() - c0
            if len(ev.spike_channels):
                got_spikes += np.bincount(ev.spike_channels, minlength=CHANNELS)[:CHANNELS]
                decoded[0] = int(got_spikes.sum())
                if spikes_done is None and decoded[0] >= sent_spikes.sum():
                    spikes_done = time.perf_counter() - start
            got_codes += ev.codes
            if got_spikes.sum() >= sent_spikes.sum() and len(got_codes) >= len(sent_codes):
                break
        wall = time.perf_counter() - start
        sender.join(5)
        complete = bool(np.array_equal(got_spikes, sent_spikes)) and [c for _, c in got_codes] == \
            [c for _, c in sent_codes]
        rig_s = seconds + TAIL_S
        return {"rig": name, "rig_seconds": rig_s, "wall_seconds": round(wall, 3),
                "x_real_time": round(rig_s / wall, 1) if complete else None,
                "spikes_wall_seconds": round(spikes_done, 3) if spikes_done else None,
                "x_real_time_spikes": round(rig_s / spikes_done, 1) if spikes_done else None,
                "adapter_cpu_s": round(poll_cpu, 3), "peer_cpu_s": round(sender_cpu[0], 3),
                "x_real_time_adapter_cpu": round(rig_s / poll_cpu, 1) if complete and poll_cpu > 0 else None,
                "spikes_sent": int(sent_spikes.sum()), "spikes_decoded": int(got_spikes.sum()),
                "codes_sent": len(sent_codes), "codes_decoded": len(got_codes), "complete": complete,
                "error": repr(error[0]) if error else None}
    finally:
        if source is not None:
            source.close()
        peer.close()


def run(rigs: list[str] | None, seconds: float) -> dict:
    from simulators.wire_peers import PEERS

    results, skipped = [], {}
    for name in rigs or list(PEERS):
        if name == "lsl" and not os.environ.get("LSLAPICFG"):
            skipped[name] = "LSLAPICFG is not set (liblsl must be confined to 127.0.0.1)"
            continue
        try:
            results.append(bench_rig(name, seconds))
        except Exception as exc:  # a rig without a simulated peer, or one that fails: say so, go on
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
                       f"{platform.python_version()}",
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "channels": CHANNELS, "rate_hz": RATE_HZ, "code_every_s": CODE_EVERY_S,
            "results": results, "skipped": skipped}


def print_table(report: dict) -> None:
    print(f"{report['channels']} channels, spikes at {report['rate_hz']:.0f} Hz each, a code every "
          f"{report['code_every_s'] * 1000:.0f} ms; {report['machine']}; load average "
          f"{' '.join(map(str, report['load_average']))}")
    print(f"{'rig':<10} {'rig s':>6} {'wall s':>7} {'x real time':>11} {'x (spikes)':>10} {'adapter CPU s':>13} {'x (CPU)':>8} "
          f"{'peer CPU s':>10} {'spikes':>16} {'codes':>10}  complete")
    for r in report["results"]:
        x = f"{r['x_real_time']:.1f}" if r["x_real_time"] else "-"
        xc = f"{r['x_real_time_adapter_cpu']:.1f}" if r["x_real_time_adapter_cpu"] else "-"
        xs = f"{r['x_real_time_spikes']:.1f}" if r["x_real_time_spikes"] else "-"
        print(f"{r['rig']:<10} {r['rig_seconds']:>6.1f} {r['wall_seconds']:>7.2f} {x:>11} {xs:>10} "
              f"{r['adapter_cpu_s']:>13.2f} {xc:>8} {r['peer_cpu_s']:>10.2f} "
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
    p = argparse.ArgumentParser(prog="python -m recording_adapters.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="rig seconds of codes per rig (default 20)")
    p.add_argument("--rigs", help="comma-separated rigs (default: every one with a simulated peer)")
    p.add_argument("--json", action="store_true")
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    return cli_bench_adapters(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
