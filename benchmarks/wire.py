"""What the wire's metadata costs per message: `protocol.encode` and
`protocol.decode` of the two messages that a generation sends most bytes or
most often, timed on this machine.  A benchmark, not a test.

    python -m benchmarks.wire [--repeats N]

- BLOCK: 40 presentations and 40 images of 256x256x3 uint8 (one default
  generation: 2 threads of 20), the header msgpack plus 40 raw image frames;
- COUNTS: one presentation's spike counts on 384 channels (a Neuropixels
  probe), with a 384-channel baseline.

Each is encoded and decoded `--repeats` times after a warm-up; the figure is
the median (the mean would carry the scheduler's stalls on a shared machine).
The image frames are zero-copy views both ways, so the block's time is the
header's, not the 7.9 MB of pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from xdream import protocol
from xdream.protocol import MsgType

IMAGES, SIDE, CHANNELS = 40, 256, 384


def block_message() -> tuple[protocol.Block, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    specs = [protocol.PresentationSpec(f"b0007-{i:03d}", i + 1, f"{'ab'[i % 2]}/g007/{i:05d}", SIDE, SIDE)
             for i in range(IMAGES)]
    images = [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(IMAGES)]
    return protocol.Block(7, 7, specs), images


def counts_message() -> protocol.Counts:
    rng = np.random.default_rng(1)
    return protocol.Counts(7, "b0007-012", "ok", [float(c) for c in rng.poisson(12, CHANNELS)],
                           [float(c) for c in rng.poisson(2, CHANNELS)], 123.456)


def time_one(msg_type: MsgType, body, images, repeats: int) -> dict:
    """Median encode and decode times in microseconds; decode gets what a socket hands over."""
    enc, dec = [], []
    for i in range(repeats + 20):
        t0 = time.perf_counter()
        frames = protocol.encode(msg_type, body, session="s", seq=i, images=images)
        t1 = time.perf_counter()
        # what a zmq socket hands over: the header as bytes, each image as a flat buffer
        received = [bytes(frames[0]), *(memoryview(f).cast("B") for f in frames[1:])]
        t2 = time.perf_counter()
        msg = protocol.decode(received)
        t3 = time.perf_counter()
        if i >= 20:                                   # the first 20: warm-up
            enc.append(t1 - t0)
            dec.append(t3 - t2)
    assert msg.body == body, "the round trip changed the body"
    return {"encode_us": round(statistics.median(enc) * 1e6, 1),
            "decode_us": round(statistics.median(dec) * 1e6, 1),
            "header_bytes": len(frames[0])}


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wire", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2000, help="timed round trips per message (default 2000)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    block, images = block_message()
    result = {"machine": machine(), "repeats": args.repeats,
              "block": time_one(MsgType.BLOCK, block, images, args.repeats),
              "counts": time_one(MsgType.COUNTS, counts_message(), (), args.repeats)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['machine']}; median of {args.repeats}")
        for name, label in (("block", f"BLOCK, {IMAGES} x {SIDE}x{SIDE}x3"), ("counts", f"COUNTS, {CHANNELS} ch")):
            r = result[name]
            print(f"  {label:<26} encode {r['encode_us']:8.1f} us   decode {r['decode_us']:8.1f} us   "
                  f"header {r['header_bytes']} B")
    return result


if __name__ == "__main__":
    main()
