"""A session's journal as tables: one row per presentation, one per generation and thread,
one per thread.

Computed once from the folded journal (xdream/session_reader.py) and used by the export
(server/export.py: CSV and NWB), the notebook reader (xdream/notebook.py: pandas frames) and
the report (server/report.py).  Plain lists of dicts here: no pandas needed.

The clock of `time`: the rig's, unshifted (server/export.py's docstring says why).  A
presentation's time is the recorder's onset; one with no rig onset (aborted, or counts missing)
gets its presenter onset moved onto the rig clock by the median rig-minus-presenter offset of its
block's counted presentations (of the nearest block that has any; a session with no counts at all
keeps the presenter's clock).  One that never reached the screen has no time (NaN).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from xdream.objective import Objective
from xdream.scoring import GenerationStats
from xdream.session_reader import Presentation, SessionRecord


PRESENTATION_COLUMNS = [
    ("pid", "presentation id, unique in the session"),
    ("block_id", "the block it was sent in"),
    ("generation", "the generation of its block"),
    ("thread", "the evolution thread of a generated image; empty for references"),
    ("kind", "generated or reference"),
    ("image_id", "stable image id: thread/gGGG/NNNNN, or ref/NAME"),
    ("requeue_of", "the aborted presentation this one repeats (empty if none)"),
    ("event_code", "the event code sent to the rig at onset"),
    ("status", "shown (and counted), aborted (fixation break) or missing (never reported or not counted)"),
    ("nan_by_policy", "aborted and scored NaN instead of re-queued"),
    ("missing_why", "why the server closed it as missing"),
    ("time", "onset on the rig clock (s, unshifted); NaN if never on screen"),
    ("duration", "reported on-frames times the frame period (s)"),
    ("presenter_onset", "flip time of its first frame, presenter clock (s)"),
    ("rig_onset", "the event code's time in the recording system (s)"),
    ("trial", "the presenter's fixation trial (its own numbering, per presenter); -1 if not reported"),
    ("presenter", "the presenter that reported it (its hello's name)"),
    ("frames", "on-frames shown"),
    ("dropped_frames", "frames that took longer than 1.5 refresh periods"),
    ("response", "its thread's objective (threads.objective: the target channel's count by default) over "
                 "the counts (minus baseline if configured); NaN if not measured"),
    ("score", "the score the server gave its image (mean over measured repeats), from the journal"),
]


@dataclass
class Tables:
    presentations: list[dict]
    generations: list[dict]
    channels: int
    reference_time: dt.datetime           # the wall time at rig time 0 (see the module docstring)
    notes: list[str] = field(default_factory=list)
    spikes: dict[str, list[list[int]]] = field(default_factory=dict)   # pid -> per channel, us from onset
    spike_span_ms: list[float] = field(default_factory=list)
    threads: list[dict] = field(default_factory=list)       # one row per thread (thread_rows)
    references: list[dict] = field(default_factory=list)    # per generation, reference image and channel


def tables(session: SessionRecord) -> Tables:
    cfg = session.cfg
    channels = max([len(p.counts["counts"]) for p in session.presentations
                    if p.counts and p.counts.get("counts")] or [0])
    period = 1.0 / cfg.presentation.frame_rate_hz
    rig = _rig_onsets(session)
    objective_of = {t.name: Objective.of_thread(t) for t in cfg.threads}
    subtract = cfg.response.subtract_baseline
    image_score: dict[str, float] = {}
    for rec in session.scores.values():
        image_score.update(zip(rec.ids, rec.scores.tolist()))
    rows = []
    for p in session.presentations:
        frames = int(p.shown["frames"]) if p.shown else 0
        counts = p.counts if p.counts and p.counts["status"] == "ok" else None
        row = {"pid": p.pid, "block_id": p.block_id, "generation": p.generation, "thread": p.thread,
               "kind": p.kind, "image_id": p.image_id, "requeue_of": p.requeue_of, "event_code": p.code,
               "status": p.status, "nan_by_policy": p.nan_by_policy, "missing_why": p.missing_why,
               "time": rig[p.pid], "duration": frames * period,
               "presenter_onset": _num(p.shown.get("onset")) if p.shown else math.nan,
               "rig_onset": _num(p.counts.get("onset")) if p.counts else math.nan,
               "trial": _trial(p), "presenter": p.shown_by, "frames": frames,
               "dropped_frames": int(p.shown["dropped"]) if p.shown else 0,
               "response": p.response(objective_of[p.thread], subtract) if p.thread in objective_of else math.nan,
               "score": image_score.get(p.image_id, math.nan)}
        for ch in range(channels):
            row[f"count_ch{ch}"] = float(counts["counts"][ch]) if counts and ch < len(counts["counts"]) else math.nan
            base = counts.get("baseline") or [] if counts else []
            row[f"baseline_ch{ch}"] = float(base[ch]) if ch < len(base) else math.nan
        rows.append(row)
    # every presentation the rig counted, aborted ones too: the units table is what was recorded
    spikes = {p.pid: p.counts["spike_times"] for p in session.presentations
              if p.counts and p.counts["status"] == "ok" and p.counts.get("spike_times")}
    start = session.first("session_start") or {}
    span = list(start.get("spike_times_ms") or cfg.response.spike_times_ms) if spikes else []
    reference, notes = _reference_time(session)
    generations = _generation_rows(session, rows)
    return Tables(rows, generations, channels, reference, notes, spikes, span,
                  thread_rows(session, rows, generations), reference_rows(session))


def _trial(p: Presentation) -> int:
    trial = p.shown.get("trial") if p.shown else None
    return -1 if trial is None else int(trial)


def _reference_time(session: SessionRecord) -> tuple[dt.datetime, list[str]]:
    """The wall time at rig time 0, from the first recorder's first (wall, rig) pair."""
    if session.rig_clock:
        pair = session.rig_clock[0]
        return dt.datetime.fromtimestamp(pair["wall"] - pair["rig"], tz=dt.UTC), []
    first_block = next((r for r in session.records if r["kind"] == "block"), None) \
        or session.first("session_start") or {"t": 0.0}
    return (dt.datetime.fromtimestamp(float(first_block["t"]), tz=dt.UTC),
            ["the journal holds no rig_clock pair (an older session, or no recorder): "
             "timestamps_reference_time is when the first block was sent, not the rig clock's zero"])


def _rig_onsets(session: SessionRecord) -> dict[str, float]:
    """Each presentation's onset on the rig clock (see the module docstring)."""
    offsets: dict[int, list[float]] = {}
    for p in session.presentations:
        rig, pres = _onsets(p)
        if not math.isnan(rig) and not math.isnan(pres):
            offsets.setdefault(p.block_id, []).append(rig - pres)
    median = {b: float(np.median(v)) for b, v in offsets.items()}
    if not median:   # no counts at all (no recorder): the presenter's clock is the only one
        median = {p.block_id: 0.0 for p in session.presentations[:1]}
    out = {}
    for p in session.presentations:
        rig, pres = _onsets(p)
        if math.isnan(rig) and not math.isnan(pres) and median:
            nearest = min(median, key=lambda b: (abs(b - p.block_id), b))
            rig = pres + median[nearest]
        out[p.pid] = rig
    return out


def _onsets(p: Presentation) -> tuple[float, float]:
    rig = _num(p.counts.get("onset")) if p.counts and p.counts["status"] == "ok" else math.nan
    pres = _num(p.shown.get("onset")) if p.shown else math.nan
    return rig, pres


def _generation_rows(session: SessionRecord, rows: list[dict]) -> list[dict]:
    """Per generation per thread, as summary.json has them, recomputed from the journal."""
    out = []
    for (g, thread), rec in sorted(session.scores.items()):
        objective = next(Objective.of_thread(t) for t in session.cfg.threads if t.name == thread)
        stats = GenerationStats.of(rec.scores)
        times = [(r["time"], r["time"] + r["duration"]) for r in rows
                 if r["generation"] == g and not math.isnan(r["time"])]
        best = stats.best
        out.append({"generation": g, "thread": thread, "n_images": len(rec.ids),
                    "mean": stats.mean, "max": stats.max,
                    "ref_mean": session.reference_mean(g, objective),
                    "n_missing": stats.n_missing,
                    "best_image_id": rec.ids[best] if best >= 0 else "",
                    "best_score": float(rec.scores[best]) if best >= 0 else math.nan,
                    "start_time": min((a for a, _ in times), default=math.nan),
                    "stop_time": max((b for _, b in times), default=math.nan)})
    return out


def _num(value) -> float:
    return math.nan if value is None else float(value)


def thread_rows(session: SessionRecord, rows: list[dict], generations: list[dict]) -> list[dict]:
    """One row per thread of the config: what it is, and what became of its presentations."""
    out = []
    for t in session.cfg.threads:
        fates = Counter(r["status"] for r in rows if r["thread"] == t.name)
        mine = [g for g in generations if g["thread"] == t.name]
        best = max((g for g in mine if not math.isnan(g["best_score"])), key=lambda g: g["best_score"],
                   default=None)
        out.append({"thread": t.name, "channel": t.channel, "generator": t.generator.kind,
                    "optimizer": t.optimizer.kind, "population": t.optimizer.population, "seed": t.seed,
                    "generations": len(mine),
                    "presentations": sum(fates.values()), "shown": fates["shown"], "aborted": fates["aborted"],
                    "missing": fates["missing"],
                    "best_score": best["best_score"] if best else math.nan,
                    "best_image_id": best["best_image_id"] if best else "",
                    "best_generation": best["generation"] if best else -1,
                    "last_mean": mine[-1]["mean"] if mine else math.nan})
    return out


def reference_rows(session: SessionRecord) -> list[dict]:
    """Each reference image's response per generation on each target channel (the mean over its
    measured repeats, the server's rule): drift of the neuron, apart from the evolution's progress."""
    refs = sorted({p.image_id for p in session.presentations if p.kind == "reference"})
    channels = sorted({t.channel for t in session.cfg.threads})
    out: list[dict] = []
    for g in session.generations:
        for ch in channels:
            scores = session.image_scores(g, ch, refs) if refs else np.array([])
            out.extend({"generation": g, "image_id": ref, "channel": ch, "response": float(x)}
                       for ref, x in zip(refs, scores))
    return out
