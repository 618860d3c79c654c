"""A session folder read back: every presentation with what became of it.

Replay and export both start here.  The journal is read with
`xdream.journal_file.read_records` (a torn last record is dropped, an edited or
corrupt middle refuses), then folded into one `Presentation` per presentation
id, in the order the server sent them, with its report, its counts and the
score the server gave its image.  Inconsistencies that the server itself
would never have written (a report for a presentation never sent, a second
report that differs from the first) are collected in `problems`, each naming
its journal record, rather than raised: a replay lists them, an export warns.

A presentation's status, response and score follow the server's own rule,
xdream.scoring: 'aborted' if the presenter said so, 'shown' if shown and
counted 'ok', 'missing' otherwise.  Late and orphan reports (after their
block was closed) are kept in `late` but never scored, as the server never
scored them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xdream.journal_file import read_records
from xdream import config as config_mod, scoring
from xdream.errors import SessionError
from xdream.objective import Objective

SHOWN_FIELDS = ("status", "onset", "frames", "dropped", "trial")          # trial: None in older journals
COUNTS_FIELDS = ("status", "counts", "baseline", "onset", "spike_times")  # spike_times: likewise


@dataclass
class Presentation:
    pid: str
    block_id: int
    generation: int
    code: int
    kind: str              # generated | reference
    thread: str            # '' for references
    image_id: str
    requeue_of: str
    sent_t: float          # server wall clock: when its block record was journaled
    shown: dict | None = None    # the presenter's report: status, onset (presenter clock), frames, dropped, trial
    counts: dict | None = None   # the recorder's counts: status, counts, baseline, onset (rig clock), spike_times
    shown_by: str = ""           # the presenter that reported it (its hello's name)
    missing_why: str = ""        # the server closed it as missing (timeout, peer lost)
    nan_by_policy: bool = False  # aborted, and scored NaN rather than re-queued

    @property
    def status(self) -> str:
        return scoring.status(self.shown["status"] if self.shown is not None else None,
                              self.counts["status"] if self.counts is not None else None)

    def response(self, channel: int | Objective, subtract_baseline: bool) -> float:
        """The server's rule (xdream.scoring): the count on one channel, NaN if not measured."""
        counts = self.counts or {}
        return scoring.response(self.status, counts.get("counts"), counts.get("baseline"), channel,
                                subtract_baseline)


@dataclass
class ScoresRecord:
    generation: int
    thread: str
    ids: list[str]
    scores: np.ndarray     # NaN where the journal says null
    seq: int


@dataclass
class SessionRecord:
    folder: Path
    cfg: config_mod.Config
    records: list[dict]
    presentations: list[Presentation]
    by_pid: dict[str, Presentation]
    scores: dict[tuple[int, str], ScoresRecord]
    block_records: list[dict]            # the 'block' records as journaled (a re-queue adds one)
    late: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rig_clock: list[dict] = field(default_factory=list)   # the recorders' (wall, rig) pairs, as journaled

    @property
    def session_id(self) -> str:
        start = self.first("session_start")
        return start.get("session", self.folder.name) if start else self.folder.name

    def first(self, kind: str) -> dict | None:
        return next((r for r in self.records if r["kind"] == kind), None)

    @property
    def generations(self) -> list[int]:
        """Every generation that has a block or a scores record, ascending."""
        return sorted({p.generation for p in self.presentations} | {g for g, _ in self.scores})

    def codes(self, generation: int, thread: str) -> tuple[list[str], np.ndarray]:
        path = codes_path(self.folder, generation, thread)
        if not path.is_file():
            raise SessionError(f"{path} is missing")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return [str(i) for i in npz["ids"]], npz["codes"]
        except (OSError, ValueError, KeyError) as exc:
            raise SessionError(f"{path} cannot be read: {exc}") from None

    def of_generation(self, generation: int) -> list[Presentation]:
        return [p for p in self.presentations if p.generation == generation]

    def image_scores(self, generation: int, channel: int | Objective, ids: list[str]) -> np.ndarray:
        """The server's score of each image (xdream.scoring: the mean over its measured
        repeats, NaN if none), recomputed from the journaled counts."""
        return scoring.image_scores(self._responses(generation, channel), ids)

    def reference_mean(self, generation: int, channel: int | Objective) -> float:
        return scoring.reference_mean(self._responses(generation, channel))

    def _responses(self, generation: int, channel: int | Objective) -> dict[str, list[float]]:
        subtract = self.cfg.response.subtract_baseline
        return scoring.by_image((p.image_id, p.response(channel, subtract)) for p in self.of_generation(generation))


def codes_path(folder: Path, generation: int, thread: str) -> Path:
    """Where a session keeps a generation's codes of one thread (ids and codes, npz)."""
    return Path(folder) / "codes" / f"gen{generation:03d}_{thread}.npz"


def load_session(folder) -> SessionRecord:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise SessionError(f"{folder} is not a session folder (no config.json)")
    cfg = config_mod.load(folder / "config.json")
    records = read_records(folder)
    session = SessionRecord(folder, cfg, records, [], {}, {}, [])
    for r in records:
        try:
            _fold(session, r)
        except (KeyError, TypeError, ValueError) as exc:
            session.problems.append(f"journal record seq {r.get('seq')} ({r.get('kind')}) is malformed: {exc!r}")
    return session


def _fold(s: SessionRecord, r: dict) -> None:
    kind, seq = r["kind"], r["seq"]
    if kind == "block":
        s.block_records.append(r)
        for spec in r["presentations"]:
            p = Presentation(spec["pid"], int(r["block_id"]), int(r["generation"]), int(spec["code"]),
                             spec["kind"], spec["thread"], spec["image_id"], spec.get("requeue_of", ""),
                             float(r["t"]))
            old = s.by_pid.get(p.pid)
            if old is None:
                s.by_pid[p.pid] = p
                s.presentations.append(p)
            elif (old.block_id, old.code, old.image_id) != (p.block_id, p.code, p.image_id):
                s.problems.append(f"journal record seq {seq}: presentation {p.pid} was sent before "
                                  f"with another block, code or image")
    elif kind in ("shown", "counts"):
        sent = s.by_pid.get(r["pid"])
        if sent is None or sent.block_id != r["block_id"]:
            s.problems.append(f"journal record seq {seq}: {kind} for {r['pid']} of block {r['block_id']}, "
                              f"a presentation the journal never sent")
            return
        fields = SHOWN_FIELDS if kind == "shown" else COUNTS_FIELDS
        item = {k: r.get(k) for k in fields}
        old = getattr(sent, kind)
        if old is None:
            setattr(sent, kind, item)
            if kind == "shown":
                sent.shown_by = str(r.get("peer", ""))
        elif old != item:
            s.problems.append(f"journal record seq {seq}: a second {kind} for {sent.pid} that differs from the first")
    elif kind == "missing":
        for pid in r["pids"]:
            if pid in s.by_pid:
                s.by_pid[pid].missing_why = s.by_pid[pid].missing_why or str(r.get("why", ""))
            else:
                s.problems.append(f"journal record seq {seq}: {pid} marked missing but never sent")
    elif kind == "abort_scored_nan":
        if r["pid"] in s.by_pid:
            s.by_pid[r["pid"]].nan_by_policy = True
    elif kind == "scores":
        key = (int(r["generation"]), str(r["thread"]))
        if key in s.scores:
            s.problems.append(f"journal record seq {seq}: generation {key[0]} of thread {key[1]} scored twice")
            return
        scores = np.array([math.nan if v is None else float(v) for v in r["scores"]])
        ids = [str(i) for i in r["ids"]]
        if len(ids) != len(scores):
            raise ValueError(f"{len(ids)} ids but {len(scores)} scores")
        s.scores[key] = ScoresRecord(key[0], key[1], ids, scores, seq)
    elif kind == "rig_clock":
        s.rig_clock.append({"peer": str(r["peer"]), "wall": float(r["wall"]), "rig": float(r["rig"])})
    elif kind.startswith(("late_", "orphan_")):
        s.late.append(r)

