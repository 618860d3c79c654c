"""Blocks: what the presenter gets at once, and how far each one has got.

A block holds the generated images of every thread plus the reference images,
shuffled, each with a presentation id and an event code.  `BlockProgress`
collects the presenter's reports and the recorder's counts and says when the
block is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from server.optimizers.base import rng_state, set_rng_state
from server.references import ReferenceImage
from xdream import protocol, scoring
from xdream.errors import ProtocolError
from xdream.objective import Objective


@dataclass(frozen=True)
class Presentation:
    pid: str
    code: int
    kind: str            # 'generated' | 'reference'
    thread: str          # thread name; '' for references
    image_id: str        # candidate id, or 'ref/<name>'
    image: np.ndarray = field(repr=False)
    requeue_of: str = ""  # the aborted presentation this one repeats
    attempt: int = 0      # 0 for the first showing, n for the n-th re-queue

    def spec(self) -> protocol.PresentationSpec:
        h, w, _ = self.image.shape
        return protocol.PresentationSpec(self.pid, self.code, self.image_id, h, w)


@dataclass(frozen=True)
class ScheduledBlock:
    block_id: int
    generation: int
    presentations: list[Presentation]


class Scheduler:
    """Builds blocks; event codes run 1..max_code and wrap, never 0."""

    def __init__(self, references: list[ReferenceImage], rng: np.random.Generator,
                 max_event_code: int = 255, shuffle: bool = True):
        self.references = references
        self.rng = rng
        self.max_event_code = max_event_code
        self.shuffle = shuffle
        self.next_block_id = 0
        self._next_code = 1

    def build_block(self, generation: int, threads: dict[str, tuple[list[str], np.ndarray]]) -> ScheduledBlock:
        """`threads` maps a thread name to its candidate ids and their images."""
        items = [("generated", name, cid, img)
                 for name, (ids, images) in threads.items() for cid, img in zip(ids, images)]
        items += [("reference", "", f"ref/{ref.name}", ref.pixels) for ref in self.references]
        if len(items) > self.max_event_code:
            raise ValueError(f"a block of {len(items)} needs more than {self.max_event_code} event codes")
        order = self.rng.permutation(len(items)) if self.shuffle else np.arange(len(items))
        block_id = self.next_block_id
        self.next_block_id += 1
        presentations = []
        for i, k in enumerate(order):
            kind, thread, image_id, image = items[k]
            presentations.append(Presentation(f"b{block_id:04d}-{i:03d}", self._take_code(),
                                              kind, thread, image_id, image))
        return ScheduledBlock(block_id, generation, presentations)

    def requeue(self, aborted: Presentation) -> Presentation:
        """The same image again, later in the same block, with its own pid and code."""
        root = aborted.requeue_of or aborted.pid
        attempt = aborted.attempt + 1
        return Presentation(f"{root}r{attempt}", self._take_code(), aborted.kind, aborted.thread,
                            aborted.image_id, aborted.image, root, attempt)

    def state_dict(self) -> dict:
        """What a resumed session needs to build the next blocks exactly as this one would."""
        return {"rng": rng_state(self.rng), "next_block_id": self.next_block_id, "next_code": self._next_code}

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(self.rng, state["rng"])
        self.next_block_id = int(state["next_block_id"])
        self._next_code = int(state["next_code"])

    def _take_code(self) -> int:
        code = self._next_code
        self._next_code = code % self.max_event_code + 1
        return code


class BlockProgress:
    """Reports and counts of one block, checked as they arrive."""

    def __init__(self, block: ScheduledBlock):
        self.block = block
        self.by_pid = {p.pid: p for p in block.presentations}
        self.shown: dict[str, protocol.Shown] = {}
        self.counts: dict[str, protocol.Counts] = {}
        self.missing: dict[str, str] = {}   # pid -> why

    def add(self, presentation: Presentation) -> None:
        """A re-queued presentation joins the block."""
        self.block.presentations.append(presentation)
        self.by_pid[presentation.pid] = presentation

    def record_shown(self, report: protocol.Shown) -> bool:
        """True if new; False for an identical repeat (a resend after reconnect)."""
        return self._record(self.shown, report, "the presenter's report")

    def record_counts(self, counts: protocol.Counts) -> bool:
        return self._record(self.counts, counts, "the recorder's counts")

    def _record(self, store: dict, item, what: str) -> bool:
        self._check(item.block_id, item.pid)
        old = store.get(item.pid)
        if old is not None:
            if old != item:
                raise ProtocolError(f"{what} for {item.pid} were already reported, differently")
            return False
        store[item.pid] = item
        return True

    def _check(self, block_id: int, pid: str) -> None:
        if block_id != self.block.block_id:
            raise ProtocolError(f"report for block {block_id}, but block {self.block.block_id} is running")
        if pid not in self.by_pid:
            raise ProtocolError(f"unknown presentation id {pid!r} in block {block_id}")

    def outstanding(self) -> list[str]:
        """Pids still waiting: for the presenter's report, or, if shown, for counts."""
        waiting = []
        for pid in self.by_pid:
            if pid in self.missing:
                continue
            report = self.shown.get(pid)
            if report is None or (report.status == "shown" and pid not in self.counts):
                waiting.append(pid)
        return waiting

    def complete(self) -> bool:
        return not self.outstanding()

    def mark_missing(self, why: str) -> list[str]:
        pids = self.outstanding()
        for pid in pids:
            self.missing[pid] = why
        return pids

    def status(self, pid: str) -> str:
        shown, counts = self.shown.get(pid), self.counts.get(pid)
        return scoring.status(shown.status if shown else None, counts.status if counts else None)

    def response(self, pid: str, channel: int | Objective, subtract_baseline: bool) -> float:
        """Spike count of one presentation on one channel; NaN when not measured (xdream.scoring)."""
        counts = self.counts.get(pid)
        return scoring.response(self.status(pid), counts.counts if counts else None,
                                counts.baseline if counts else None, channel, subtract_baseline)
