"""`xdream export SESSION --nwb OUT.nwb --csv DIR`: a session in the field's formats.

One row per presentation and one per generation and thread, computed once
(`tables`) and written as CSV or as NWB (pynwb, the "export" extra).

The clock.  Every time in the export is on the rig's clock (the recorder's
onset: the time of the event code in the recording system, the clock the
spike counts were taken in), shifted by one constant so that the earliest
presentation starts at 0; the file's session_start_time is the server's wall
time when it sent the first block (the first onset follows within the
presenter's latency).  A presentation with no rig onset (aborted, or counts
missing) gets its presenter onset (the flip time, presenter clock) moved
onto the rig clock by the median rig-minus-presenter offset of its block's
counted presentations (of the nearest block that has any; a session with no
counts at all keeps the presenter's clock).  One that never reached the
screen has no time (NaN).  A presentation lasts its reported
on-frames at the config's frame rate.  Both raw clocks are kept beside the
export's time (columns presenter_onset and rig_onset): the shift reads off.

Images.  Generated images are regenerated from the stored codes with the
session's generator (deterministic for a given generator config, weights and
precision on one kind of device); the best image of each generation stored
in best/ is compared with its regeneration and a difference is reported.
References come from references/*.png as shown.  `--no-images` leaves them
out (regenerating costs about one generation time per generation).
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from xdream.objective import Objective
from xdream.scoring import GenerationStats
from xdream.session_reader import Presentation, SessionRecord
from xdream.errors import SessionError

log = logging.getLogger(__name__)

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
    ("time", "onset in the export's clock (rig clock, shifted; s); NaN if never on screen"),
    ("duration", "reported on-frames times the frame period (s)"),
    ("presenter_onset", "flip time of its first frame, presenter clock (s)"),
    ("rig_onset", "the event code's time in the recording system (s)"),
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
    time_zero_rig: float                  # rig time that became 0
    session_start: dt.datetime
    notes: list[str] = field(default_factory=list)


def tables(session: SessionRecord) -> Tables:
    cfg = session.cfg
    channels = max([len(p.counts["counts"]) for p in session.presentations
                    if p.counts and p.counts.get("counts")] or [0])
    period = 1.0 / cfg.presentation.frame_rate_hz
    rig = _rig_onsets(session)
    known = [t for t in rig.values() if not math.isnan(t)]
    zero = min(known) if known else 0.0
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
               "time": rig[p.pid] - zero, "duration": frames * period,
               "presenter_onset": _num(p.shown.get("onset")) if p.shown else math.nan,
               "rig_onset": _num(p.counts.get("onset")) if p.counts else math.nan,
               "frames": frames, "dropped_frames": int(p.shown["dropped"]) if p.shown else 0,
               "response": p.response(objective_of[p.thread], subtract) if p.thread in objective_of else math.nan,
               "score": image_score.get(p.image_id, math.nan)}
        for ch in range(channels):
            row[f"count_ch{ch}"] = float(counts["counts"][ch]) if counts and ch < len(counts["counts"]) else math.nan
            base = counts.get("baseline") or [] if counts else []
            row[f"baseline_ch{ch}"] = float(base[ch]) if ch < len(base) else math.nan
        rows.append(row)
    first_block = next((r for r in session.records if r["kind"] == "block"), None) \
        or session.first("session_start") or {"t": 0.0}
    start = dt.datetime.fromtimestamp(float(first_block["t"]), tz=dt.UTC)
    return Tables(rows, _generation_rows(session, rows), channels, zero, start)


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


# ---------------------------------------------------------------------- CSV
def write_csv(session: SessionRecord, out_dir: Path, t: Tables | None = None) -> list[Path]:
    t = t or tables(session)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("presentations.csv", t.presentations), ("generations.csv", t.generations)):
        path = out_dir / name
        with open(path, "w", newline="", encoding="utf-8") as f:
            fields = list(rows[0]) if rows else []
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for row in rows:
                w.writerow({k: _csv_value(v) for k, v in row.items()})
        paths.append(path)
    return paths


def _csv_value(v):
    if isinstance(v, float) and math.isnan(v):
        return ""     # an empty cell: not measured (never 0)
    return v


# ---------------------------------------------------------------------- NWB
def images_of(session: SessionRecord) -> tuple[dict[str, np.ndarray], list[str]]:
    """image_id -> pixels: generated ones regenerated from the codes, references as stored."""
    from server.regenerate import Regenerator, stored_references

    notes = []
    regenerator = Regenerator(session)
    pixels: dict[str, np.ndarray] = {}
    for (g, name), rec in sorted(session.scores.items()):
        pixels.update(regenerator.images(g, [name]))
        if not np.isnan(rec.scores).all():
            best = rec.ids[int(np.nanargmax(rec.scores))]
            stored = session.folder / "best" / f"gen{g:03d}_{name}.png"
            if stored.is_file() and not np.array_equal(np.asarray(Image.open(stored).convert("RGB")), pixels[best]):
                notes.append(f"generation {g}, thread {name}: the regenerated best image differs from {stored.name}")
    pixels.update(stored_references(session))
    return pixels, notes


def write_nwb(session: SessionRecord, path: Path, with_images: bool = True, t: Tables | None = None,
              subject_id: str = "", species: str = "", sex: str = "U", age: str = "") -> Tables:
    """`age`: ISO 8601 duration (P5Y); unknown becomes the open range 'P0D/' (at least 0 days), which
    is true and keeps the file valid for DANDI; `sex`: M, F, O or U (unknown)."""
    from hdmf.backends.hdf5 import H5DataIO
    from hdmf.common import DynamicTable, VectorData
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.base import ImageReferences, Images
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.image import IndexSeries, RGBImage

    t = t or tables(session)
    cfg = session.cfg
    nwb = NWBFile(session_description=f"xdream closed-loop image evolution, session {session.session_id}: "
                                      f"{len(cfg.threads)} thread(s), {len(t.generations)} generation-threads",
                  identifier=session.session_id, session_start_time=t.session_start,
                  experiment_description="Images evolved to drive visual neurons (XDream, Xiao & Kreiman "
                                         "2019; Ponce et al. 2019), exported by xdream-lab.",
                  source_script="xdream export", source_script_file_name="server/export.py",
                  keywords=["xdream", "closed-loop", "image synthesis", "visual cortex", "generative network"],
                  subject=Subject(subject_id=subject_id or "unknown", species=species or None,
                                  sex=sex, age=age or "P0D/",
                                  description="" if subject_id else "not given at export "
                                              "(xdream export --subject-id ID --species NAME)"))
    rows = t.presentations
    # the images, in one ordered Images container, and which was shown when
    image_ids = sorted({r["image_id"] for r in rows})
    index = {i: k for k, i in enumerate(image_ids)}
    if with_images:
        pixels, notes = images_of(session)
        t.notes.extend(notes)
        absent = [i for i in image_ids if i not in pixels]
        if absent:
            raise SessionError(f"no pixels for {len(absent)} images, e.g. {absent[:3]}")
        imgs = [RGBImage(name=i.replace("/", "_"), data=H5DataIO(pixels[i], compression="gzip"),
                         description=i) for i in image_ids]
        images = Images(name="stimulus_images", images=imgs,
                        description="every image shown, in image_index order: generated ones regenerated "
                                    "from their latent codes, references as stored",
                        order_of_images=ImageReferences(name="order_of_images", data=imgs))
        nwb.add_stimulus_template(images)
        timed = sorted((r for r in rows if not math.isnan(r["time"])), key=lambda r: (r["time"], r["pid"]))
        nwb.add_stimulus(IndexSeries(name="presented_images",
                                     data=np.array([index[r["image_id"]] for r in timed], dtype=np.uint32),
                                     indexed_images=images, unit="N/A",
                                     timestamps=np.array([r["time"] for r in timed]),
                                     description="index into stimulus_images of each presentation that "
                                                 "reached the screen, at its onset"))
    # one trial per presentation, in onset order (those never on screen last), built column-wise:
    # a row at a time costs hdmf's argument checks per cell (about 10 s for a 50-generation session)
    ordered = sorted(rows, key=_time_order)
    descriptions = dict(PRESENTATION_COLUMNS)
    data: dict[str, list | np.ndarray] = {"start_time": [r["time"] for r in ordered],
            "stop_time": [r["time"] + r["duration"] for r in ordered]}
    data |= {c: [r[c] for r in ordered] for c, _ in PRESENTATION_COLUMNS if c not in ("time", "duration")}
    data["image_index"] = [index[r["image_id"]] for r in ordered]
    data["spike_counts"] = np.array([[r[f"count_ch{c}"] for c in range(t.channels)] for r in ordered])
    data["baseline_counts"] = np.array([[r[f"baseline_ch{c}"] for c in range(t.channels)] for r in ordered])
    descriptions |= {
        "start_time": "onset (rig clock, shifted so that the first presentation starts at 0; NaN if never "
                      "on screen)",
        "stop_time": "onset plus the reported on-frames times the frame period",
        "image_index": "index into stimulus_images (and latent_codes for generated images)",
        "spike_counts": f"spikes per channel in the response window {cfg.response.window_ms} ms after onset, "
                        f"as the recorder sent them; NaN if it sent none (an aborted presentation may have "
                        f"counts: they are kept, never scored)",
        "baseline_counts": f"spikes per channel in the baseline window {cfg.response.baseline_ms} ms; NaN if "
                           f"not counted"}
    nwb.trials = TimeIntervals(name="trials", description="one row per presentation",
                               columns=[VectorData(name=c, description=descriptions[c], data=v)
                                        for c, v in data.items()])
    # one interval per generation and thread
    gens = TimeIntervals(name="generations", description="one row per generation per thread: the span of "
                                                         "its block, and its scores")
    for c, d in (("generation", "generation"), ("thread", "thread"), ("n_images", "images scored"),
                 ("mean", "mean score of the generated images (measured ones)"),
                 ("max", "best score"), ("ref_mean", "mean score of the reference images"),
                 ("n_missing", "images with no measured repeat (NaN score)"),
                 ("best_image_id", "the best image"), ("best_score", "its score")):
        gens.add_column(c, d)
    for g in t.generations:
        gens.add_interval(**{k: v for k, v in g.items()})
    nwb.add_time_intervals(gens)
    # the latent codes of every generated image
    codes_rows = []
    for (gen, name), rec in sorted(session.scores.items()):
        ids, codes = session.codes(gen, name)
        scores = dict(zip(rec.ids, rec.scores.tolist()))
        for cid, code in zip(ids, codes):
            codes_rows.append((cid, gen, name, index.get(cid, -1), scores.get(cid, math.nan), code.ravel()))
    if codes_rows:
        module = nwb.create_processing_module("evolution", "the optimizer's latent codes and their scores")
        if len({len(r[5]) for r in codes_rows}) > 1:   # threads in image spaces of different sizes
            raise SessionError("threads with codes of different sizes cannot share one latent_codes table yet")
        cols = [VectorData(name="code", description="the latent code (flattened), float64",
                           data=H5DataIO(np.stack([r[5] for r in codes_rows]), compression="gzip"))]
        for n, d, k in (("image_id", "stable image id", 0), ("generation", "generation", 1),
                        ("thread", "thread", 2), ("image_index", "index into stimulus_images", 3),
                        ("score", "the image's score (NaN: not measured)", 4)):
            cols.append(VectorData(name=n, description=d, data=[r[k] for r in codes_rows]))
        module.add(DynamicTable(name="latent_codes", description="every generated image's latent code",
                                columns=cols))
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return t


def _time_order(r: dict):
    return (math.isnan(r["time"]), 0.0 if math.isnan(r["time"]) else r["time"], r["pid"])
