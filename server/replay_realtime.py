"""`xdream replay SESSION --realtime`: the recorded session, re-sent to live peers.

For demos, and for testing a presenter or a recorder against a real session.
The replay is a server: peers connect to it exactly as to `xdream serve`
(same protocol, same settings from the session's config), and it re-sends
every recorded block, presentation ids and event codes as journaled, with the
images regenerated from the recorded codes (the generator is deterministic
given its config, weights and precision; `xdream export` checks this against
the stored best images) and the references as stored.  No optimizer runs:
what is sent is what was sent, in the order it was sent, re-queues included.

Timing: each block goes out as long after the previous block completed as it
did in the recording (the server's time to score and generate), and each
re-queue as long after its block as in the recording, divided by --speed; a
block is complete when every presentation in it has its report (and counts,
with a recorder), or after the config's block timeout.

The responses travel through a recorder: `xdream record --server EP --replay
SESSION` runs a rig whose neuron is the journal (simulators/replay_rig.py):
at each onset the presenter's screen tap reports, it fires spikes that make
the recorded counts, so a correct recorder reports them again.  With
`--no-recorder` the replay tests a presenter alone.

What came back is compared with the recording, presentation by presentation:
status (shown/aborted/missing), on-frames, and the counts.  The comparison is
written to the replay folder (comparison.json, and replay.jsonl with every
report received); any difference gives exit status 1.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zmq

from server.journal import nan_to_null
from xdream.session_reader import Presentation, SessionRecord, load_session
from xdream import protocol
from xdream.errors import ProtocolError, SessionError
from xdream.protocol import MsgType

log = logging.getLogger(__name__)

POLL_S = 0.01


@dataclass
class _Peer:
    routing_id: bytes
    role: str
    name: str
    last_seen: float


@dataclass
class Comparison:
    presentations: int = 0
    sent: int = 0
    same_status: int = 0
    counts_compared: int = 0
    counts_equal: int = 0
    differences: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences and self.sent == self.presentations

    def lines(self) -> list[str]:
        out = [f"difference: {d['pid']}: {d['what']}" for d in self.differences[:20]]
        if len(self.differences) > 20:
            out.append(f"... and {len(self.differences) - 20} more differences (comparison.json)")
        out.append(f"{'same as recorded' if self.ok else 'DIFFERS from the recording'}: "
                   f"{self.sent} of {self.presentations} presentations re-sent, {self.same_status} with the "
                   f"recorded status, counts equal for {self.counts_equal} of {self.counts_compared} compared")
        return out


class RealtimeReplay:
    def __init__(self, folder, out_dir: Path, bind: str = "tcp://127.0.0.1:0", speed: float = 1.0,
                 with_recorder: bool = True, context: zmq.Context | None = None):
        if speed <= 0:
            raise SessionError(f"--speed must be positive, got {speed}")
        self.s: SessionRecord = load_session(folder)
        for problem in self.s.problems:
            log.warning("journal: %s", problem)
        self.cfg = self.s.cfg
        self.speed = speed
        self.with_recorder = with_recorder
        self.session_id = f"replay-of-{self.s.session_id}"
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=False)
        self._log = open(self.out_dir / "replay.jsonl", "a", encoding="utf-8")
        self.socket = (context or zmq.Context.instance()).socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.bind(bind)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.peers: dict[bytes, _Peer] = {}
        self.shown: dict[str, protocol.Shown] = {}
        self.counts: dict[str, protocol.Counts] = {}
        self.sent: dict[str, Presentation] = {}
        self.missing: dict[str, str] = {}
        self._seq = 0
        self._last_beat = 0.0
        self._images = _Images(self.s)

    # ------------------------------------------------------------------ run
    def run(self) -> Comparison:
        self._write("replay_start", session=self.s.session_id, endpoint=self.endpoint, speed=self.speed,
                    with_recorder=self.with_recorder)
        reason = "finished"
        try:
            self._wait_for_peers()
            self._send_all()
        except BaseException as exc:
            reason = f"stopped: {exc!r}"
            raise
        finally:
            for peer in list(self.peers.values()):
                self._send(peer.routing_id, MsgType.END, protocol.End(reason))
            self._write("replay_end", reason=reason)
            comparison = self.compare()
            (self.out_dir / "comparison.json").write_text(
                json.dumps(nan_to_null(asdict(comparison) | {"ok": comparison.ok}), indent=1) + "\n")
            self._log.close()
            self._images.close()
            self.socket.close(linger=1000)
        return comparison

    def _send_all(self) -> None:
        records = self.s.block_records
        rec_done = _recorded_completion(self.s)
        block_sent: dict[int, tuple[float, float]] = {}   # block id -> (replay time, recorded time)
        current: int | None = None
        for i, r in enumerate(records):
            block_id = int(r["block_id"])
            if block_id != current:
                if current is not None:
                    done_at = self._finish_block(current)
                    # as long after the previous block's end as in the recording (the server's compute)
                    gap = max(0.0, float(r["t"]) - rec_done.get(current, float(r["t"])))
                    self._wait_until(done_at + gap / self.speed)
                current = block_id
            elif block_id in block_sent:
                replay_t, rec_t = block_sent[block_id]
                self._wait_until(replay_t + (float(r["t"]) - rec_t) / self.speed)
            images = self._images.get(int(r["generation"]))
            later = [int(n["generation"]) for n in records[i + 1:] if int(n["generation"]) != int(r["generation"])]
            if later:
                self._images.prefetch(later[0])
            self._send_block(r, images)
            block_sent.setdefault(block_id, (time.monotonic(), float(r["t"])))
        if current is not None:
            self._finish_block(current)

    def _send_block(self, record: dict, images: dict[str, np.ndarray]) -> None:
        todo = [self.s.by_pid[p["pid"]] for p in record["presentations"] if p["pid"] not in self.sent]
        if not todo:
            return
        specs, pixels = [], []
        for p in todo:
            img = images.get(p.image_id)
            if img is None:
                raise SessionError(f"no image for {p.image_id} ({p.pid}): codes or references/ incomplete")
            h, w, _ = img.shape
            specs.append(protocol.PresentationSpec(p.pid, p.code, p.image_id, h, w))
            pixels.append(img)
            self.sent[p.pid] = p
        block_id, generation = int(record["block_id"]), int(record["generation"])
        self._write("block", block_id=block_id, generation=generation, pids=[p.pid for p in todo])
        for peer in sorted(self.peers.values(), key=lambda peer: peer.role != "recorder"):
            if peer.role == "recorder":
                self._send(peer.routing_id, MsgType.BLOCK_INFO, protocol.BlockInfo(block_id, generation, specs))
            else:
                self._send(peer.routing_id, MsgType.BLOCK, protocol.Block(block_id, generation, specs),
                           images=pixels)
        log.info("block %d (generation %d): %d presentations re-sent", block_id, generation, len(todo))

    def _finish_block(self, block_id: int) -> float:
        """Wait until every re-sent presentation of the block is accounted for, or the timeout."""
        deadline = time.monotonic() + self.cfg.session.block_timeout_s
        while True:
            waiting = self._outstanding(block_id)
            if not waiting:
                return time.monotonic()
            if time.monotonic() > deadline:
                log.error("block %d timed out: %d presentations missing", block_id, len(waiting))
                for pid in waiting:
                    self.missing[pid] = "timeout"
                self._write("missing", block_id=block_id, pids=waiting, why="timeout")
                return time.monotonic()
            self._pump(POLL_S)

    def _outstanding(self, block_id: int) -> list[str]:
        out = []
        for pid, p in self.sent.items():
            if p.block_id != block_id or pid in self.missing:
                continue
            report = self.shown.get(pid)
            if report is None or (self.with_recorder and report.status == "shown" and pid not in self.counts):
                out.append(pid)
        return out

    def _wait_until(self, when: float) -> None:
        while time.monotonic() < when:
            self._pump(min(POLL_S, max(0.0, when - time.monotonic())))

    def _wait_for_peers(self) -> None:
        need = {"presenter", "recorder"} if self.with_recorder else {"presenter"}
        deadline = time.monotonic() + self.cfg.session.wait_for_peers_s
        while not need <= {p.role for p in self.peers.values()}:
            if time.monotonic() > deadline:
                raise SessionError(f"no {' and '.join(sorted(need))} connected within "
                                   f"{self.cfg.session.wait_for_peers_s:.0f} s (replay at {self.endpoint})")
            self._pump(0.05)

    # ------------------------------------------------------------- the wire
    def _pump(self, timeout_s: float) -> None:
        if self.socket.poll(int(timeout_s * 1000)):
            while self.socket.poll(0):
                frames = self.socket.recv_multipart(copy=False)
                self._receive(frames[0].bytes, frames[1:])
        now = time.monotonic()
        net = self.cfg.network
        if now - self._last_beat >= net.heartbeat_s:
            self._last_beat = now
            for peer in list(self.peers.values()):
                if now - peer.last_seen > net.peer_timeout_s:
                    log.error("%s %s lost: silent for %.1f s", peer.role, peer.name, now - peer.last_seen)
                    self._write("peer_lost", peer=peer.name, role=peer.role)
                    del self.peers[peer.routing_id]
                else:
                    self._send(peer.routing_id, MsgType.HEARTBEAT, protocol.Heartbeat())

    def _receive(self, routing_id: bytes, frames) -> None:
        try:
            msg = protocol.decode(frames)
            self._dispatch(routing_id, msg)
        except ProtocolError as exc:
            log.error("rejected a message: %s", exc)
            self._write("rejected", reason=str(exc))
            self._send(routing_id, MsgType.ERROR, protocol.Error(str(exc)))

    def _dispatch(self, routing_id: bytes, msg: protocol.Message) -> None:
        if msg.type == MsgType.HELLO:
            return self._on_hello(routing_id, msg.body)
        peer = self.peers.get(routing_id)
        if peer is None:
            raise ProtocolError(f"{msg.type.value} before hello: {protocol.HELLO_FIRST}")
        peer.last_seen = time.monotonic()
        if msg.type == MsgType.HEARTBEAT:
            return
        if msg.type == MsgType.BYE:
            self._write("peer_left", peer=peer.name, reason=msg.body.reason)
            del self.peers[routing_id]
            return
        role = {MsgType.SHOWN: "presenter", MsgType.COUNTS: "recorder"}.get(msg.type)
        if role is None or peer.role != role:
            raise ProtocolError(f"a {peer.role} may not send {msg.type.value}")
        body = msg.body
        sent = self.sent.get(body.pid)
        if sent is None or sent.block_id != body.block_id:
            raise ProtocolError(f"{msg.type.value} for {body.pid} of block {body.block_id}: not re-sent by "
                                f"this replay")
        store = self.shown if msg.type == MsgType.SHOWN else self.counts
        old = store.get(body.pid)
        if old is not None and old != body:
            raise ProtocolError(f"{msg.type.value} for {body.pid} was already reported, differently")
        if old is None:
            store[body.pid] = body
            self._write(msg.type.value, peer=peer.name, **asdict(body))
        self._send(routing_id, MsgType.ACK, protocol.Ack(msg.seq))

    def _on_hello(self, routing_id: bytes, hello: protocol.Hello) -> None:
        for old_id, old in list(self.peers.items()):
            if old.name == hello.name and old_id != routing_id:
                del self.peers[old_id]
        self.peers[routing_id] = _Peer(routing_id, hello.role, hello.name, time.monotonic())
        self._write("peer_joined", peer=hello.name, role=hello.role, channels=hello.channels)
        settings = asdict(self.cfg.presentation) if hello.role == "presenter" else asdict(self.cfg.response)
        net = self.cfg.network
        self._send(routing_id, MsgType.WELCOME, protocol.Welcome(f"{hello.role}-{len(self.peers)}", net.heartbeat_s,
                                                                 net.peer_timeout_s, settings))
        if hello.role == "recorder":   # joined late: it must know what is on screen
            pending: dict[tuple[int, int], list[Presentation]] = {}
            for pid, p in self.sent.items():
                if pid not in self.counts and pid not in self.missing:
                    pending.setdefault((p.block_id, p.generation), []).append(p)
            for (block_id, generation), ps in pending.items():
                specs = [protocol.PresentationSpec(p.pid, p.code, p.image_id, *self._images.shape) for p in ps]
                self._send(routing_id, MsgType.BLOCK_INFO, protocol.BlockInfo(block_id, generation, specs))

    def _send(self, routing_id: bytes, msg_type: MsgType, body, images=()) -> None:
        self._seq += 1
        frames = protocol.encode(msg_type, body, session=self.session_id, seq=self._seq, images=images)
        try:
            self.socket.send_multipart([routing_id, *frames], copy=False)
        except zmq.ZMQError as exc:
            log.warning("could not send %s: %s", msg_type.value, exc)

    def _write(self, kind: str, **fields) -> None:
        self._log.write(json.dumps(nan_to_null({"t": time.time(), "kind": kind, **fields})) + "\n")
        self._log.flush()

    # ------------------------------------------------------------ compare
    def compare(self) -> Comparison:
        c = Comparison(presentations=len(self.s.presentations), sent=len(self.sent))
        for p in self.s.presentations:
            if p.pid not in self.sent:
                c.differences.append({"pid": p.pid, "what": "not re-sent (the replay stopped early)"})
                continue
            shown, counts = self.shown.get(p.pid), self.counts.get(p.pid)
            if self.with_recorder:
                recorded = p.status
                now = "aborted" if shown and shown.status == "aborted" else \
                    "shown" if shown and counts and counts.status == "ok" else "missing"
            else:   # a presenter alone: its own report is the status
                recorded = p.shown["status"] if p.shown else "missing"
                now = shown.status if shown else "missing"
            if recorded == now:
                c.same_status += 1
            else:
                c.differences.append({"pid": p.pid, "what": f"status {now}, recorded {recorded}"})
            if shown and p.shown and shown.status == p.shown["status"] == "shown" \
                    and shown.frames != p.shown["frames"]:
                c.differences.append({"pid": p.pid, "what": f"{shown.frames} frames on, recorded "
                                                            f"{p.shown['frames']}"})
            rec_counts = p.counts if p.counts and p.counts["status"] == "ok" else None
            if self.with_recorder and rec_counts and counts and counts.status == "ok":
                c.counts_compared += 1
                same = list(counts.counts) == list(rec_counts["counts"]) and \
                    list(counts.baseline) == list(rec_counts.get("baseline") or [])
                if same:
                    c.counts_equal += 1
                else:
                    c.differences.append({"pid": p.pid, "what": f"counts {counts.counts} baseline "
                                                                f"{counts.baseline}, recorded {rec_counts['counts']} "
                                                                f"baseline {rec_counts.get('baseline')}"})
        return c


class _Images:
    """Each generation's images, regenerated from its codes off the loop, plus the references."""

    def __init__(self, session: SessionRecord):
        from server.regenerate import Regenerator, stored_references

        self.regenerator = Regenerator(session)
        self.references = stored_references(session)
        size = session.cfg.presentation.image_size_px
        self.shape = (size, size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-generate")
        self._futures: dict[int, Future] = {}

    def prefetch(self, generation: int) -> None:
        if generation not in self._futures:
            self._futures[generation] = self._executor.submit(self._generate, generation)

    def get(self, generation: int) -> dict[str, np.ndarray]:
        self.prefetch(generation)
        for g in [g for g in self._futures if g < generation - 1]:   # a re-queue may still need the last one
            del self._futures[g]
        return self._futures[generation].result()

    def _generate(self, generation: int) -> dict[str, np.ndarray]:
        return self.references | self.regenerator.images(generation)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _recorded_completion(session: SessionRecord) -> dict[int, float]:
    """When each block was complete in the recording: its last report, count or missing record."""
    block_of = {p.pid: p.block_id for p in session.presentations}
    done: dict[int, float] = {}
    for r in session.records:
        if r["kind"] in ("shown", "counts") and r.get("pid") in block_of:
            b = block_of[r["pid"]]
        elif r["kind"] == "missing":
            b = int(r["block_id"])
        else:
            continue
        done[b] = max(done.get(b, -math.inf), float(r["t"]))
    return done
