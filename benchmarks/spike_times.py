"""What spike times cost: bytes on the wire and in the journal, and the counter's speed.

The synthetic rig of benchmarks/adapters.py (384 channels, Poisson spikes at 50 Hz on
every channel on a 30 kHz sample grid, an event code every 100 ms) goes through the
recorder's SpikeCounter twice, counting only (`response.spike_times_ms = []`) and with
spike times in [-100, 400) ms (the default), in one process, without a wire. Each
presentation's COUNTS is then encoded as the recorder sends it (msgpack, xdream/protocol.py)
and as the server journals it (one JSON line, server/journal.py), with and without its
spike times, and decoded and checked as the server does. Figures: bytes per presentation
and per block of 48 presentations (the default session: 2 threads of 20 and 8 references),
bytes per spike, and rig seconds counted per wall second ("x real time") each way.

Spikes 100 ms apart overlap: with a code every 100 ms and a 500 ms span, each spike is
reported by five presentations; a session at 200 ms per presentation reports each spike
2.5 times. Bytes grow linearly with the rate: scale by rate / 50 Hz.

    python -m benchmarks.spike_times [--seconds 30] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from types import SimpleNamespace

import numpy as np

from benchmarks.adapters import CHANNELS, RATE_HZ, SAMPLE_HZ, synthetic_rig
from recording_adapters.counting import SpikeCounter
from server.app import EvolutionServer
from xdream import protocol
from xdream.config import load
from xdream.protocol import MsgType

BLOCK = 48            # presentations a block of the default session
SPAN_S = (-0.1, 0.4)  # the default response.spike_times_ms


def count(chunks, span) -> tuple[list[protocol.Counts], float]:
    """Every presentation's COUNTS, and the wall seconds the counter took."""
    counter = SpikeCounter(CHANNELS, (0.05, 0.2), (0.0, 0.05), spike_span_s=span)
    codes = [c for chunk in chunks for c in chunk.codes]
    counter.expect(0, [(f"p{i}", code) for i, (_, code) in enumerate(codes)])
    out: list[protocol.Counts] = []
    start = time.perf_counter()
    for chunk in chunks:
        out += counter.add(chunk)
    return out, time.perf_counter() - start


def journal_line(body: protocol.Counts) -> int:
    record = {"seq": 1, "t": time.time(), "kind": "counts", "peer": "recorder", **body.__dict__}
    return len((json.dumps(record) + "\n").encode())


def bench(seconds: float) -> dict:
    chunks = synthetic_rig(SAMPLE_HZ, seconds)      # from 1 s, in samples
    rig_s = (int(chunks[-1].watermark) - SAMPLE_HZ) / SAMPLE_HZ
    plain, plain_s = count(chunks, None)
    timed, timed_s = count(chunks, SPAN_S)
    assert [c.counts for c in plain] == [c.counts for c in timed], "spike times changed the counts"
    ok = [c for c in timed if c.status == "ok"]
    spikes = np.array([sum(map(len, c.spike_times)) for c in ok])
    wire_with = np.array([len(protocol.encode(MsgType.COUNTS, c)[0]) for c in ok])
    wire_without = np.array([len(protocol.encode(MsgType.COUNTS, c)[0]) for c in plain if c.status == "ok"])
    line_with = np.array([journal_line(c) for c in ok])
    line_without = np.array([journal_line(c) for c in plain if c.status == "ok"])
    # the server's side: decode every message, check its spike times against the span
    server = SimpleNamespace(cfg=load(None))
    peer = SimpleNamespace(channels=CHANNELS, name="recorder")
    frames = [protocol.encode(MsgType.COUNTS, c) for c in ok]
    start = time.perf_counter()
    for f in frames:
        EvolutionServer._check_spike_times(server, peer, protocol.decode(f).body)   # type: ignore[arg-type]
    server_ms = (time.perf_counter() - start) / len(frames) * 1000
    plain_frames = [protocol.encode(MsgType.COUNTS, c) for c in plain if c.status == "ok"]
    start = time.perf_counter()
    for f in plain_frames:
        protocol.decode(f)
    server_plain_ms = (time.perf_counter() - start) / len(plain_frames) * 1000
    extra_wire = float(wire_with.mean() - wire_without.mean())
    extra_line = float(line_with.mean() - line_without.mean())
    return {
        "channels": CHANNELS, "rate_hz": RATE_HZ, "span_ms": [1000 * s for s in SPAN_S], "rig_s": rig_s,
        "presentations": len(ok), "spikes_per_presentation": float(spikes.mean()),
        "wire_bytes": {"without": float(wire_without.mean()), "with": float(wire_with.mean()),
                       "extra_per_block": extra_wire * BLOCK, "per_spike": extra_wire / spikes.mean()},
        "journal_bytes": {"without": float(line_without.mean()), "with": float(line_with.mean()),
                          "extra_per_block": extra_line * BLOCK, "per_spike": extra_line / spikes.mean()},
        "largest_header_fraction": float(wire_with.max() / protocol.MAX_HEADER_BYTES),
        "x_real_time": {"counts": rig_s / plain_s, "counts_and_spike_times": rig_s / timed_s},
        "server_ms_per_message": {"decode": server_plain_ms, "decode_and_check_spike_times": server_ms},
        "machine": platform.processor() or platform.machine(),
    }


def report(r: dict) -> str:
    w, j, x, s = r["wire_bytes"], r["journal_bytes"], r["x_real_time"], r["server_ms_per_message"]
    return "\n".join([
        f"{r['channels']} channels at {r['rate_hz']:.0f} Hz, span {r['span_ms']} ms, {r['presentations']} "
        f"presentations ({r['rig_s']:.1f} rig s), {r['spikes_per_presentation']:.0f} spikes each",
        f"wire (msgpack COUNTS): {w['without']:.0f} -> {w['with']:.0f} B a presentation, "
        f"+{w['extra_per_block'] / 1e6:.2f} MB a block of {BLOCK}, {w['per_spike']:.2f} B a spike "
        f"(largest header {100 * r['largest_header_fraction']:.0f}% of the 1 MiB limit)",
        f"journal (JSON line): {j['without']:.0f} -> {j['with']:.0f} B a presentation, "
        f"+{j['extra_per_block'] / 1e6:.2f} MB a block of {BLOCK}, {j['per_spike']:.2f} B a spike",
        f"counter: x{x['counts']:.0f} real time counting, x{x['counts_and_spike_times']:.0f} with spike times",
        f"server: {s['decode']:.2f} ms to decode a COUNTS, {s['decode_and_check_spike_times']:.2f} ms with "
        f"spike times (decode and check)",
    ])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.spike_times", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0, help="rig seconds of codes (default 30)")
    p.add_argument("--quick", action="store_true", help="5 rig seconds: a few seconds of CPU")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    r = bench(5.0 if args.quick else args.seconds)
    print(json.dumps(r, indent=2) if args.json else report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
