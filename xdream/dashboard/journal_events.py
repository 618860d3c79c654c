"""A finished session's journal as status events, folded like the live stream's.

The status stream's kinds (xdream/status_wire.py) are rebuilt from the journal
records, so the finished view and the live one share xdream.status_state.  The
journal keeps each generation's codes, not its images: the best image per
generation and per thread (best/*.png) stands in for the history, and the latest
generation's thumbnails come from outside, made again from the codes by the
session's generator (server/latest.py; this core module cannot build one).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from xdream import psth
from xdream.objective import Objective
from xdream.session_reader import SessionRecord, load_session
from xdream.status_state import StatusState


def _jpeg(path: Path, size: int = 96) -> bytes | None:
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=80)
        return out.getvalue()


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def session_state(folder, latest: dict[str, dict] | None = None) -> StatusState:
    return state_of(load_session(folder), latest)


def state_of(s: SessionRecord, latest: dict[str, dict] | None = None) -> StatusState:
    """`latest`: thread -> {"generation", "images": {image id: JPEG}, "note"}, the latest
    generation's thumbnails (server/latest.py for_dashboard); its note (why there are none, or
    only some) is shown above the thread's grid."""
    state = StatusState()
    seq = 0

    def apply(kind: str, t=None, **fields) -> None:
        nonlocal seq
        seq += 1
        state.apply({"v": 1, "kind": kind, "seq": seq, "t": t, **fields})

    start = s.first("session_start") or {}
    threads = [{"name": t.get("name"), "channel": t.get("channel"), "generator": t.get("generator")}
               for t in start.get("threads", [])]
    refs = sorted({p.image_id for p in s.presentations if p.kind == "reference"})
    apply("session", start.get("t"), session=s.session_id, endpoint="", resumed=False, start_generation=0,
          generations=s.cfg.session.generations, threads=threads, references=[r[4:] for r in refs],
          config={"block_timeout_s": s.cfg.session.block_timeout_s, "abort_policy": s.cfg.session.abort_policy,
                  "image_size_px": s.cfg.presentation.image_size_px}, finished=True)
    for r in s.records:
        kind = r["kind"]
        if kind == "shown":
            apply("presentation", r.get("t"), pid=r["pid"], fate=r["status"], dropped=r.get("dropped", 0))
        elif kind == "counts":
            apply("presentation", r.get("t"), pid=r["pid"], fate="counted" if r["status"] == "ok" else "missing")
        elif kind == "missing":
            for pid in r.get("pids", []):
                apply("presentation", r.get("t"), pid=pid, fate="missing", why=r.get("why", ""))
        elif kind == "block":
            apply("block", r.get("t"), block_id=r["block_id"], generation=r["generation"])
        elif kind in ("paused", "resumed", "stop_requested"):
            state_name = {"paused": "paused", "resumed": "running", "stop_requested": "stopping"}[kind]
            apply("control", r.get("t"), state=state_name, source=r.get("source", "operator"), by=r.get("by", ""))
        elif kind in ("peer_lost", "rejected", "handler_error"):
            apply("warning", r.get("t"), text=f"{kind}: {r.get('peer', '')} {r.get('why', r.get('reason', ''))}")
    # each thread's objective (issue 15): its references are scored as its images are
    objectives = {tc.name: Objective.of_thread(tc) for tc in s.cfg.threads}
    spike_span = list(start.get("spike_times_ms") or s.cfg.response.spike_times_ms)
    for g in s.generations:
        trains: list[tuple[str, str, list[list[int]]]] = [
            (p.kind, p.thread, (p.counts or {}).get("spike_times") or []) for p in s.of_generation(g)
            if p.status == "shown"]
        trains = [x for x in trains if x[2]]
        ref_trains = [x[2] for x in trains if x[0] == "reference"]
        out: list[dict] = []
        for t in threads:
            rec = s.scores.get((g, t["name"]))
            if rec is None:
                continue
            scores = [_num(x) for x in rec.scores]
            finite = [x for x in scores if x is not None]
            objective = objectives.get(t["name"], t["channel"])
            ref_scores = s.image_scores(g, objective, refs).tolist() if refs else []
            out.append({"thread": t["name"], "channel": t["channel"],
                        "mean": sum(finite) / len(finite) if finite else None, "max": max(finite, default=None),
                        "ref_mean": _num(s.reference_mean(g, objective)),
                        "n_missing": len(scores) - len(finite), "ids": rec.ids, "scores": scores,
                        "refs": {k: _num(v) for k, v in zip(refs, ref_scores)},
                        "images": [], "best_score": max(finite, default=None),
                        "best_image": _jpeg(s.folder / "best" / f"gen{g:03d}_{t['name']}.png")})
            if trains and spike_span:   # as server/status.py SpikeTrains: the thread's images, the references
                mine = [x[2] for x in trains if x[0] != "reference" and x[1] == t["name"]]
                out[-1]["psth"] = psth.thread_psth(t["channel"], mine, ref_trains, spike_span)
        counted = [p.counts["counts"] for p in s.of_generation(g) if p.status == "shown" and p.counts]
        width = min((len(c) for c in counted), default=0)
        channels = [sum(c[i] for c in counted) / len(counted) for i in range(width)] if counted else []
        apply("generation", None, generation=g, threads=out, timing={}, channels=channels)
    for name, got in (latest or {}).items():
        lat = state.latest.get(name)
        if lat is None:
            continue
        images = got.get("images") or {}
        if got.get("generation") == lat["generation"] and images:
            lat["images"] = [images.get(i) for i in lat["ids"]]   # in the order of ids and scores
        lat["note"] = str(got.get("note", ""))
    # the best image so far of each thread is the session's best, not the last generation's
    for t in threads:
        best = _jpeg(s.folder / "best" / f"best_{t['name']}.png")
        if best is not None:
            scored = [(x, g) for (g, name), rec in s.scores.items() if name == t["name"]
                      for x in rec.scores if math.isfinite(x)]
            top = max(scored, default=(None, None))
            state.best[t["name"]] = {"generation": top[1], "score": top[0], "image": best}
    times = [float(r["t"]) for r in s.records if r["kind"] == "shown" and isinstance(r.get("t"), (int, float))]
    span = max(times) - min(times) if len(times) > 1 else 0.0
    state.rig["session_presentations_per_s"] = len(times) / span if span > 0 else None
    end = [r for r in s.records if r["kind"] == "session_end"]
    if end:
        apply("end", end[-1].get("t"), reason=end[-1].get("reason", ""))
    return state
