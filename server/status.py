"""The server's status stream and control socket (docs/protocol.md, "Status stream").

Two sockets, owned by one background thread so that the session loop only
ever puts a tuple on a queue (microseconds):

- PUB (`network.status_pub_port`, same host as `network.status_bind`): every
  event, as [kind, msgpack map].  SNDHWM bounds what waits for a slow
  subscriber; beyond it libzmq drops the message for that subscriber (a PUB
  never blocks), and the send is non-blocking anyway.
- ROUTER (`network.status_bind`): requests from REQ/DEALER clients:
  `snapshot` (the session so far, folded by xdream.status_state: what a late
  subscriber starts from, with the `seq` to continue after, zguide's "clone"
  pattern), `run` (this server run's id and last seq, a few bytes: how a
  follower tells a restarted server from a quiet one), and the controls
  `pause`, `resume`, `stop`, handed to the session loop with
  `call_soon_threadsafe`.  Beyond loopback the controls need the token the
  server prints at start.

Thumbnails (JPEG, THUMB_PX a side) are encoded in that thread too, never on
the loop: PNG-encoding a generation on the loop costs 250-400 ms (design.md).
`NullStatus` has the same hooks and does nothing (`status_bind = ""`).
"""

from __future__ import annotations

import io
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable

import numpy as np
import zmq

from xdream import curve, psth
from xdream.endpoints import bind_socket, split_tcp
from xdream.errors import ProtocolError, SessionError
from xdream.status_state import StatusState
from xdream.status_wire import STATUS_VERSION, check_request, pack

log = logging.getLogger(__name__)

THUMB_PX = 96
JPEG_QUALITY = 80
SNDHWM = 200          # status messages queued per subscriber before libzmq drops
QUEUE_LIMIT = 10_000  # events waiting for the publisher thread; beyond, dropped (and counted)
CLOSE_LINGER_MS = 500
_STOP = object()


def thumbnail(image: np.ndarray, size: int = THUMB_PX) -> bytes:
    """A small JPEG of one HxWx3 uint8 image."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(image))
    im.thumbnail((size, size))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


class NullStatus:
    """No status stream: every hook does nothing."""
    endpoint = ""
    pub_endpoint = ""
    token = ""

    def start(self, on_control: Callable[[str, str], None]) -> str:
        return ""

    def emit(self, kind: str, **fields) -> None:
        pass

    def generation(self, generation: int, threads: list[dict], images: dict, timing: dict,
                   channels: list[float], spikes: SpikeTrains | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class StatusPublisher(NullStatus):
    def __init__(self, bind: str, pub_port: int = 0, *, hwm: int = SNDHWM):
        self.bind = bind
        self.pub_port = pub_port
        self.hwm = hwm
        self.token = "" if curve.is_loopback(bind) else secrets.token_urlsafe(16)
        self.state = StatusState()
        self.dropped = 0            # events the queue was too full to take
        self.send_dropped = 0       # PUB sends refused (EAGAIN)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._seq = 0
        self.run_id = secrets.token_hex(8)   # seq restarts at 1 with each run: a follower needs to know which

    def start(self, on_control: Callable[[str, str], None]) -> str:
        """Bind both sockets (a failure is a SessionError naming the endpoint) and start the
        thread; `on_control(op, who)` is called on the caller's loop for each control."""
        import asyncio

        loop = asyncio.get_running_loop()
        host, _ = split_tcp(self.bind, "network.status_bind")
        self._ctx = ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        pub = ctx.socket(zmq.PUB)
        try:
            for s in (router, pub):
                s.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
            pub.setsockopt(zmq.SNDHWM, self.hwm)
            self.endpoint = bind_socket(router, self.bind, "network.status_bind")
            self.pub_endpoint = bind_socket(pub, f"tcp://{host}:{self.pub_port}", "network.status_pub_port")
        except BaseException:
            router.close(0)
            pub.close(0)
            ctx.term()
            raise

        def control(op: str, who: str) -> None:
            loop.call_soon_threadsafe(on_control, op, who)

        self._thread = threading.Thread(target=self._run, args=(router, pub, control), name="status", daemon=True)
        self._thread.start()
        return self.endpoint

    # -------------------------------------------------- the loop's side: put and go
    def emit(self, kind: str, **fields) -> None:
        self._put(("event", kind, fields))

    def generation(self, generation: int, threads: list[dict], images: dict, timing: dict,
                   channels: list[float], spikes: SpikeTrains | None = None) -> None:
        """`threads`: per thread its summary plus `best_index` (the best image of the generation
        when it beats the thread's best so far); `images`: thread -> the generation's images
        (not copied: the session never writes into them); `spikes`: the generation's spike
        times, binned into each thread's PSTH in the thread, not on the loop."""
        self._put(("generation", generation, threads, images, timing, channels, spikes))

    def _put(self, item) -> None:
        if self._thread is None:
            return
        if self._queue.qsize() >= QUEUE_LIMIT:   # the thread is stuck: never grow without end
            self.dropped += 1
            return
        self._queue.put(item)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=10)
            self._thread = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    # -------------------------------------------------- the thread
    def _run(self, router: zmq.Socket, pub: zmq.Socket, control: Callable[[str, str], None]) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        try:
            while True:
                for _sock, _ in poller.poll(50):
                    self._answer(router, control)
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        return
                    try:
                        self._handle(pub, item)
                    except Exception:   # a bad event must not stop the stream
                        log.exception("status: could not publish %r", item[:2])
        finally:
            router.close(0)
            pub.close(linger=CLOSE_LINGER_MS)   # the last events (the end) still reach subscribers

    def _handle(self, pub: zmq.Socket, item) -> None:
        if item[0] == "event":
            _, kind, fields = item
            self._publish(pub, kind, fields)
            return
        _, generation, threads, images, timing, channels, spikes = item
        out = []
        for th in threads:
            th = dict(th)
            if spikes is not None and spikes.any():
                th["psth"] = psth.thread_psth(th["channel"], spikes.images.get(th["thread"], []), spikes.refs,
                                              spikes.span_ms)
            imgs = images.get(th["thread"])
            best = th.pop("best_index", None)
            th["images"] = [thumbnail(im) for im in imgs] if imgs is not None else []
            th["best_image"] = th["images"][best] if best is not None and best < len(th["images"]) else None
            out.append(th)
        self._publish(pub, "generation", {"generation": generation, "threads": out, "timing": timing,
                                          "channels": channels})

    def _publish(self, pub: zmq.Socket, kind: str, fields: dict) -> None:
        self._seq += 1
        event = {"v": STATUS_VERSION, "kind": kind, "seq": self._seq, "t": time.time(), **fields}
        self.state.apply(event)
        try:
            pub.send_multipart([kind.encode(), pack(event)], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.send_dropped += 1

    def _answer(self, router: zmq.Socket, control: Callable[[str, str], None]) -> None:
        try:
            frames = router.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        envelope, raw = frames[:-1], frames[-1]
        who = envelope[0].hex()[:16] if envelope else "?"
        try:
            request = check_request(raw)
            op = request["op"]
            if op == "snapshot":
                reply = {"v": STATUS_VERSION, "ok": True, "pub": self.pub_endpoint, "run": self.run_id,
                         "snapshot": self.state.snapshot()}
            elif op == "run":
                reply = {"v": STATUS_VERSION, "ok": True, "pub": self.pub_endpoint, "run": self.run_id,
                         "seq": self.state.seq}
            else:
                if self.token and not secrets.compare_digest(request.get("token", ""), self.token):
                    raise ProtocolError(f"{op} needs the control token the server printed at start")
                control(op, str(request.get("by", who))[:64])
                reply = {"v": STATUS_VERSION, "ok": True, "op": op}
        except ProtocolError as exc:
            log.warning("status: refused a request from %s: %s", who, exc)
            reply = {"v": STATUS_VERSION, "ok": False, "error": str(exc)[:500]}
        try:
            router.send_multipart([*envelope, pack(reply)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("status: could not answer %s: %s", who, exc)


def make_status(bind: str, pub_port: int) -> NullStatus:
    if not bind:
        return NullStatus()
    if not bind.startswith("tcp://"):
        raise SessionError(f"network.status_bind {bind!r}: a tcp:// endpoint, or \"\" for no status stream")
    return StatusPublisher(bind, pub_port)


class SpikeTrains:
    """One generation's spike times (per presentation, per channel, us from onset) of the
    presentations shown and counted: per thread its images', and the references'.  Gathered on
    the loop by reference (no copy, no numpy), binned in the status thread (xdream/psth.py)."""

    def __init__(self, progress, span_ms) -> None:
        self.span_ms = list(span_ms)
        self.images: dict[str, list[list[list[int]]]] = {}
        self.refs: list[list[list[int]]] = []
        for pid, counts in progress.counts.items():
            shown = progress.shown.get(pid)
            if counts.status != "ok" or not counts.spike_times or shown is None or shown.status != "shown":
                continue
            p = progress.by_pid[pid]
            if p.kind == "reference":
                self.refs.append(counts.spike_times)
            else:
                self.images.setdefault(p.thread, []).append(counts.spike_times)

    def any(self) -> bool:
        return bool(self.refs or self.images)


class GenerationReport:
    """What the status stream says about one generation, gathered as it runs: the time of
    each phase, each thread's scores, the references' responses; sent by `publish`."""

    def __init__(self, generation: int):
        self.generation = generation
        self.timing: dict[str, float] = {}
        self.threads: list[dict] = []
        self._marks: dict[str, float] = {}

    def add_time(self, phase: str, seconds: float) -> None:
        self.timing[phase] = round(self.timing.get(phase, 0.0) + seconds, 4)

    def mark(self, phase: str, since: float) -> None:
        """The first time only: the phase ended now, it began at `since` (perf_counter)."""
        if phase not in self._marks:
            self._marks[phase] = time.perf_counter()
            self.add_time(phase, self._marks[phase] - since)

    def scored(self, thread: str, channel: int, ids: list[str], scores: np.ndarray, record: dict,
               refs: dict[str, float], best_index: int | None) -> None:
        self.threads.append({"thread": thread, "channel": channel, "mean": record["mean"], "max": record["max"],
                             "ref_mean": record["ref_mean"], "n_missing": record["n_missing"],
                             "ids": list(ids), "scores": [float(x) for x in scores], "refs": refs,
                             "best_score": float(scores[best_index]) if best_index is not None else None,
                             "best_index": best_index})

    def publish(self, status: NullStatus, images: dict, counts: list[list[float]],
                spikes: SpikeTrains | None = None) -> None:
        """`counts`: the generation's counted presentations (one list per presentation, per
        channel): their mean per channel is the channel overview; `spikes`: for the PSTHs."""
        channels: list[float] = []
        if counts:
            width = min(len(c) for c in counts)
            channels = [float(x) for x in np.mean([c[:width] for c in counts], axis=0)] if width else []
        status.generation(self.generation, self.threads, images, self.timing, channels, spikes)


def peer_list(peers, joins: dict[str, int], now: float) -> list[dict]:
    """The peers event: each connected peer, when it was last heard, how often its name joined."""
    return [{"name": p.name, "role": p.role, "connected": True, "last_seen_s": round(now - p.last_seen, 2),
             "joins": joins.get(p.name, 1)} for p in peers]


def presentation_fate(kind: str, body, late: bool = False) -> dict:
    """The presentation event for a SHOWN or COUNTS report."""
    if kind == "shown":
        return {"pid": body.pid, "block_id": body.block_id, "fate": body.status, "dropped": body.dropped,
                "late": late}
    return {"pid": body.pid, "block_id": body.block_id, "fate": "counted" if body.status == "ok" else "missing",
            "late": late}


class LogForwarder(logging.Handler):
    """Warnings and errors of the server's loggers, as `warning` events."""

    def __init__(self, status: NullStatus):
        super().__init__(logging.WARNING)
        self.status = status

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.status.emit("warning", text=record.getMessage()[:500], level=record.levelname,
                             logger=record.name)
        except Exception:
            pass   # never let the status stream break logging
