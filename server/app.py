"""The evolution server: one asyncio loop, one ROUTER socket, peers as DEALERs.

Tasks on the loop: the receiver (validates and dispatches every message), the
heartbeat/liveness watcher, and the session itself (generation after
generation).  Torch work runs in a one-thread executor, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np
import zmq
import zmq.asyncio

from server import faults
from server import status as status_mod
from server.control import OPERATOR, SessionControl
from server.journal import JOURNAL, Journal, JournalRead, JournalWriteError, safe_json
from server.machine import machine_info
from server.references import load_references
from server.resume import Recovery, checkpoint_arrays, last_endpoint, resume_point
from server.scheduler import BlockProgress, Presentation, ScheduledBlock, Scheduler
from server.threads import EvolutionThread, build_threads
from xdream import curve, protocol, scoring
from xdream.endpoints import bind_socket, check_bind
from xdream.errors import ProtocolError, SessionError
from xdream.protocol import MsgType

log = logging.getLogger(__name__)


class SessionStopped(SessionError):
    """A signal (SIGTERM, SIGINT) stopped the session; it was closed as on any error."""

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name}: session_end journaled, the peers told")
        self.signal_name = signal_name

    @property
    def exit_status(self) -> int:
        return 128 + int(signal.Signals[self.signal_name])


@dataclass
class Peer:
    routing_id: bytes
    role: str
    name: str
    channels: int
    last_seen: float
    peer_id: str
    features: frozenset[str] = frozenset()   # what its FEATURES took up of its welcome's
    told_paused: bool = False                # a PAUSE sent to it, not yet followed by RESUME


@dataclass
class Prepared:
    """A generation's codes, images and block, ready to present."""
    generation: int
    asked: dict
    images: dict[str, np.ndarray]
    progress: BlockProgress
    to_send: list[Presentation]
    resent: bool = False        # a resumed server re-sends what the presenter has not reported


class EvolutionServer:
    """`resume=True` continues the session in `session_dir` where it stopped
    (docs/journal.md); `bind` overrides where it listens (by default a resumed
    server binds the endpoint the session last listened on).

    Start-up checks everything that can fail before anything is written: the
    threads (optimizers, generators, weights), the references, and for a
    resume the folder's lock, journal and checkpoint (here); the bind (first
    thing in `run`).  Only then is a new session folder made, or a resumed
    one's journal appended to, so a failed start leaves nothing behind."""

    def __init__(self, cfg, session_dir: Path, *, resume: bool = False, bind: str | None = None,
                 insecure: bool = False):
        self.cfg = cfg
        self.insecure = insecure   # allow a bind beyond loopback without CURVE (xdream/curve.py)
        net = cfg.network
        self.curve_keys = (curve.server_keys(net.curve_server_secret_key, net.curve_allowed_clients)
                           if net.curve_server_secret_key else None)
        self.curve_auth: curve.ServerAuth | None = None
        self.folder = Path(session_dir)
        self.resume = resume
        self.session_id = self.folder.name
        self.start_generation = 0
        self._recovery: Recovery | None = None
        self._prepared: Prepared | None = None
        self._journaled: set[tuple[str, str]] = set()   # (kind, pid) of reports on the journal
        self._sent_before: dict[int, set[str]] = {}     # block id -> pids, sent before a restart
        self.peers: dict[bytes, Peer] = {}
        self.progress: BlockProgress | None = None
        # a closed block keeps only its pids (a late report needs no more): its images and reports
        # stay out of memory for the rest of the session (docs/benchmarks.md, Soak)
        self._closed: dict[int, frozenset[str]] = {}
        self.endpoint = ""
        self._stop_signal: str | None = None   # SIGTERM/SIGINT asked the session to stop
        self._changed = asyncio.Event()   # set whenever a report, count or peer arrives
        self._aborted: list[str] = []     # pids reported aborted, not yet re-queued
        self._seq = 0
        self._n_peers = 0
        size = cfg.presentation.image_size_px
        self.threads, sched_rng = build_threads(cfg)
        self.refs = load_references(cfg.reference.folder, cfg.reference.count, size)
        self.scheduler = Scheduler(self.refs, sched_rng, cfg.presentation.max_event_code,
                                   cfg.presentation.shuffle)
        self._journal: Journal | None = None
        if resume:
            self._journal = Journal(self.folder, resume=True)   # locked: a second server stops here
            try:
                self._restore()
            except BaseException:
                self.journal.close()
                raise
            self.bind = bind or last_endpoint(self.recovered.records) or cfg.network.bind
        else:
            if self.folder.exists():
                raise SessionError(f"session folder {self.folder} exists already; sessions are never "
                                   f"overwritten (to continue one: xdream serve --resume {self.folder})")
            self.bind = bind or cfg.network.bind
        check_bind(self.bind)
        curve.check_bind(self.bind, self.curve_keys, insecure)   # before the session folder
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
        # the status stream and the controls (server/status.py, server/control.py)
        self.status = status_mod.make_status(net.status_bind, net.status_pub_port)
        self.control = SessionControl(lambda kind, **kw: self.journal.write(kind, **kw), self.status.emit)
        self._joins: dict[str, int] = {}
        self._report: status_mod.GenerationReport | None = None
        self._telling: set[asyncio.Task] = set()   # PAUSE / RESUME on their way (a task keeps a reference)
        self._telling_lock = asyncio.Lock()         # one at a time: a quick pause-resume ends resumed

    @property
    def recovered(self) -> JournalRead:
        """What a resume read of the journal (resumed servers only)."""
        read = self.journal.recovered
        if read is None:
            raise SessionError(f"{self.folder}: not opened for a resume")
        return read

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise SessionError(f"no session folder yet: {self.folder} is made when the server has bound (run)")
        return self._journal

    def _check_journal(self) -> None:
        """The disk refused a journal write (in a handler, say): stop the session here."""
        if self._journal is not None and self._journal.failed is not None:
            raise self._journal.failed

    def _restore(self) -> None:
        """A resume's checks, before anything is written: the session is unfinished, and the
        checkpoint is the one the journal says was written last (docs/journal.md)."""
        journal = self.journal
        records = self.recovered.records
        ends = [r for r in records if r["kind"] == "session_end"]
        if ends and ends[-1]["reason"] == "finished" and ends[-1]["seq"] == records[-1]["seq"]:
            raise SessionError(f"session {self.session_id} finished; there is nothing to resume")
        if not any(r["kind"] == "session_start" for r in records):
            raise SessionError(f"{journal.folder / JOURNAL} has no session_start record: not a session "
                               f"this server can resume")
        arrays = journal.load_checkpoint()
        self.start_generation = resume_point(records, arrays, journal.folder, self.threads, self.scheduler)
        self._checkpoint_found = arrays is not None
        self._recovery = Recovery(records, self.start_generation)
        self._journaled = {(r["kind"], r["pid"]) for r in records if r["kind"] in ("shown", "counts")}
        # what the session sent before the restart: a late report must name one of these
        for r in records:
            if r["kind"] == "block":
                self._sent_before.setdefault(r["block_id"], set()).update(p["pid"] for p in r["presentations"])
        journal.summary = [r for r in journal.summary if r["generation"] < self.start_generation]

    def _begin(self) -> None:
        """After the bind: make the session folder (or append to the resumed one's journal)."""
        if self.resume:
            journal = self.journal
            dropped = self.recovered.dropped_bytes
            in_flight = self._recovery.block if self._recovery is not None else None
            log.warning("resuming session %s at generation %d%s", self.session_id, self.start_generation,
                        f" (a torn last record of {dropped} bytes was cut from the journal)" if dropped else "")
            journal.write("session_resumed", session=self.session_id, generation=self.start_generation,
                          checkpoint=self._checkpoint_found, torn_bytes=dropped,
                          block_in_flight=in_flight["block_id"] if in_flight else None)
            journal.sync()
            return
        self._journal = journal = Journal(self.folder)
        journal.save_config(self.cfg)
        for ref in self.refs:
            journal.save_image_later(f"references/{ref.name}.png", ref.pixels)
        journal.write("session_start", session=self.session_id, machine=machine_info(),
                      metadata=asdict(self.cfg.metadata), spike_times_ms=self.cfg.response.spike_times_ms,
                      threads=[{"name": t.name, "channel": t.channel, "objective": t.objective.to_dict(),
                                "generator": t.generator.name, "device": str(t.generator.device),
                                "precision": t.generator.precision,
                                "generator_weights": t.generator.cfg.weights,
                                "generator_sha256": t.generator.weights_sha256} for t in self.threads])
        journal.sync()

    # ------------------------------------------------------------------ run
    async def run(self, on_endpoint: Callable[[str], None] | None = None,
                  on_generation: Callable[[int, list[dict]], None] | None = None) -> list[dict]:
        """Bind, start (or resume) the session, run it to its end.  SIGTERM and SIGINT (when
        run on the main thread) stop it as an error would: `session_end` with the signal,
        END to the peers, then `SessionStopped`."""
        ctx = zmq.asyncio.Context()
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone peer raises, not vanishes
        # a larger frame closes its connection before libzmq allocates it; a peer that sends
        # faster than the loop reads is held back by TCP, not queued here without end
        self.socket.setsockopt(zmq.MAXMSGSIZE, inbound_frame_limit())
        self.socket.setsockopt(zmq.RCVHWM, INBOUND_QUEUE)
        if self.curve_keys is not None:
            self.curve_auth = curve.ServerAuth(ctx, self.curve_keys)
            curve.secure_server(self.socket, self.curve_keys)
        tasks: list[asyncio.Task] = []
        signals = self._catch_signals()
        log_forwarder = status_mod.LogForwarder(self.status)
        reason = "finished"
        begun = False
        try:
            self.endpoint = bind_socket(self.socket, self.bind)   # before the folder: a failed bind leaves none
            self.status.start(self._on_control)
            self._begin()
            begun = True
            self._status_start(log_forwarder)
            if self._recovery is not None and self.start_generation < self.cfg.session.generations:
                # rebuild the block in flight before any peer's report is read
                self._prepared = await self._prepare(self.start_generation)
                self.progress = self._prepared.progress
            self.journal.write("listening", endpoint=self.endpoint, bind=self.bind)
            self.journal.sync()
            if on_endpoint:
                on_endpoint(self.endpoint)
            tasks = [asyncio.create_task(self._receive_loop(), name="receiver"),
                     asyncio.create_task(self._heartbeat_loop(), name="heartbeats")]
            for generation in range(self.start_generation, self.cfg.session.generations):
                records = await self._run_generation(generation)
                if on_generation:
                    on_generation(generation, records)
                if self.control.stop_by is not None and generation + 1 < self.cfg.session.generations:
                    reason = f"stopped: by {self.control.stop_by} after generation {generation}"
                    break
            return self.journal.summary
        except BaseException as exc:
            if self._stop_signal is not None and isinstance(exc, asyncio.CancelledError):
                reason = f"stopped: {self._stop_signal}"
                raise SessionStopped(self._stop_signal) from None
            reason = f"stopped: {exc!r}"
            raise
        finally:
            self._release_signals(signals)
            failed = self._journal is not None and self._journal.failed is not None
            for peer in list(self.peers.values()) if not failed else ():
                # (a journal the disk refused: no END, the session is to be resumed; as after a
                # crash, the peers keep their unacknowledged reports for the resumed server)
                await self._send(peer.routing_id, MsgType.END, protocol.End(reason[:2000]))
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._journal is not None:
                try:
                    if begun and self._journal.failed is None:
                        self._journal.write("session_end", reason=reason)
                        self._journal.sync()
                except JournalWriteError:
                    pass   # the disk is full: the error that stopped the session says so
                finally:
                    self._journal.close()
            logging.getLogger("server").removeHandler(log_forwarder)
            self.status.emit("end", reason=reason)
            self.status.close()
            self.socket.close(linger=1000)
            if self.curve_auth is not None:
                self.curve_auth.stop()
            ctx.term()
            self._executor.shutdown(wait=True)

    def _catch_signals(self) -> list[int]:
        """SIGTERM (and SIGINT) cancel the session task, so that `run` ends it as it ends on an
        error.  Only possible on the main thread's loop; elsewhere the caller owns signals."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        caught: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig, task)
                caught.append(sig)
            except (RuntimeError, ValueError, NotImplementedError):   # not the main thread; Windows
                pass
        return caught

    def _on_signal(self, sig: int, task: asyncio.Task | None) -> None:
        name = signal.Signals(sig).name
        if self._stop_signal is None:
            log.warning("%s: stopping the session (session_end is journaled, the peers are told)", name)
            self._stop_signal = name
            if task is not None:
                task.cancel()

    @staticmethod
    def _release_signals(caught: list[int]) -> None:
        loop = asyncio.get_running_loop()
        for sig in caught:
            loop.remove_signal_handler(sig)

    async def _run_generation(self, generation: int) -> list[dict]:
        t0 = time.perf_counter()
        report = self._report = status_mod.GenerationReport(generation)
        prepared, self._prepared = self._prepared, None
        if prepared is None or prepared.generation != generation:
            prepared = await self._prepare(generation)
        progress = await self._present(prepared)
        faults.reach("before_tell")
        t_tell = time.perf_counter()
        records = []
        for t in self.threads:
            records.append(self._score_thread(t, progress, prepared.asked[t.name], prepared.images[t.name],
                                              generation, time.perf_counter() - t0))
        self.journal.sync()   # the generation's scores are durable before its checkpoint
        faults.reach("checkpoint")
        self.journal.save_checkpoint(checkpoint_arrays(generation, self.threads, self.scheduler))
        self.journal.write("checkpoint", generation=generation)
        self.journal.sync()
        report.add_time("tell", time.perf_counter() - t_tell)
        report.add_time("total", time.perf_counter() - t0)
        span = self.cfg.response.spike_times_ms
        report.publish(self.status, prepared.images, [c.counts for c in progress.counts.values() if c.status == "ok"],
                       status_mod.SpikeTrains(progress, span) if span else None)
        return records

    async def _prepare(self, generation: int) -> Prepared:
        """Ask, generate, save the codes, build the block.  For the generation a resumed
        server found in flight, check all of it against the journal and replay its reports."""
        loop = asyncio.get_running_loop()
        asked = {t.name: t.optimizer.ask() for t in self.threads}
        t_generate = time.perf_counter()
        images = await loop.run_in_executor(self._executor, self._generate, asked)
        if self._report is not None:
            self._report.add_time("generate", time.perf_counter() - t_generate)
        recovery = self._recovery if self._recovery and self._recovery.generation == generation else None
        for t in self.threads:
            if recovery:
                recovery.check_codes(self.journal.folder, t.name, asked[t.name].ids, asked[t.name].codes)
            self.journal.save_codes(generation, t.name, asked[t.name].ids, asked[t.name].codes)
        block = self.scheduler.build_block(
            generation, {name: (asked[name].ids, images[name]) for name in asked})
        progress = BlockProgress(block)
        if recovery is None or recovery.block is None:
            return Prepared(generation, asked, images, progress, list(block.presentations))
        recovery.check_block(block)
        self._aborted = recovery.replay(progress, self.scheduler)
        unreported = recovery.unreported(progress)
        log.warning("resumed block %d (generation %d): %d reports and %d counts on the journal; "
                    "%d presentations not yet reported are sent again", block.block_id, generation,
                    len(progress.shown), len(progress.counts), len(unreported))
        return Prepared(generation, asked, images, progress, unreported, resent=True)

    def _generate(self, asked) -> dict[str, np.ndarray]:
        return {t.name: t.generator.generate(asked[t.name].codes) for t in self.threads}

    async def _present(self, prepared: Prepared) -> BlockProgress:
        """Send one block and wait for its reports and counts (or the timeout).

        Presentations reported aborted are re-queued at the end of the block as
        new presentations of the same image (session.abort_policy = "requeue",
        at most session.max_requeues times each), or left NaN ("nan")."""
        await self._wait_for_peers()
        await self._while_paused()
        report = self._report or status_mod.GenerationReport(prepared.generation)
        t_send = time.perf_counter()
        progress = prepared.progress
        block = progress.block
        self.progress = progress
        if prepared.resent:
            if prepared.to_send:
                self.journal.write("block_resent", block_id=block.block_id, generation=block.generation,
                                   pids=[p.pid for p in prepared.to_send])
                await self._send_presentations(block, prepared.to_send, journal=False)
        else:
            await self._send_presentations(block, prepared.to_send)
        faults.reach("block_sent")
        report.mark("send", t_send)
        t_sent = time.perf_counter()
        timeout = self.cfg.session.block_timeout_s
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while True:
            self._check_journal()
            now = time.monotonic()
            if self.control.paused:   # a paused session's block timer stands still
                deadline += now - last
            last = now
            if not any(pid not in progress.shown and pid not in progress.missing for pid in progress.by_pid):
                report.mark("present", t_sent)
            if self._aborted and not self.control.paused:  # (a last abort may still be re-queued)
                extra = self._requeue(progress)
                if extra:
                    await self._send_presentations(block, extra)
                    deadline = time.monotonic() + timeout  # the re-queued ones need their own time
            if progress.complete() and not self._aborted:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                missing = progress.mark_missing("timeout")
                log.error("block %d timed out after %.0f s: %d presentations missing",
                          block.block_id, timeout, len(missing))
                self.journal.write("missing", block_id=block.block_id, pids=missing, why="timeout")
                self._status_missing(block.block_id, missing, "timeout")
                break
            await self._wait_changed(min(left, 1.0))
        report.mark("present", t_sent)
        report.mark("counts", t_sent)
        self._aborted.clear()
        self._closed[block.block_id] = frozenset(progress.by_pid)
        self.progress = None
        return progress

    async def _send_presentations(self, block: ScheduledBlock, presentations, journal: bool = True) -> None:
        """Journal (durably), then send to recorders (first: the rig's first event code
        should find its block already known) and presenters."""
        if journal:
            self.journal.write("block", block_id=block.block_id, generation=block.generation,
                               presentations=[{"pid": p.pid, "code": p.code, "kind": p.kind,
                                               "thread": p.thread, "image_id": p.image_id,
                                               "requeue_of": p.requeue_of} for p in presentations])
        self.journal.sync()
        self.status.emit("block", block_id=block.block_id, generation=block.generation, n=len(presentations))
        specs = [p.spec() for p in presentations]
        for peer in sorted(self.peers.values(), key=lambda peer: peer.role != "recorder"):
            if peer.role == "recorder":
                await self._send(peer.routing_id, MsgType.BLOCK_INFO,
                                 protocol.BlockInfo(block.block_id, block.generation, specs))
            else:
                await self._send(peer.routing_id, MsgType.BLOCK,
                                 protocol.Block(block.block_id, block.generation, specs),
                                 images=[p.image for p in presentations])

    def _requeue(self, progress: BlockProgress) -> list:
        """New presentations for the aborted ones, by the session's policy."""
        session = self.cfg.session
        extra: list[Presentation] = []
        for pid in self._aborted:
            original = progress.by_pid[pid]
            if session.abort_policy != "requeue" or original.attempt >= session.max_requeues:
                self.journal.write("abort_scored_nan", pid=pid, image_id=original.image_id)
                continue
            if len(progress.by_pid) + len(extra) >= self.scheduler.max_event_code:
                log.warning("block %d: no event codes left to re-queue %s; scored NaN",
                            progress.block.block_id, pid)
                self.journal.write("abort_scored_nan", pid=pid, image_id=original.image_id,
                                   why="no event codes left in the block")
                continue
            extra.append(self.scheduler.requeue(original))
        self._aborted.clear()
        for p in extra:
            progress.add(p)
        return extra

    def _score_thread(self, t: EvolutionThread, progress: BlockProgress, asked, images,
                      generation: int, seconds: float) -> dict:
        subtract = self.cfg.response.subtract_baseline
        responses = scoring.by_image((p.image_id, progress.response(p.pid, t.objective, subtract))
                                     for p in progress.block.presentations)
        scores = scoring.image_scores(responses, asked.ids)   # NaN where no repeat was measured
        recovery = self._recovery if self._recovery and self._recovery.generation == generation else None
        same = recovery.same_scores(t.name, scores) if recovery else None
        if same is False:
            raise SessionError(f"resume: generation {generation}'s scores for thread {t.name} differ from "
                               f"those journaled before the crash")
        if same is None:   # journaled before a crash: not twice
            self.journal.write("scores", generation=generation, thread=t.name, ids=asked.ids,
                               scores=scores.tolist())
        t.optimizer.tell(asked.ids, scores)
        stats = scoring.GenerationStats.of(scores)
        record = {"generation": generation, "thread": t.name, "mean": stats.mean, "max": stats.max,
                  "ref_mean": scoring.reference_mean(responses), "n_missing": stats.n_missing,
                  "seconds": round(seconds, 3)}
        improved = stats.best >= 0 and scores[stats.best] > t.best_score
        if self._report is not None:
            refs = sorted(k for k in responses if k.startswith("ref/"))
            self._report.scored(t.name, t.channel, asked.ids, scores, record,
                                dict(zip(refs, scoring.image_scores(responses, refs).tolist())),
                                stats.best if improved else None)
        if stats.best >= 0:
            best = stats.best
            self.journal.save_image_later(f"best/gen{generation:03d}_{t.name}.png", images[best])
            if scores[best] > t.best_score:
                t.best_score = float(scores[best])
                self.journal.save_image_later(f"best/best_{t.name}.png", images[best])
                record["best_image"] = f"best/best_{t.name}.png"
        self.journal.add_summary(record)
        return record

    async def _wait_for_peers(self) -> None:
        deadline = time.monotonic() + self.cfg.session.wait_for_peers_s
        warned = False
        while not self._have_peers():
            self._check_journal()
            if time.monotonic() > deadline:
                raise SessionError(f"no presenter and recorder connected within "
                                   f"{self.cfg.session.wait_for_peers_s:.0f} s (server at {self.endpoint})")
            if not warned:
                log.info("waiting for a presenter and a recorder at %s", self.endpoint)
                warned = True
            await self._wait_changed(1.0)

    def _have_peers(self) -> bool:
        roles = {p.role for p in self.peers.values()}
        return {"presenter", "recorder"} <= roles

    # ---------------------------------------------------------- the wire
    async def _send(self, routing_id: bytes, msg_type: MsgType, body, images=()) -> bool:
        """Send without waiting: a peer that stops reading (its queue at the high-water mark)
        loses this message rather than stalling the loop.  False if it was not sent."""
        self._seq += 1
        frames = protocol.encode(msg_type, body, session=self.session_id, seq=self._seq, images=images)
        try:
            await self.socket.send_multipart([routing_id, *frames], copy=False, flags=zmq.DONTWAIT)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone; EAGAIN: it does not read
            log.warning("could not send %s to peer %r: %s", msg_type.value, routing_id[:32], exc)
            return False
        return True

    async def _receive_loop(self) -> None:
        """Receive until cancelled: whatever a message holds, it is answered or dropped,
        and nothing a handler or the journal raises ends this loop."""
        while True:
            frames = await self.socket.recv_multipart(copy=False)
            try:
                await self._receive(frames)
            except asyncio.CancelledError:
                raise
            except JournalWriteError:   # the disk refused the journal: the session loop stops on it
                self._changed.set()
                return
            except Exception as exc:  # a bug in a handler, or the journal, must not stop the session
                log.exception("handler failed on a message from %r", frames[0].bytes[:32])
                try:
                    self.journal.write("handler_error", peer=repr(frames[0].bytes[:32]), error=repr(exc)[:500])
                except Exception:
                    log.exception("could not journal the handler error either")

    async def _receive(self, frames) -> None:
        routing_id = frames[0].bytes
        try:
            msg = protocol.decode(frames[1:])
            await self._dispatch(routing_id, msg)
        except ProtocolError as exc:
            await self._reject(routing_id, frames[1:], exc)

    async def _reject(self, routing_id: bytes, frames, exc: Exception) -> None:
        peer = self.peers.get(routing_id)
        who = peer.name if peer else repr(routing_id)
        raw = _header_for_journal(frames)
        reason = str(exc)[:1000]   # a reason may quote a value from the peer: never megabytes
        if peer is None and isinstance(raw, dict) and raw.get("type") == MsgType.HEARTBEAT.value:
            # the queued heartbeats of a peer of the server before a restart: an error reply
            # makes it say hello; they carry no data, so they get a log line, not a journal line
            log.info("heartbeat from unknown peer %s: asking it to say hello", who)
            ref = raw.get("seq", -1)
            await self._send(routing_id, MsgType.ERROR, protocol.Error(reason, _ref_seq(ref)))
            return
        log.error("rejected a message from %s: %s", who, reason)
        self.journal.write("rejected", peer=who, reason=reason, header=safe_json(raw))
        ref = raw.get("seq", -1) if isinstance(raw, dict) else -1
        await self._send(routing_id, MsgType.ERROR, protocol.Error(reason, _ref_seq(ref)))

    async def _dispatch(self, routing_id: bytes, msg: protocol.Message) -> None:
        if msg.type == MsgType.HELLO:
            return await self._on_hello(routing_id, msg)
        peer = self.peers.get(routing_id)
        if peer is None:
            raise ProtocolError(f"{msg.type.value} before hello: {protocol.HELLO_FIRST}")
        if msg.session != self.session_id:
            # a resumed server keeps its session id (the folder's name): reports made before the
            # restart carry it and pass; another session's reports are not this session's data
            raise ProtocolError(f"message for session {msg.session[:100]!r}, this is {self.session_id!r}")
        peer.last_seen = time.monotonic()
        handler = {
            MsgType.HEARTBEAT: self._on_heartbeat,
            MsgType.SHOWN: self._on_shown,
            MsgType.COUNTS: self._on_counts,
            MsgType.BYE: self._on_bye,
            MsgType.RIG_CLOCK: self._on_rig_clock,
            MsgType.PAUSED: self._on_paused,
            MsgType.RESUMED: self._on_paused,
            MsgType.FEATURES: self._on_features,
        }.get(msg.type)
        if handler is None:
            raise ProtocolError(f"a {peer.role} may not send {msg.type.value}")
        if msg.type in _SENDER_ROLE and peer.role != _SENDER_ROLE[msg.type]:
            raise ProtocolError(f"a {peer.role} may not send {msg.type.value}")
        await handler(peer, msg)

    async def _on_hello(self, routing_id: bytes, msg: protocol.Message) -> None:
        hello: protocol.Hello = msg.body
        if hello.role == "recorder":
            # a thread's channel the recorder lacks: every count would be refused and each block
            # would time out; refused here instead (_reject: ERROR reply, log line, journal record)
            beyond = [t for t in self.threads if t.objective.needed > hello.channels]
            if beyond:
                t = beyond[0]
                raise ProtocolError(f"recorder {hello.name!r} refused: thread {t.name} listens on "
                                    f"{t.objective.describe()}, and the recorder has {hello.channels} channels "
                                    f"(0..{hello.channels - 1}); connect a recorder with at least "
                                    f"{max(b.objective.needed for b in beyond)} channels or change "
                                    f"threads.channel / threads.objective")
        known = self.peers.get(routing_id)
        if known is not None and (known.role, known.name) == (hello.role, hello.name):
            # a second hello on the same connection (it answered several 'say hello first'):
            # welcome it again, but it joined only once
            known.last_seen = time.monotonic()
            net = self.cfg.network
            await self._send(routing_id, MsgType.WELCOME,
                             protocol.Welcome(known.peer_id, net.heartbeat_s, net.peer_timeout_s,
                                              self._settings_for(hello.role)))
            return
        if known is not None:
            raise ProtocolError(f"this connection said hello as {known.role} {known.name!r} already; "
                                f"a new name or role needs a new connection")
        # a name is not an identity: it passes to a new connection only once the old one is gone
        replaced = []
        for old in [p for p in self.peers.values() if p.name == hello.name]:
            silent = time.monotonic() - old.last_seen
            if silent > self.cfg.network.peer_timeout_s:
                replaced.append((old, f"replaced by a new connection (silent for {silent:.1f} s)"))
            elif not await self._send(old.routing_id, MsgType.HEARTBEAT, protocol.Heartbeat()):
                replaced.append((old, "replaced by a new connection (the old one is closed)"))
            else:
                log.warning("refused a hello as %r: a live %s has that name (heard %.1f s ago)",
                            hello.name, old.role, silent)
                raise ProtocolError(f"the name {hello.name!r} belongs to a connected {old.role} (heard "
                                    f"{silent:.1f} s ago); a second connection may take it only once the "
                                    f"first is silent for peer_timeout_s ({self.cfg.network.peer_timeout_s:.1f} s)")
        self._n_peers += 1
        peer = Peer(routing_id, hello.role, hello.name, hello.channels, time.monotonic(),
                    f"{hello.role}-{self._n_peers}")
        self.peers[routing_id] = peer   # before the old one goes: its role is not left empty mid-block
        for old, why in replaced:
            self._drop_peer(old, why)
        self.journal.write("peer_joined", peer=hello.name, role=hello.role, channels=hello.channels)
        self._joins[hello.name] = self._joins.get(hello.name, 0) + 1
        self._status_peers()
        log.info("%s %s joined", hello.role, hello.name)
        net = self.cfg.network
        await self._send(routing_id, MsgType.WELCOME,
                         protocol.Welcome(peer.peer_id, net.heartbeat_s, net.peer_timeout_s,
                                          self._settings_for(hello.role)))
        if self.progress is not None and hello.role == "recorder":
            # a recorder that joins mid-block still needs to know what is on screen
            block = self.progress.block
            await self._send(routing_id, MsgType.BLOCK_INFO, protocol.BlockInfo(
                block.block_id, block.generation, [p.spec() for p in block.presentations]))
        self._changed.set()

    def _settings_for(self, role: str) -> dict:
        """The peer's config table, and which of protocol.FEATURES it may use (an older peer
        ignores both the key and the features; docs/protocol.md, "Features")."""
        if role == "presenter":
            return asdict(self.cfg.presentation) | {"features": ["trial", "pause"]}
        features = ["rig_clock"] + (["spike_times"] if self.cfg.response.spike_times_ms else []) + ["pause"]
        return asdict(self.cfg.response) | {"features": features}

    async def _on_rig_clock(self, peer: Peer, msg: protocol.Message) -> None:
        """Journal the recorder's (wall, rig) pair beside the server's own wall time at receipt."""
        self.journal.write("rig_clock", peer=peer.name, wall=msg.body.wall, rig=msg.body.rig,
                           server_wall=time.time())
        self.journal.sync()
        await self._send(peer.routing_id, MsgType.ACK, protocol.Ack(msg.seq))

    async def _on_heartbeat(self, peer: Peer, msg: protocol.Message) -> None:
        pass

    async def _on_paused(self, peer: Peer, msg: protocol.Message) -> None:
        """The presenter's pause key (PAUSED / RESUMED): journaled, the block timer stands still."""
        source = f"presenter {peer.name}"
        if msg.type == MsgType.PAUSED:
            self.control.pause(source, peer.name, msg.body.reason)
        else:
            self.control.resume(source, peer.name, msg.body.reason)
        self.journal.sync()
        await self._send(peer.routing_id, MsgType.ACK, protocol.Ack(msg.seq))
        await self._tell_peers()   # the recorders: no code is due while paused
        self._changed.set()

    async def _on_features(self, peer: Peer, msg: protocol.Message) -> None:
        """A peer takes up features of its welcome (docs/protocol.md, "Features"); it is told of
        a pause already held."""
        offered = self._settings_for(peer.role)["features"]
        unknown = [f for f in msg.body.features if f not in offered]
        if unknown:
            raise ProtocolError(f"features {unknown} were not offered to a {peer.role} (offered: {offered})")
        peer.features = frozenset(msg.body.features)
        self.journal.write("peer_features", peer=peer.name, role=peer.role, features=sorted(peer.features))
        await self._tell_peers()

    async def _tell_peers(self) -> None:
        """Bring every peer that took up "pause" in line with the holds: PAUSE or RESUME.
        A presenter follows the operator's hold (it stops after the presentation on screen; its
        own pause key it knows of); a recorder follows the session's, any source's (no event
        code is due while paused: its aligner's timeout stands still).  A peer without the
        feature is told nothing: a presenter shows its block to the end, and no next one is sent."""
        async with self._telling_lock:
            await self._tell_peers_now()

    async def _tell_peers_now(self) -> None:
        operator = self.control.holds.get(OPERATOR)
        holders = ", ".join(sorted(self.control.holds))
        for peer in list(self.peers.values()):
            if peer.role == "presenter":
                pause, why = operator is not None, f"operator {operator}"
            else:
                pause, why = self.control.paused, f"paused by {holders}"
            if "pause" not in peer.features or peer.told_paused == pause:
                continue
            body: protocol.Pause | protocol.Resume = protocol.Pause(why) if pause else protocol.Resume("resumed")
            msg_type = MsgType.PAUSE if pause else MsgType.RESUME
            if await self._send(peer.routing_id, msg_type, body):
                peer.told_paused = pause
                self.journal.write(f"told_{msg_type.value}", peer=peer.name, why=body.reason)
        self.journal.sync()

    def _tell_peers_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._tell_peers())
        self._telling.add(task)
        task.add_done_callback(self._told)

    def _told(self, task: asyncio.Task) -> None:
        self._telling.discard(task)
        if not task.cancelled() and task.exception() is not None:   # (a journal that failed stops the session)
            log.error("could not tell the peers of a pause or resume: %r", task.exception())

    async def _on_bye(self, peer: Peer, msg: protocol.Message) -> None:
        self._drop_peer(peer, f"said bye: {msg.body.reason}")

    async def _on_shown(self, peer: Peer, msg: protocol.Message) -> None:
        await self._record(peer, msg, "shown", lambda progress: progress.record_shown(msg.body))

    async def _on_counts(self, peer: Peer, msg: protocol.Message) -> None:
        for name in ("counts", "baseline"):   # every list is bounded by what the hello declared
            n = len(getattr(msg.body, name))
            if n > peer.channels:
                raise ProtocolError(f"{name} for {msg.body.pid} have {n} channels; recorder {peer.name!r} "
                                    f"said hello with {peer.channels}")
        self._check_spike_times(peer, msg.body)
        needed = max(t.objective.needed for t in self.threads)
        if msg.body.status == "ok" and len(msg.body.counts) < needed:
            raise ProtocolError(f"counts for {msg.body.pid} have {len(msg.body.counts)} channels, "
                                f"the threads need {needed}")
        await self._record(peer, msg, "counts", lambda progress: progress.record_counts(msg.body))

    def _check_spike_times(self, peer: Peer, body: protocol.Counts) -> None:
        """Bounded by the hello's channels and by the span this server asked for, ascending."""
        if not body.spike_times:
            return
        span = self.cfg.response.spike_times_ms
        if not span:
            raise ProtocolError(f"counts for {body.pid} carry spike times, which this session did not ask for")
        if len(body.spike_times) > peer.channels:
            raise ProtocolError(f"spike_times for {body.pid} have {len(body.spike_times)} channels; recorder "
                                f"{peer.name!r} said hello with {peer.channels}")
        # us; one more either side: an offset is rounded down from float seconds (spike_times.py)
        lo, hi = round(span[0] * 1000) - 1, round(span[1] * 1000)
        for ch, offsets in enumerate(body.spike_times):   # plain Python: 4x faster than numpy on short lists
            if offsets and (offsets[0] < lo or offsets[-1] > hi or any(b < a for a, b in zip(offsets, offsets[1:]))):
                raise ProtocolError(f"spike_times for {body.pid}, channel {ch}, are not ascending within "
                                    f"the span {span} ms ({lo}..{hi} us): first {offsets[0]}, last {offsets[-1]}")

    async def _record(self, peer: Peer, msg: protocol.Message, kind: str, record) -> None:
        """Journal first, then acknowledge: an acked report is always on disk."""
        body = msg.body
        in_flight = self.progress is not None and self.progress.block.block_id == body.block_id
        progress = self.progress if in_flight else None
        closed = self._closed.get(body.block_id)
        sent = closed if closed is not None else self._sent_before.get(body.block_id, ())
        if not in_flight and body.pid not in sent:   # the block in flight checks its own
            # a block (or a presentation of one) this session never sent: nothing to keep
            raise ProtocolError(f"{kind} for presentation {body.pid[:100]!r} of block {body.block_id}, "
                                f"which this session never sent")
        if (kind, body.pid) in self._journaled and not in_flight:
            # on the journal already: its ACK was lost (the server restarted); not counted twice
            log.info("%s for %s is on the journal already: acknowledged again", kind, body.pid)
        elif progress is None:
            # late: the block was closed without it (by this server, or before a restart); keep it
            # on the journal all the same
            self.journal.write(f"late_{kind}", peer=peer.name, **asdict(body))
            log.warning("late %s for %s (block %d %s)", kind, body.pid, body.block_id,
                        "already closed" if closed is not None else "closed before a restart")
        elif record(progress):
            self.journal.write(kind, peer=peer.name, **asdict(body))
            self._journaled.add((kind, body.pid))
            if kind == "shown" and body.status == "aborted":
                self._aborted.append(body.pid)
            self.status.emit("presentation", **status_mod.presentation_fate(kind, body))
        self.journal.sync()   # an acknowledged report is on disk, not only in the OS's cache
        faults.reach("ack")
        await self._send(peer.routing_id, MsgType.ACK, protocol.Ack(msg.seq))
        self._changed.set()

    # ------------------------------------------------ status and controls
    def _status_start(self, log_forwarder: logging.Handler) -> None:
        logging.getLogger("server").addHandler(log_forwarder)
        cfg = self.cfg
        self.status.emit("session", session=self.session_id, endpoint=self.endpoint, resumed=self.resume,
                         start_generation=self.start_generation, generations=cfg.session.generations,
                         population={t.name: int(getattr(t.optimizer, "population", 0) or 0) for t in self.threads},
                         threads=[{"name": t.name, "channel": t.channel, "generator": t.generator.name,
                                   "optimizer": type(t.optimizer).__name__} for t in self.threads],
                         references=[r.name for r in self.refs],
                         config={"block_timeout_s": cfg.session.block_timeout_s,
                                 "abort_policy": cfg.session.abort_policy,
                                 "image_size_px": cfg.presentation.image_size_px,
                                 "response": asdict(cfg.response)})

    def _status_peers(self) -> None:
        self.status.emit("peers", peers=status_mod.peer_list(self.peers.values(), self._joins, time.monotonic()))

    def _status_missing(self, block_id: int, pids: list[str], why: str) -> None:
        for pid in pids:
            self.status.emit("presentation", pid=pid, block_id=block_id, fate="missing", why=why, late=False)

    def _on_control(self, op: str, who: str) -> None:
        """A control from the status socket (called on the loop)."""
        if self._journal is None or self._journal.failed is not None:
            log.warning("control %s from %s ignored: no session journal to record it", op, who)
            return
        if op == "pause":
            self.control.pause(OPERATOR, who)
        elif op == "resume":
            self.control.resume(OPERATOR, who)
        elif op == "stop":
            self.control.stop(who)
        self._tell_peers_soon()
        self._changed.set()

    async def _wait_changed(self, timeout_s: float) -> None:
        """Until a peer's message changes something, or timeout_s.  Not asyncio.wait_for: on
        Python 3.11 it swallows a cancel that arrives as the event is set (CPython gh-86296),
        and a SIGTERM that lands while reports stream in then never ends the session (the
        fuzz test's server ran on after its stop); asyncio.timeout passes the cancel on."""
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()
        except TimeoutError:
            pass

    async def _while_paused(self) -> None:
        """Before a block is sent: wait while the session is paused (peers stay alive)."""
        while self.control.paused:
            self._check_journal()
            await self._wait_changed(1.0)

    # ----------------------------------------------------------- liveness
    async def _heartbeat_loop(self) -> None:
        net = self.cfg.network
        while True:
            await asyncio.sleep(net.heartbeat_s)
            now = time.monotonic()
            for peer in list(self.peers.values()):
                if now - peer.last_seen > net.peer_timeout_s:
                    self._drop_peer(peer, f"silent for {now - peer.last_seen:.1f} s "
                                          f"(timeout {net.peer_timeout_s:.1f} s)")
                else:
                    await self._send(peer.routing_id, MsgType.HEARTBEAT, protocol.Heartbeat())
            self._status_peers()

    def _drop_peer(self, peer: Peer, why: str) -> None:
        if self.peers.pop(peer.routing_id, None) is None:
            return
        log.error("%s %s lost: %s", peer.role, peer.name, why)
        self.journal.write("peer_lost", peer=peer.name, role=peer.role, why=why)
        progress = self.progress
        if progress is not None and not any(p.role == peer.role for p in self.peers.values()):
            # nobody left to report the rest of this block: close it as missing now
            missing = progress.mark_missing(f"{peer.role} {peer.name} lost")
            if missing:
                self.journal.write("missing", block_id=progress.block.block_id, pids=missing,
                                   why=f"{peer.role} {peer.name} lost")
                self._status_missing(progress.block.block_id, missing, f"{peer.role} {peer.name} lost")
        self.control.resume(f"presenter {peer.name}", peer.name, "presenter lost")
        self._tell_peers_soon()
        self._status_peers()
        self._changed.set()


_SENDER_ROLE = {MsgType.SHOWN: "presenter", MsgType.COUNTS: "recorder", MsgType.RIG_CLOCK: "recorder",
                MsgType.PAUSED: "presenter", MsgType.RESUMED: "presenter"}
INBOUND_QUEUE = 100   # messages queued per connection before libzmq stops reading its socket


def inbound_frame_limit() -> int:
    """ZMQ_MAXMSGSIZE for the ROUTER: the largest frame a peer may legally send it.

    libzmq applies the limit to each frame, and peers send the server headers only
    (hello, heartbeat, shown, counts, bye; images travel the other way), which
    `decode` refuses above MAX_HEADER_BYTES.  So the limit is that, whatever the
    config: the largest block (image_size_px^2 * 3 per image frame, 8192 px at most)
    bounds what the server sends, not what it must accept."""
    return protocol.MAX_HEADER_BYTES


def _ref_seq(seq) -> int:
    """The seq an ERROR refers to: the header's, if it is one a reply can carry."""
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 1 << 63 else -1


def _header_for_journal(frames) -> dict | str:
    """What can be read of a rejected message, so that nothing sent is lost."""
    import msgpack
    try:
        raw = frames[0].bytes if hasattr(frames[0], "bytes") else bytes(frames[0])
        header = msgpack.unpackb(raw[:protocol.MAX_HEADER_BYTES], raw=False, strict_map_key=False)
        return header if isinstance(header, dict) else repr(header)[:2000]
    except Exception:
        return repr(frames[0])[:200] if frames else ""
