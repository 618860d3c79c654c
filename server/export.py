"""`xdream export SESSION --nwb OUT.nwb --csv DIR`: a session in the field's formats.

One row per presentation and one per generation and thread, computed once
(`tables`, xdream/session_tables.py) and written as CSV or as NWB (pynwb, the "export" extra).

The clock: the rig's, unshifted, so that the file lies beside a raw-data NWB
of the same recording (NeuroConv writes the rig's own sample times).  A
presentation's time is the recorder's onset: the time of the event code in
the recording system, the clock the spikes were counted in.  One with no rig
onset (aborted, or counts missing) gets its presenter onset (the flip time,
presenter clock) moved onto the rig clock by the median rig-minus-presenter
offset of its block's counted presentations (of the nearest block that has
any; a session with no counts at all keeps the presenter's clock).  One that
never reached the screen has no time (NaN).  A presentation lasts its
reported on-frames at the config's frame rate.  Both raw clocks are kept
beside the export's time (columns presenter_onset and rig_onset).

`timestamps_reference_time` (and `session_start_time`) is the wall time at
rig time 0: the recorder's first journaled (wall, rig) pair, wall - rig
(`rig_clock` records, docs/adapters.md "Aligning raw data with the
session").  A journal without a pair (older sessions, no recorder) falls
back to the server's wall time when it sent the first block, with a note:
times are then still the rig's, but the reference time is not its zero.

Tables: `presentations` (a TimeIntervals, one row per presentation), `trials`
(the presenter's fixation trials: the presentations it showed under one
fixation, from the trial number on its `shown` reports; absent for journals
without them), `generations`, and `units` (one unit per recorder channel: the
spike times the recorder reported around each presentation, its
`obs_intervals` those spans).  The file's identifier is a new UUID; its
session_id is the session's name.  Subject, experimenter, institution, lab
and description come from the session config's [metadata] (journaled in
session_start); the export's flags override them.

Images.  Generated images are regenerated from the stored codes with the
session's generator (deterministic for a given generator config, weights and
precision on one kind of device); the best image of each generation stored
in best/ is compared with its regeneration and a difference is reported.
References come from references/*.png as shown.  `--no-images` leaves them
out (regenerating costs about one generation time per generation).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import logging
import math
import uuid
from pathlib import Path

import numpy as np

from xdream.session_reader import SessionRecord
from xdream.session_tables import PRESENTATION_COLUMNS, Tables, tables
from xdream.errors import SessionError
from xdream.progress import progress

log = logging.getLogger(__name__)

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
    from server.regenerate import Regenerator, best_differs, stored_references

    notes = []
    regenerator = Regenerator(session)
    pixels: dict[str, np.ndarray] = {}
    items = sorted(session.scores)
    for g, name in progress(items, "export: regenerating images", total=len(items), unit="gen"):
        made = regenerator.of_thread(g, name)
        pixels.update(made)
        if (note := best_differs(session, g, name, made)) is not None:
            notes.append(note)
    pixels.update(stored_references(session))
    return pixels, notes


def write_nwb(session: SessionRecord, path: Path, with_images: bool = True, t: Tables | None = None,
              subject_id: str = "", species: str = "", sex: str = "", age: str = "") -> Tables:
    """The subject, experimenter, institution, lab and description come from the session's
    [metadata]; `subject_id`, `species`, `sex` (M, F, O or U) and `age` (ISO 8601 duration,
    P5Y), when given, override it (sessions made before [metadata] existed). An unknown age
    becomes the open range 'P0D/' (at least 0 days), which is true and keeps the file valid
    for DANDI."""
    from hdmf.backends.hdf5 import H5DataIO
    from hdmf.common import DynamicTable, VectorData
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.base import ImageReferences, Images
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.image import IndexSeries, RGBImage

    t = t or tables(session)
    cfg = session.cfg
    meta = _metadata(session)
    subj = meta.get("subject", {})
    subject_id = subject_id or subj.get("subject_id", "")
    species = species or subj.get("species", "")
    given = {k: v for k in ("strain", "genotype", "weight") if (v := subj.get(k))}
    description = meta.get("session_description") or (
        f"xdream closed-loop image evolution, session {session.session_id}: {len(cfg.threads)} thread(s), "
        f"{len(t.generations)} generation-threads")
    nwb = NWBFile(session_description=description, identifier=str(uuid.uuid4()),
                  session_id=session.session_id, session_start_time=t.reference_time,
                  timestamps_reference_time=t.reference_time,
                  experimenter=meta.get("experimenter") or None, institution=meta.get("institution") or None,
                  lab=meta.get("lab") or None,
                  experiment_description="Images evolved to drive visual neurons (XDream, Xiao & Kreiman "
                                         "2019; Ponce et al. 2019), exported by xdream-lab.",
                  source_script="xdream export", source_script_file_name="server/export.py",
                  keywords=["xdream", "closed-loop", "image synthesis", "visual cortex", "generative network"],
                  subject=Subject(subject_id=subject_id or "unknown", species=species or None,
                                  sex=sex or subj.get("sex") or "U", age=age or subj.get("age") or "P0D/",
                                  description=subj.get("description") or ("" if subject_id else
                                              "not given (config [metadata.subject], or xdream export "
                                              "--subject-id ID --species NAME)"), **given))
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
    # one row per presentation, in onset order (those never on screen last), built column-wise:
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
        "start_time": "onset on the rig clock (s, unshifted; timestamps_reference_time is its zero); NaN if "
                      "never on screen",
        "stop_time": "onset plus the reported on-frames times the frame period",
        "image_index": "index into stimulus_images (and latent_codes for generated images)",
        "spike_counts": f"spikes per channel in the response window {cfg.response.window_ms} ms after onset, "
                        f"as the recorder sent them; NaN if it sent none (an aborted presentation may have "
                        f"counts: they are kept, never scored)",
        "baseline_counts": f"spikes per channel in the baseline window {cfg.response.baseline_ms} ms; NaN if "
                           f"not counted"}
    presentations = TimeIntervals(name="presentations", description="one row per presentation (one showing of "
                                  "one image), in onset order",
                                  columns=[VectorData(name=c, description=descriptions[c], data=v)
                                           for c, v in data.items()])
    nwb.add_time_intervals(presentations)
    _add_trials(nwb, ordered, t)
    _add_units(nwb, session, t)
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


def _metadata(session: SessionRecord) -> dict:
    """[metadata] as journaled at session start; the config's for sessions that journaled none."""
    start = session.first("session_start") or {}
    meta = start.get("metadata")
    return meta if isinstance(meta, dict) else dataclasses.asdict(session.cfg.metadata)


def _add_trials(nwb, ordered: list[dict], t: Tables) -> None:
    """The presenter's fixation trials: the presentations with one (presenter, trial) number."""
    from hdmf.common import DynamicTableRegion

    groups: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(ordered):
        if r["trial"] >= 0:
            groups.setdefault((r["presenter"], r["trial"]), []).append(i)
    if not groups:
        t.notes.append("the presenter reported no trial numbers (an older journal): no trials table")
        return
    for name, desc in (("trial_number", "the presenter's own trial number (from 0 at its start)"),
                       ("presenter", "the presenter that ran it (its hello's name)"),
                       ("block_id", "the block of its presentations"),
                       ("n_shown", "its presentations shown to the end"),
                       ("n_aborted", "its presentations aborted (a fixation break ends the trial)")):
        nwb.add_trial_column(name, desc)
    nwb.add_trial_column("presentations", "its rows in intervals/presentations, in order", index=True,
                         table=True)
    trial_rows = []
    for (presenter, number), members in groups.items():
        timed = [ordered[i] for i in members if not math.isnan(ordered[i]["time"])]
        start = min((r["time"] for r in timed), default=math.nan)
        stop = max((r["time"] + r["duration"] for r in timed), default=math.nan)
        trial_rows.append((start, stop, number, presenter, members))
    trial_rows.sort(key=lambda x: (math.isnan(x[0]), 0.0 if math.isnan(x[0]) else x[0], x[3], x[2]))
    for start, stop, number, presenter, members in trial_rows:
        statuses = [ordered[i]["status"] for i in members]
        nwb.add_trial(start_time=start, stop_time=stop, trial_number=number, presenter=presenter,
                      block_id=ordered[members[0]]["block_id"], n_shown=sum(s != "aborted" for s in statuses),
                      n_aborted=statuses.count("aborted"), presentations=members)
    region = nwb.trials["presentations"].target
    if isinstance(region, DynamicTableRegion):   # made without its table: it points into presentations
        region.table = nwb.intervals["presentations"]


def _add_units(nwb, session: SessionRecord, t: Tables) -> None:
    """One unit per recorder channel: the spike times reported around presentations (rig clock, s)."""
    from pynwb.misc import Units

    if not t.spikes:
        return
    lo_ms, hi_ms = t.spike_span_ms
    onsets = {p.pid: float(p.counts["onset"]) for p in session.presentations
              if p.counts is not None and p.pid in t.spikes}
    channels = max(len(v) for v in t.spikes.values())
    per_channel: list[list[tuple[int, int]]] = [[] for _ in range(channels)]   # (rig time in us, which report)
    spans = []
    for k, (pid, offsets) in enumerate(t.spikes.items()):
        onset_us = round(onsets[pid] * 1e6)
        spans.append((onsets[pid] + lo_ms / 1000, onsets[pid] + hi_ms / 1000))
        for ch, off in enumerate(offsets):
            per_channel[ch].extend((onset_us + o, k) for o in off)
    observed = _merge(sorted(spans))
    nwb.units = Units(name="units", resolution=1e-6, description=(
        f"spikes the recorder reported from {lo_ms:g} to {hi_ms:g} ms around each presentation's onset "
        f"(response.spike_times_ms), one unit per recorder channel; obs_intervals are those spans, the "
        f"only times observed; kept to the microsecond (resolution), the journal's unit"))
    nwb.add_unit_column("channel", "the recorder channel (its threshold crossings: multi-unit activity)")
    for ch, reported in enumerate(per_channel):
        us = np.asarray(union_of_reports(reported), dtype=np.int64)
        nwb.add_unit(spike_times=us / 1e6, obs_intervals=observed, channel=ch)


SAME_SPIKE_US = 2   # one spike reported by two presentations lands within rounding (1 us) of itself


def union_of_reports(reported: list[tuple[int, int]]) -> list[int]:
    """Spike times (us) from overlapping reports, each spike once: a spike in two presentations'
    spans is reported by both (within SAME_SPIKE_US), while two spikes at one time in one report
    are two spikes (a rig's tick is coarser than a microsecond).  So each run of times closer
    than SAME_SPIKE_US keeps as many spikes as the one report that has the most of them."""
    out: list[int] = []
    run: list[tuple[int, int]] = []
    for t, k in sorted(reported) + [(None, -1)]:
        if run and (t is None or t - run[-1][0] > SAME_SPIKE_US):
            n = max(collections.Counter(k2 for _, k2 in run).values())
            out.extend([run[0][0]] * n)
            run = []
        if t is not None:
            run.append((t, k))
    return out


def _merge(spans: list[tuple[float, float]]) -> list[list[float]]:
    out: list[list[float]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _time_order(r: dict):
    return (math.isnan(r["time"]), 0.0 if math.isnan(r["time"]) else r["time"], r["pid"])
