"""A session's status folded from its status events: what a late subscriber gets.

The server's publisher folds every event it publishes into one `StatusState`
and answers a snapshot request with `snapshot()`; a dashboard starts from that
snapshot and folds the live events that follow (those with a larger `seq`).
A finished session's journal is turned into the same events
(xdream/dashboard/journal_events.py), so one fold serves the live and the finished view.

Bounded whatever the session's length: per generation only the summary
(scores' mean and max, reference mean, timing) is kept; images only for the
latest generation and the best so far of each thread; PSTHs only for the first
generation that had spike times and the latest, per thread.
"""

from __future__ import annotations

import collections
import time

RECENT_FATES = 2000      # presentations kept for the rate (presentations per second)
WARNINGS_KEPT = 50
RATE_WINDOW_S = 30.0


class StatusState:
    def __init__(self) -> None:
        self.seq = 0
        self.session: dict | None = None
        self.generations: list[dict] = []           # one summary per generation (all threads)
        self.latest: dict[str, dict] = {}           # thread -> its latest generation, with thumbnails
        self.best: dict[str, dict] = {}             # thread -> best image so far (thumbnail, score, generation)
        self.psth: dict[str, dict] = {}             # thread -> {"first", "latest"} PSTH (xdream/psth.py)
        self.rig: dict = {"shown": 0, "aborted": 0, "counted": 0, "missing": 0, "dropped_frames": 0,
                          "blocks": 0, "late": 0, "abort_reasons": {}}
        self.recent: collections.deque[float] = collections.deque(maxlen=RECENT_FATES)   # t of each fate
        self.peers: list[dict] = []
        self.state = "running"
        self.control: dict | None = None
        self.warnings: collections.deque[dict] = collections.deque(maxlen=WARNINGS_KEPT)
        self.ended: str | None = None

    def apply(self, event: dict) -> None:
        kind = event.get("kind")
        self.seq = max(self.seq, int(event.get("seq", 0)))
        fold = _FOLDS.get(str(kind))
        if fold is not None:
            fold(self, event)

    def rate(self, now: float | None = None) -> float:
        """Presentations (any fate) per second over the last RATE_WINDOW_S."""
        now = time.time() if now is None else now
        n = sum(1 for t in self.recent if now - t <= RATE_WINDOW_S)
        return n / RATE_WINDOW_S

    def snapshot(self) -> dict:
        return {"seq": self.seq, "session": self.session, "generations": list(self.generations),
                "latest": dict(self.latest), "best": dict(self.best), "psth": dict(self.psth),
                "rig": {**self.rig, "abort_reasons": dict(self.rig["abort_reasons"]),
                        "presentations_per_s": self.rate()},
                "peers": list(self.peers), "state": self.state, "control": self.control,
                "warnings": list(self.warnings), "ended": self.ended}

    @classmethod
    def from_snapshot(cls, snap: dict) -> StatusState:
        state = cls()
        state.seq = int(snap.get("seq", 0))
        state.session = snap.get("session")
        state.generations = list(snap.get("generations", []))
        state.latest = dict(snap.get("latest", {}))
        state.best = dict(snap.get("best", {}))
        state.psth = dict(snap.get("psth", {}))
        rig = dict(snap.get("rig", {}))
        rig.pop("presentations_per_s", None)
        state.rig.update(rig)
        state.peers = list(snap.get("peers", []))
        state.state = snap.get("state", "running")
        state.control = snap.get("control")
        state.warnings.extend(snap.get("warnings", []))
        state.ended = snap.get("ended")
        return state


def _session(s: StatusState, e: dict) -> None:
    s.session = e


def _block(s: StatusState, e: dict) -> None:
    s.rig["blocks"] += 1


def _presentation(s: StatusState, e: dict) -> None:
    fate = e.get("fate")
    if e.get("late"):
        s.rig["late"] += 1
        return
    if fate in ("shown", "aborted", "counted", "missing"):
        s.rig[fate] += 1
    if fate in ("shown", "aborted"):
        s.rig["dropped_frames"] += int(e.get("dropped") or 0)
        s.recent.append(float(e.get("t", time.time())))
    if fate == "aborted":
        why = str(e.get("why") or "aborted")[:80]
        s.rig["abort_reasons"][why] = s.rig["abort_reasons"].get(why, 0) + 1


def _generation(s: StatusState, e: dict) -> None:
    summary = {"generation": e["generation"], "t": e.get("t"), "timing": e.get("timing", {}),
               "channels": e.get("channels", []),
               "threads": [{k: v for k, v in th.items() if k not in ("images", "best_image", "scores", "ids", "psth")}
                           for th in e.get("threads", [])]}
    s.generations = [g for g in s.generations if g["generation"] != e["generation"]] + [summary]
    for th in e.get("threads", []):
        s.latest[th["thread"]] = {"generation": e["generation"], "ids": th.get("ids", []),
                                  "scores": th.get("scores", []), "images": th.get("images", [])}
        if th.get("psth"):   # only the first and the latest are kept: the summary stays small
            got = {"generation": e["generation"], **th["psth"]}
            s.psth[th["thread"]] = {"first": s.psth.get(th["thread"], {}).get("first", got), "latest": got}
        if th.get("best_image") is not None:
            s.best[th["thread"]] = {"generation": e["generation"], "score": th.get("best_score"),
                                    "image": th["best_image"]}


def _peers(s: StatusState, e: dict) -> None:
    s.peers = list(e.get("peers", []))


def _control(s: StatusState, e: dict) -> None:
    s.state = e.get("state", s.state)
    s.control = e


def _warning(s: StatusState, e: dict) -> None:
    s.warnings.append({"t": e.get("t"), "text": e.get("text", "")})


def _end(s: StatusState, e: dict) -> None:
    s.ended = str(e.get("reason", ""))
    s.state = "ended"


_FOLDS = {"session": _session, "block": _block, "presentation": _presentation, "generation": _generation,
          "peers": _peers, "control": _control, "warning": _warning, "end": _end}
