"""Fuzzing the evolution server's receive path with hypothesis (issue 12).

A live EvolutionServer (real ROUTER on 127.0.0.1, a random port, in a thread of
this process) gets generated messages from real DEALERs in three peer states
(a joined presenter, a joined recorder, connections that never said hello):
valid envelopes of every message type with generated fields, the same
mutated (a key dropped, a value replaced by any msgpack value, bytes flipped),
and random frames.  After every batch a probe that never said hello sends a
heartbeat and must get its ERROR ("say hello first"): the receiver still
answers.  At the end a fresh peer is welcomed, every journal line parses as
JSON, and the growth of the process's RSS is reported.

    python -m benchmarks.fuzz_server [--messages 100000] [--batch 50]

tests/test_fuzz.py runs the same with a few thousand messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from server.app import EvolutionServer
from xdream import config as config_mod
from xdream import protocol
from xdream.protocol import MsgType

TYPES = [t.value for t in MsgType]


def fuzz_config(out: Path) -> config_mod.Config:
    """A small session that outlives any storm: many generations, nothing times out."""
    cfg = config_mod.load(None)
    cfg.session.out_dir = str(out)
    cfg.session.generations = 10_000
    cfg.session.block_timeout_s = 3600.0
    cfg.session.wait_for_peers_s = 3600.0
    cfg.threads = cfg.threads[:1]
    cfg.threads[0].optimizer.population = 6
    cfg.threads[0].generator.kind = "fourier"
    cfg.reference.count = 2
    cfg.presentation.image_size_px = 32
    cfg.presentation.window_size = [64, 64]
    cfg.network.heartbeat_s = 0.5
    cfg.network.peer_timeout_s = 3600.0   # the joined peers stay joined unless a fuzzed bye drops them
    return cfg.validate()


def rss_bytes() -> int:
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise


class LiveServer:
    """An EvolutionServer running in a thread with its own event loop."""

    def __init__(self, cfg, folder: Path):
        self.folder = folder
        self._ready = threading.Event()
        self.endpoint = ""
        self.error: BaseException | None = None
        self.server: EvolutionServer | None = None
        self._thread = threading.Thread(target=self._run, args=(cfg,), daemon=True, name="fuzzed-server")
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError(f"the server did not start: {self.error!r}")

    def _run(self, cfg) -> None:
        async def main():
            self.loop = asyncio.get_running_loop()
            self.server = EvolutionServer(cfg, self.folder)
            self.task = asyncio.create_task(self.server.run(on_endpoint=self._listening))
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        try:
            asyncio.run(main())
        except BaseException as exc:   # noqa: BLE001 -- reported by `alive`
            self.error = exc
            self._ready.set()

    def _listening(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._ready.set()

    def alive(self) -> bool:
        return self._thread.is_alive() and not self.task.done()

    def stop(self) -> bool:
        """Cancel the session (as SIGTERM does); True if the server's thread then ended."""
        self.loop.call_soon_threadsafe(self.task.cancel)
        self._thread.join(30)
        return not self._thread.is_alive()


# ---------------------------------------------------------------- strategies
_scalar = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
           | st.text(max_size=30) | st.binary(max_size=30))
_key = st.text(max_size=12) | st.binary(max_size=6) | st.integers(-5, 5) | st.floats() | st.booleans()
anything = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(_key, inner, max_size=4), max_leaves=12)
_pids = st.sampled_from(["b0000-000", "b0000-001", "b0000-005", "b0001-003", "b0000-000r1", "zz", ""]) | \
    st.text(max_size=70)
_block_ids = st.sampled_from([0, 1, 2, -1, 999]) | st.integers(-2**63, 2**63 - 1)
_finite = st.floats(0, 1e3)
_counts = st.lists(_finite, max_size=4) | st.lists(st.floats(), max_size=3)


def _bodies(msg_type: str):
    if msg_type == "hello":
        names = st.sampled_from(["pres", "rec", "fz1", "fz2", ""]) | st.text(max_size=140)
        return st.fixed_dictionaries({"role": st.sampled_from(["presenter", "recorder", "rig"]), "name": names,
                                      "channels": st.integers(-1, 5)})
    if msg_type == "shown":
        return st.fixed_dictionaries({"block_id": _block_ids, "pid": _pids,
                                      "status": st.sampled_from(["shown", "aborted", "x"]),
                                      "onset": st.none() | st.floats(), "frames": st.integers(-1, 10),
                                      "dropped": st.integers(0, 3)})
    if msg_type == "counts":
        return st.fixed_dictionaries({"block_id": _block_ids, "pid": _pids,
                                      "status": st.sampled_from(["ok", "missing", "x"]),
                                      "counts": _counts, "baseline": _counts, "onset": st.none() | st.floats()})
    if msg_type == "bye":
        return st.fixed_dictionaries({"reason": st.text(max_size=20)})
    if msg_type == "heartbeat":
        return st.just({})
    return st.dictionaries(st.text(max_size=12), anything, max_size=5)   # types a peer may not send


@st.composite
def valid_header(draw, session: str) -> dict:
    msg_type = draw(st.sampled_from(TYPES))
    return {"v": 1, "type": msg_type, "session": draw(st.sampled_from([session, session, ""]) | st.text(max_size=10)),
            "seq": draw(st.integers(0, 2**32)), "t": draw(st.floats(0, 2e9)), "body": draw(_bodies(msg_type))}


@st.composite
def message(draw, session: str) -> list[bytes]:
    """One multipart message: ('valid' | 'mutated' | 'random') frames."""
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "random"]))
    if kind == "random":
        return draw(st.lists(st.binary(max_size=300), min_size=1, max_size=3))
    header = draw(valid_header(session))
    if kind == "mutated":
        how = draw(st.sampled_from(["drop", "replace", "replace_body", "add", "flip"]))
        key = draw(st.sampled_from(sorted(header)))
        if how == "drop":
            del header[key]
        elif how == "replace":
            header[key] = draw(anything)
        elif how == "replace_body" and header["body"]:
            header["body"][draw(st.sampled_from(sorted(header["body"])))] = draw(anything)
        elif how == "add":
            header[draw(_key)] = draw(anything)
    raw = msgpack.packb(header, use_bin_type=True)
    if kind == "mutated" and how == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]
    extra = draw(st.lists(st.binary(max_size=64), max_size=2)) if draw(st.integers(0, 9)) == 0 else []
    return [raw, *extra]


# The strategies above draw about 80 messages/s on these machines: too slow for 100,000.
# Each batch takes a few messages from them and the rest from `quick_message`, driven by a
# random.Random that hypothesis draws (st.randoms), so a failing batch still replays.
_QUICK_PIDS = ["b0000-000", "b0000-001", "b0000-005", "b0001-003", "b0000-000r1", "zz", ""]
_QUICK_VALUES = [None, True, 0, -1, 2**63, 2**64 - 1, -2**63, 1.5, float("nan"), float("inf"), -0.0, "", "x" * 80,
                 b"\x00\xff", [], {}, [1, [2, [3]]], {"k": {"k": {}}}, {b"k": 1}, {1.5: 2}, {float("nan"): 0}]


def _quick_value(rng):
    return rng.choice(_QUICK_VALUES) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 40))


def quick_body(rng, msg_type: str) -> dict:
    f = rng.uniform
    if msg_type == "hello":
        return {"role": rng.choice(["presenter", "recorder", "rig"]), "name": rng.choice(["pres", "rec", "fz1", ""]),
                "channels": rng.randint(-1, 5)}
    if msg_type in ("shown", "counts"):
        body = {"block_id": rng.choice([0, 1, 2, -1, 999, rng.randint(-2**63, 2**63 - 1)]),
                "pid": rng.choice(_QUICK_PIDS), "onset": rng.choice([None, f(0, 100), float("nan")])}
        if msg_type == "shown":
            return body | {"status": rng.choice(["shown", "aborted", "x"]), "frames": rng.randint(-1, 10),
                           "dropped": rng.randint(0, 3)}
        n = rng.choice([0, 1, 2, 3, 100])
        return body | {"status": rng.choice(["ok", "missing", "x"]), "counts": [f(0, 50) for _ in range(n)],
                       "baseline": [f(-1, 5) for _ in range(rng.randint(0, 3))]}
    if msg_type == "bye":
        return {"reason": "fuzz"}
    if msg_type == "heartbeat":
        return {}
    return {rng.choice(["reason", "ref_seq", "block_id", "x"]): _quick_value(rng) for _ in range(rng.randint(0, 3))}


def quick_message(rng, session: str) -> list[bytes]:
    kind = rng.choice(["valid", "valid", "mutated", "random"])
    if kind == "random":
        return [rng.randbytes(rng.randint(0, 300)) for _ in range(rng.randint(1, 3))]
    msg_type = rng.choice(TYPES)
    header = {"v": 1, "type": msg_type, "session": rng.choice([session, session, "", "other"]),
              "seq": rng.randint(0, 2**32), "t": rng.uniform(0, 2e9), "body": quick_body(rng, msg_type)}
    flip = False
    if kind == "mutated":
        how = rng.choice(["drop", "replace", "replace_body", "add", "flip"])
        key = rng.choice(sorted(header))
        if how == "drop":
            del header[key]
        elif how == "replace":
            header[key] = _quick_value(rng)
        elif how == "replace_body" and header["body"]:
            header["body"][rng.choice(sorted(header["body"]))] = _quick_value(rng)
        elif how == "add":
            header[rng.choice([b"k", 1.5, float("nan"), "extra", 7])] = _quick_value(rng)
        flip = how == "flip"
    raw = msgpack.packb(header, use_bin_type=True)
    if flip:
        i = rng.randrange(len(raw))
        raw = raw[:i] + bytes([raw[i] ^ rng.randint(1, 255)]) + raw[i + 1:]
    return [raw, *([rng.randbytes(rng.randint(0, 64))] if rng.random() < 0.1 else [])]


def batches(session: str, size: int):
    """A batch: (sender, frames) pairs; 5 from the strategies, the rest from quick_message."""
    drawn = st.lists(st.tuples(st.integers(0, 4), message(session)), min_size=min(5, size), max_size=min(5, size))
    return st.tuples(drawn, st.randoms(use_true_random=False)).map(
        lambda d: d[0] + [(d[1].randint(0, 4), quick_message(d[1], session)) for _ in range(size - len(d[0]))])


# ---------------------------------------------------------------- the run
class Fuzzer:
    """The peers of one storm: a joined presenter, a joined recorder, strangers, and a probe."""

    def __init__(self, live: LiveServer):
        self.live = live
        self.ctx = zmq.Context()
        self.session = live.folder.name
        self.sent = 0
        self.pres = self._dealer()
        self.rec = self._dealer()
        self.strangers = [self._dealer() for _ in range(3)]
        self.probe = self._dealer()
        self._join(self.pres, protocol.Hello("presenter", "pres"))
        self._join(self.rec, protocol.Hello("recorder", "rec", 2))

    def _dealer(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.live.endpoint)
        return sock

    def _join(self, sock, hello) -> None:
        sock.send_multipart(protocol.encode(MsgType.HELLO, hello, seq=1))

    def storm(self, batch: list[tuple[int, list[bytes]]]) -> None:
        """Send a batch, each from one of the five senders, then check the receiver answers."""
        socks = [self.pres, self.rec, *self.strangers]
        # the joined peers say hello again (a no-op if they still are): a fuzzed bye does not end the states
        self._join(self.pres, protocol.Hello("presenter", "pres"))
        self._join(self.rec, protocol.Hello("recorder", "rec", 2))
        for who, frames in batch:
            socks[who].send_multipart(frames)
            self.sent += 1
        for sock in socks:   # replies are not read one by one: drain, so no queue grows
            while sock.poll(0):
                sock.recv_multipart()
        self.check_answering()

    def check_answering(self, timeout_s: float = 30.0) -> None:
        self.probe.send_multipart(protocol.encode(MsgType.HEARTBEAT, protocol.Heartbeat(), seq=1))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.probe.poll(200):
                msg = protocol.decode(self.probe.recv_multipart())
                if msg.type == MsgType.ERROR and protocol.HELLO_FIRST in msg.body.reason:
                    return
            if not self.live.alive():
                raise AssertionError(f"the server stopped: {self.live.error!r}")
        raise AssertionError(f"no answer to a heartbeat within {timeout_s:.0f} s after {self.sent} messages")

    def welcomed(self) -> bool:
        sock = self._dealer()
        self._join(sock, protocol.Hello("presenter", "after-the-storm"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sock.poll(200) and protocol.decode(sock.recv_multipart()).type == MsgType.WELCOME:
                return True
        return False

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def run_storm(folder: Path, messages: int, batch: int = 50, seed: int | None = None) -> dict:
    """`messages` generated messages against a live server in `folder`; returns the figures."""
    live = LiveServer(fuzz_config(folder.parent), folder)
    fuzzer = Fuzzer(live)
    rss_before = rss_bytes()
    t0 = time.perf_counter()

    @settings(max_examples=max(1, messages // batch), deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=seed is not None)
    @given(batches(fuzzer.session, batch))
    def one_batch(items):
        fuzzer.storm(items)

    try:
        one_batch()
        seconds = time.perf_counter() - t0
        rss_after = rss_bytes()
        welcomed = fuzzer.welcomed()
        alive = live.alive()
    finally:
        fuzzer.close()
        stopped = live.stop()   # a cancel swallowed in the server leaves it running
    lines = (folder / "journal.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]   # raises if any line is not JSON
    kinds: dict[str, int] = {}
    for r in records:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    return {"messages": fuzzer.sent, "seconds": round(seconds, 2), "messages_per_s": round(fuzzer.sent / seconds),
            "rss_before_mib": round(rss_before / 2**20, 1), "rss_after_mib": round(rss_after / 2**20, 1),
            "welcomed_after": welcomed, "alive_after": alive, "stopped_when_cancelled": stopped,
            "journal_records": len(records), "kinds": kinds}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=50)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        figures = run_storm(Path(tmp) / "fuzz-session", args.messages, args.batch)
    figures["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
