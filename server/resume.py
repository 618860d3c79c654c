"""What a resumed server needs from a session folder: the checkpoint of the
last finished generation, and the journal's record of the generation that was
in flight when the server died.

The generation in flight is not restarted from scratch: the resumed server
asks the restored optimizers again (the same codes: their random streams are
restored), builds the block again (the same pids and event codes: the
scheduler's stream and counters are restored), and checks both against what
the journal and codes/ hold.  Then it replays that block's journaled reports,
re-queues and missing marks into the new BlockProgress, and sends only the
presentations the presenter has not reported yet (docs/journal.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np

from server.optimizers.base import from_arrays, to_arrays
from server.scheduler import BlockProgress, ScheduledBlock, Scheduler
from xdream import protocol
from xdream.errors import SessionError
from server.journal import CHECKPOINT
from xdream.session_reader import codes_path

log = logging.getLogger(__name__)


# ----------------------------------------------------------------- checkpoint
def checkpoint_arrays(generation: int, threads, scheduler: Scheduler) -> dict[str, np.ndarray]:
    """After `generation` was told: every optimizer's state, the scheduler's, the best scores."""
    arrays: dict[str, np.ndarray] = {}
    for i, t in enumerate(threads):
        arrays.update(to_arrays(t.optimizer.state_dict(), f"thread{i}/"))
    meta = {"generation": generation, "threads": [t.name for t in threads],
            "best_scores": [t.best_score for t in threads], "scheduler": scheduler.state_dict()}
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def restore_checkpoint(arrays: dict[str, np.ndarray], threads, scheduler: Scheduler) -> int:
    """Load a checkpoint into freshly built threads; returns the next generation to run."""
    state = from_arrays(arrays)
    meta = json.loads(str(state.pop("meta")))
    names = [t.name for t in threads]
    if meta["threads"] != names:
        raise SessionError(f"the checkpoint is of threads {meta['threads']}, the config has {names}")
    for i, t in enumerate(threads):
        t.optimizer.load_state_dict(state[f"thread{i}"])
        t.best_score = float(meta["best_scores"][i])
    scheduler.load_state_dict(meta["scheduler"])
    return int(meta["generation"]) + 1


def resume_point(records: list[dict], arrays: dict[str, np.ndarray] | None, folder: Path,
                 threads, scheduler: Scheduler) -> int:
    """The generation a resume starts at, with the checkpoint (if any) loaded into `threads`
    and `scheduler`.  The journal is the truth: its `checkpoint` records say which generation
    was checkpointed last (N), and the file must be that checkpoint, or N+1's (the server
    died between writing the file and its record).  A missing, unreadable or older file is
    refused, naming it: starting over would re-run finished generations and overwrite their
    codes and journal records."""
    path = Path(folder) / CHECKPOINT
    marks = [r for r in records if r["kind"] == "checkpoint"]
    last = int(marks[-1]["generation"]) if marks else None
    scored = sorted({int(r["generation"]) for r in records if r["kind"] == "scores"})
    if arrays is None:
        if last is not None:
            raise SessionError(f"{path} is missing, but the journal says generation {last} was checkpointed "
                               f"(record seq {marks[-1]['seq']}): resuming without it would run generations "
                               f"0..{last} again over their codes and records. Put the file back (a backup), "
                               f"or start a new session")
        start = 0
    else:
        try:
            start = restore_checkpoint(arrays, threads, scheduler)
        except SessionError as exc:
            raise SessionError(f"{path}: {exc}") from None
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise SessionError(f"{path} is not a checkpoint of this session's threads ({type(exc).__name__}: "
                               f"{str(exc)[:200]})") from None
        expected = (0,) if last is None else (last + 1, last + 2)
        if start not in expected:
            said = "no generation" if last is None else f"generation {last}"
            raise SessionError(f"{path} is the checkpoint of generation {start - 1}, but the journal says "
                               f"{said} was checkpointed last: the file is not the one this session wrote "
                               f"last (restored from an older copy?); not resuming over finished generations")
    finished = [g for g in scored if g > start]
    if finished:
        raise SessionError(f"the journal holds scores of generation {finished[0]}, after generation {start} "
                           f"where {path.name} resumes: resuming would overwrite finished generations")
    return start


def last_endpoint(records: list[dict]) -> str | None:
    """Where the session's last server listened: peers reconnect there."""
    for r in reversed(records):
        if r["kind"] == "listening":
            return r["endpoint"]
    return None


# --------------------------------------------------------- the block in flight
class Recovery:
    """The journal's record of generation `generation`, which was in flight."""

    def __init__(self, records: list[dict], generation: int):
        self.generation = generation
        self.block: dict | None = None       # the block's first 'block' record
        self.after: list[dict] = []          # every record after it
        self.scores: dict[str, list] = {}    # thread -> scores already journaled for this generation
        for i, r in enumerate(records):
            if r["kind"] == "block" and r.get("generation") == generation and self.block is None:
                self.block = r
                self.after = records[i + 1:]
            if r["kind"] == "scores" and r.get("generation") == generation:
                self.scores[r["thread"]] = r["scores"]

    def check_codes(self, folder: Path, thread: str, ids: list[str], codes: np.ndarray) -> None:
        path = codes_path(folder, self.generation, thread)
        if not path.is_file():
            return
        with np.load(path, allow_pickle=False) as saved:
            if list(saved["ids"]) != list(ids) or not np.array_equal(saved["codes"], codes):
                raise SessionError(f"resume: thread {thread}'s codes for generation {self.generation} differ "
                                   f"from {path}: the restored optimizer is not the one that stopped")

    def check_block(self, block: ScheduledBlock) -> None:
        if self.block is None:
            return
        journaled = [(p["pid"], p["code"], p["image_id"]) for p in self.block["presentations"]]
        rebuilt = [(p.pid, p.code, p.image_id) for p in block.presentations]
        if self.block["block_id"] != block.block_id or journaled != rebuilt:
            raise SessionError(f"resume: block {block.block_id} of generation {self.generation} rebuilt "
                               f"differently from the journal's block {self.block['block_id']}")

    def replay(self, progress: BlockProgress, scheduler: Scheduler) -> list[str]:
        """Put the journaled reports, re-queues and missing marks of this block into
        `progress`; returns the pids reported aborted and not yet re-queued or scored NaN."""
        if self.block is None:
            return []
        block_id = progress.block.block_id
        aborted: list[str] = []
        for r in self.after:
            kind = r["kind"]
            if kind == "block" and r["block_id"] == block_id:
                for p in r["presentations"]:
                    self._requeue(progress, scheduler, p, aborted)
            elif kind == "shown" and r["block_id"] == block_id:
                report = _body(protocol.Shown, r)
                progress.record_shown(report)
                if report.status == "aborted":
                    aborted.append(report.pid)
            elif kind == "counts" and r["block_id"] == block_id:
                progress.record_counts(_body(protocol.Counts, r))
            elif kind == "missing" and r["block_id"] == block_id:
                for pid in r["pids"]:
                    progress.missing[pid] = r.get("why", "")
            elif kind == "abort_scored_nan" and r["pid"] in progress.by_pid:
                if r["pid"] in aborted:
                    aborted.remove(r["pid"])
        return aborted

    @staticmethod
    def _requeue(progress: BlockProgress, scheduler: Scheduler, journaled: dict, aborted: list[str]) -> None:
        root = journaled["requeue_of"]
        earlier = [p for p in progress.by_pid.values() if (p.requeue_of or p.pid) == root]
        if not root or not earlier:
            raise SessionError(f"resume: journaled re-queue {journaled['pid']} repeats no presentation of "
                               f"block {progress.block.block_id}")
        last = max(earlier, key=lambda p: p.attempt)
        again = scheduler.requeue(last)
        if (again.pid, again.code) != (journaled["pid"], journaled["code"]):
            raise SessionError(f"resume: re-queue of {last.pid} rebuilt as {again.pid} code {again.code}, "
                               f"the journal has {journaled['pid']} code {journaled['code']}")
        progress.add(again)
        if last.pid in aborted:
            aborted.remove(last.pid)

    def unreported(self, progress: BlockProgress) -> list:
        """Presentations the presenter has not reported (and not marked missing): sent again."""
        return [p for p in progress.block.presentations
                if p.pid not in progress.shown and p.pid not in progress.missing]

    def same_scores(self, thread: str, scores: np.ndarray) -> bool | None:
        """None if this generation's scores were not journaled; else whether they match."""
        old = self.scores.get(thread)
        if old is None:
            return None
        journaled = np.array([math.nan if s is None else s for s in old], dtype=float)
        return journaled.shape == scores.shape and bool(np.array_equal(journaled, scores, equal_nan=True))


def _body(cls, record: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})
