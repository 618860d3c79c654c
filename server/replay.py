"""`xdream replay SESSION`: re-derive every generation from the recorded responses.

The optimizers are deterministic given their seeds and their tells, so the
threads are rebuilt from the session's config.json with the server's own
`build_threads` (the same seeds, the same random streams) and driven through
the session generation by generation:

  1. ask() each thread; the asked ids and codes must equal codes/genNNN_T.npz
     bit for bit;
  2. the blocks are rebuilt with the server's Scheduler (same random stream)
     and must equal the journaled blocks: order, presentation ids, event codes,
     and each re-queue's id and code;
  3. each image's score is recomputed from the journaled counts, by the
     server's rule (the target channel's count, minus the baseline if the
     config says so, averaged over the measured repeats; NaN if none was), and
     must equal the journaled score;
  4. tell() each thread the journaled scores, as the server did.

The first generation (and thread) where anything differs is named, and the
replay stops there: later generations follow from it.  An edited score, a
deleted or edited count, or an edited codes file is found this way; a record
deleted from the journal without renumbering the rest is found by the journal
reader (its seq numbers are consecutive).  What is not detectable: an edit
that keeps every check consistent, e.g. a count changed together with its
score in a way that does not change the optimizer's next codes (selection
among parents is random, and a small change of weights may not change it).

Bit for bit holds on the machine and kernel path that made the session: the
`session_start` record's `machine` field (server/machine.py) says which, and a
mismatch on another machine or kernel path names both.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import numpy as np

from server.machine import describe, machine_info
from server.references import ReferenceImage, builtin_references, load_references
from server.scheduler import Scheduler
from xdream.journal_file import JOURNAL
from xdream.session_reader import SessionRecord, load_session
from server.threads import build_threads
from xdream.errors import SessionError, XdreamError
from xdream.progress import progress

log = logging.getLogger(__name__)

_CODES = re.compile(r"^gen(\d+)_.+\.npz$")


@dataclass
class Mismatch:
    generation: int
    thread: str      # '' when it concerns the whole block
    what: str

    def __str__(self) -> str:
        who = f", thread {self.thread}" if self.thread else ""
        return f"generation {self.generation}{who}: {self.what}"


@dataclass
class ReplayResult:
    folder: str
    generations_checked: int = 0          # generations whose codes, blocks and scores all matched
    threads: list[str] = field(default_factory=list)
    mismatch: Mismatch | None = None
    problems: list[str] = field(default_factory=list)   # journal structure, before any generation
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatch is None and not self.problems

    def lines(self) -> list[str]:
        out = [f"journal: {p}" for p in self.problems]
        if self.mismatch:
            out.append(f"MISMATCH at {self.mismatch}")
        out += [f"note: {n}" for n in self.notes]
        verdict = "reproduced" if self.ok else "NOT reproduced"
        if not self.threads:   # refused before any thread was built: nothing was re-derived
            out.append(f"{verdict}: {self.folder} cannot be replayed")
            return out
        out.append(f"{verdict}: {self.generations_checked} generations of threads "
                   f"{', '.join(self.threads)} re-derived from the recorded responses ({self.folder})")
        return out


def replay(folder) -> ReplayResult:
    """Re-derive the session in `folder`; never raises for a session that differs."""
    try:
        session = load_session(folder)
        check_replayable(session)
    except XdreamError as exc:
        result = ReplayResult(str(folder))
        result.problems.append(str(exc))
        return result
    return Replayer(session).run()


def check_replayable(session: SessionRecord) -> None:
    """What a replay needs before it can say 'reproduced': a journal with records, a
    session_start, and every generation of codes/ on the journal.  Zero generations
    checked is no evidence, so an empty or foreign folder is refused, not passed."""
    journal = session.folder / JOURNAL
    if not session.records:
        size = journal.stat().st_size if journal.is_file() else 0
        raise SessionError(f"{journal} holds no record ({size} bytes): nothing to replay")
    if session.first("session_start") is None:
        raise SessionError(f"{journal} has no session_start record (its first is {session.records[0]['kind']!r}"
                           f" at seq {session.records[0]['seq']}): not a whole session journal")
    on_disk = sorted({int(m[1]) for p in (session.folder / "codes").glob("gen*_*.npz")
                      if (m := _CODES.match(p.name))})
    journaled = set(session.generations) | {int(r["generation"]) for r in session.records
                                            if r["kind"] == "checkpoint"}
    extra = [g for g in on_disk if g not in journaled]
    # the last asked generation may have codes and no block yet (the session stopped there)
    if extra and (len(extra) > 1 or extra[0] != (max(journaled) + 1 if journaled else 0)):
        raise SessionError(f"{session.folder / 'codes'} holds generation(s) {extra[:10]} that the journal "
                           f"has no block or scores for: the journal is not this folder's whole record "
                           f"(truncated, or replaced)")


class Replayer:
    def __init__(self, session: SessionRecord):
        self.s = session
        self.result = ReplayResult(str(session.folder), problems=list(session.problems))
        self.threads, sched_rng = build_threads(session.cfg)
        self.result.threads = [t.name for t in self.threads]
        cfg = session.cfg
        self.scheduler = Scheduler(_references(session), sched_rng, cfg.presentation.max_event_code,
                                   cfg.presentation.shuffle)
        self.blocks: dict[int, list[dict]] = {}      # generation -> its block records, in journal order
        for r in session.block_records:
            self.blocks.setdefault(int(r["generation"]), []).append(r)

    def run(self) -> ReplayResult:
        generations = self.s.generations
        if generations != list(range(len(generations))):
            self.result.problems.append(f"the journal's generations are not 0..n-1: {generations[:10]}")
            return self.result
        ended = self.s.first("session_end")
        for g in progress(generations, "replay: generations", total=len(generations), unit="gen"):
            try:
                mismatch = self._generation(g, last=g == generations[-1])
            except XdreamError as exc:
                mismatch = Mismatch(g, "", str(exc))
            if mismatch is not None:
                mismatch.what += self._other_machine()
                self.result.mismatch = mismatch
                return self.result
            if all((g, t.name) in self.s.scores for t in self.threads):
                self.result.generations_checked += 1
        if ended is None:
            self.result.notes.append("the journal has no session_end record: the server stopped "
                                     "without closing the session (crashed, or still running)")
        return self.result

    def _other_machine(self) -> str:
        """'' on the machine (and kernel path) that made the session; else both named, because
        codes re-derived with other float kernels need not equal the recorded ones bit for bit."""
        start = self.s.first("session_start") or {}
        recorded, here = start.get("machine"), machine_info()
        if recorded == here:
            return ""
        return (f" (recorded on {describe(recorded)}, replayed on {describe(here)}: bit-for-bit holds "
                f"only on the machine and kernel path that made the session)")

    def _generation(self, g: int, last: bool) -> Mismatch | None:
        asked = {}
        for t in self.threads:
            cand = t.optimizer.ask()
            ids, codes = self.s.codes(g, t.name)
            if ids != cand.ids:
                return Mismatch(g, t.name, f"codes/gen{g:03d}_{t.name}.npz holds ids {ids[:3]}..., "
                                           f"the optimizer asks for {cand.ids[:3]}...")
            if codes.shape != cand.codes.shape or codes.dtype != cand.codes.dtype \
                    or codes.tobytes() != cand.codes.tobytes():
                return Mismatch(g, t.name, _code_difference(g, t.name, codes, cand.codes))
            asked[t.name] = cand
        if g not in self.blocks:
            if last:
                self.result.notes.append(f"generation {g} was asked but never presented (the session stopped)")
                return None
            return Mismatch(g, "", "no block was journaled for this generation")
        mismatch = self._check_blocks(g, asked)
        if mismatch:
            return mismatch
        for t in self.threads:
            rec = self.s.scores.get((g, t.name))
            if rec is None:
                if last:
                    self.result.notes.append(f"generation {g} of thread {t.name} was presented but never "
                                             f"scored (the session stopped)")
                    continue
                return Mismatch(g, t.name, "no scores record in the journal")
            if rec.ids != asked[t.name].ids:
                return Mismatch(g, t.name, "the scores record's ids are not the asked ids")
            recomputed = self.s.image_scores(g, t.objective, rec.ids)
            for cid, journaled, mine in zip(rec.ids, rec.scores, recomputed):
                if not _same(journaled, mine):
                    return Mismatch(g, t.name, f"the journal scores {cid} {_fmt(journaled)}, its recorded "
                                               f"counts give {_fmt(mine)} (scores record seq {rec.seq})")
            t.optimizer.tell(rec.ids, rec.scores)
        return None

    def _check_blocks(self, g: int, asked) -> Mismatch | None:
        """The scheduler, fed the same ids, must build the journaled block and re-queues."""
        records = self.blocks[g]
        no_pixels: dict = {name: (c.ids, [None] * len(c.ids)) for name, c in asked.items()}   # ids and order only
        block = self.scheduler.build_block(g, no_pixels)
        first = records[0]
        if int(first["block_id"]) != block.block_id:
            return Mismatch(g, "", f"block id {first['block_id']} in the journal, {block.block_id} rebuilt")
        built = {p.pid: p for p in block.presentations}
        want = [(p.pid, p.code, p.image_id) for p in block.presentations]
        got = [(p["pid"], p["code"], p["image_id"]) for p in first["presentations"]]
        if got != want:
            i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            return Mismatch(g, "", f"block {block.block_id} differs at presentation {i}: the journal has "
                                   f"{got[i] if i < len(got) else 'nothing'}, the scheduler builds "
                                   f"{want[i] if i < len(want) else 'nothing'}")
        for r in records[1:]:
            for spec in r["presentations"]:
                if spec["pid"] in built:   # a block re-sent whole (a resumed server): nothing new
                    continue
                original = built.get(spec.get("requeue_of", ""))
                if original is None:
                    return Mismatch(g, "", f"{spec['pid']} re-queues a presentation the block never had")
                latest = max((p for p in built.values() if p.requeue_of == original.pid or p is original),
                             key=lambda p: p.attempt)
                again = self.scheduler.requeue(latest)
                if (again.pid, again.code, again.image_id) != (spec["pid"], spec["code"], spec["image_id"]):
                    return Mismatch(g, "", f"re-queue {spec['pid']} (code {spec['code']}) differs from the "
                                           f"scheduler's {again.pid} (code {again.code})")
                built[again.pid] = again
        return None


def _references(session: SessionRecord) -> list[ReferenceImage]:
    """The reference names, in the server's order (pixels do not matter for the order)."""
    cfg = session.cfg
    size = cfg.presentation.image_size_px
    if not cfg.reference.folder:
        return builtin_references(cfg.reference.count, size)
    try:
        return load_references(cfg.reference.folder, cfg.reference.count, size)
    except (XdreamError, OSError):
        # the folder is on the rig's machine: the session keeps the references as shown
        stored = sorted((session.folder / "references").glob("*.png"))[:cfg.reference.count]
        if len(stored) < cfg.reference.count:
            raise SessionError(f"reference.folder {cfg.reference.folder!r} is not here and the session "
                               f"holds {len(stored)} of its {cfg.reference.count} reference images") from None
        return [ReferenceImage(p.stem, np.zeros((1, 1, 3), np.uint8)) for p in stored]


def _code_difference(g: int, thread: str, saved: np.ndarray, asked: np.ndarray) -> str:
    where = f"codes/gen{g:03d}_{thread}.npz"
    if saved.shape != asked.shape:
        return f"{where} holds codes of shape {saved.shape}, the optimizer asks for {asked.shape}"
    if saved.dtype != asked.dtype:
        return f"{where} holds {saved.dtype} codes, the optimizer asks for {asked.dtype}"
    flat_s, flat_a = saved.reshape(len(saved), -1), asked.reshape(len(asked), -1)
    rows = np.flatnonzero((flat_s != flat_a).any(axis=1) | (np.isnan(flat_s) != np.isnan(flat_a)).any(axis=1))
    r = int(rows[0]) if len(rows) else 0
    diff = float(np.nanmax(np.abs(flat_s[r] - flat_a[r]))) if len(rows) else 0.0
    return (f"{where}: {len(rows)} of {len(saved)} codes differ from the optimizer's, the first at row {r} "
            f"(largest difference {diff:.3g})")


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _fmt(v: float) -> str:
    return "NaN" if math.isnan(v) else repr(float(v))
