"""`xdream export`: CSV tables and an NWB file that nwbinspector passes and pynwb reads back."""

import csv
import json
import math
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest
from PIL import Image

from server.export import write_nwb
from tests.conftest import small_config
from xdream import config as config_mod
from xdream.session_reader import load_session
from tests.dryrun_helpers import dry_run, journal as records
from tests.test_replay import EYE_PRESENTER, write

METADATA = {"session_description": "Evolving images for a simulated V4 site.",
            "experimenter": ["Doe, Jane"], "institution": "Simulated Institute", "lab": "Closed-loop lab",
            "subject": {"subject_id": "sim-1", "species": "Macaca mulatta", "sex": "M", "age": "P7Y",
                        "weight": "9.5 kg", "description": "a ConvNet unit"}}


def make_session(tmp):
    """A small dry run whose simulated eye breaks fixation (aborts, re-queues, NaN by policy),
    in trials of 4 presentations, with its [metadata] filled and spike times on (the default span)."""
    cfg = small_config(tmp, generations=3, max_requeues=1)
    data = config_mod.to_dict(cfg) | {"metadata": METADATA}
    (tmp / "small.json").write_text(json.dumps(data))
    (tmp / "eye.toml").write_text(EYE_PRESENTER)
    _, folder = dry_run([str(tmp / "small.json"), "--presenter-config", str(tmp / "eye.toml")], tmp / "sessions")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small session with aborts and re-queues, exported once through the CLI (the subject and
    the rest from the session's [metadata], no flags)."""
    tmp = tmp_path_factory.mktemp("export")
    folder = make_session(tmp)
    out = tmp / "out"
    result = subprocess.run([sys.executable, "-m", "xdream.cli", "export", str(folder), "--csv", str(out / "csv"),
                             "--nwb", str(out / "session.nwb")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note:" not in result.stdout, result.stdout   # the regenerated best images equal the stored ones
    return folder, out


def journal_view(folder):
    """What the journal says, read here independently of xdream/session_reader.py."""
    recs = records(folder)
    sent = [p | {"generation": r["generation"], "block_id": r["block_id"]}
            for r in recs if r["kind"] == "block" for p in r["presentations"]]
    shown = {r["pid"]: r for r in recs if r["kind"] == "shown"}
    counts = {r["pid"]: r for r in recs if r["kind"] == "counts"}
    scores = {}
    for r in recs:
        if r["kind"] == "scores":
            scores.update(zip(r["ids"], [math.nan if s is None else s for s in r["scores"]]))

    def status(pid):
        if pid in shown and shown[pid]["status"] == "aborted":
            return "aborted"
        return "shown" if pid in shown and pid in counts and counts[pid]["status"] == "ok" else "missing"
    return sent, shown, counts, scores, status


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(cell):
    return math.nan if cell == "" else float(cell)


def test_presentations_csv_holds_every_presentation(exported):
    folder, out = exported
    sent, shown, counts, scores, status = journal_view(folder)
    rows = csv_rows(out / "csv" / "presentations.csv")
    assert [r["pid"] for r in rows] == [p["pid"] for p in sent]
    statuses = [r["status"] for r in rows]
    assert "aborted" in statuses and "shown" in statuses
    for r, p in zip(rows, sent):
        assert r["status"] == status(p["pid"]) and int(r["event_code"]) == p["code"]
        assert r["image_id"] == p["image_id"] and int(r["generation"]) == p["generation"]
        if r["status"] == "shown":
            c = counts[p["pid"]]
            assert [num(r["count_ch0"]), num(r["count_ch1"])] == c["counts"]
            assert num(r["rig_onset"]) == c["onset"] == num(r["time"])   # unshifted
            assert num(r["presenter_onset"]) == shown[p["pid"]]["onset"]
            assert num(r["response"]) == c["counts"][0] if p["kind"] == "generated" else r["response"] == ""
        else:   # not scored (never 0); counts the rig took anyway (aborted mid-image) are kept
            assert r["response"] == ""
            assert num(r["count_ch0"]) == counts[p["pid"]]["counts"][0] if p["pid"] in counts else r["count_ch0"] == ""
        if p["kind"] == "generated":
            assert same(num(r["score"]), scores[p["image_id"]])
    times = [num(r["time"]) for r in rows if r["status"] == "shown"]
    assert min(times) >= 0 and np.all(np.diff(times)[:5] > 0)


def test_generations_csv_equals_the_session_summary(exported):
    folder, out = exported
    summary = json.loads((folder / "summary.json").read_text())
    rows = csv_rows(out / "csv" / "generations.csv")
    assert len(rows) == len(summary) == 3
    for r, s in zip(rows, summary):
        assert int(r["generation"]) == s["generation"] and r["thread"] == s["thread"]
        for k in ("mean", "max", "ref_mean"):
            assert same(num(r[k]), math.nan if s[k] is None else s[k]), k
        assert int(r["n_missing"]) == s["n_missing"]
        assert num(r["start_time"]) < num(r["stop_time"])


def test_nwb_passes_nwbinspector(exported):
    """A session that filled its [metadata]: no critical finding and no best-practice violation."""
    from nwbinspector import Importance, inspect_nwbfile

    _, out = exported
    messages = list(inspect_nwbfile(nwbfile_path=out / "session.nwb"))
    serious = [m for m in messages if m.importance in (Importance.CRITICAL, Importance.BEST_PRACTICE_VIOLATION)]
    assert not serious, [(m.check_function_name, m.message) for m in serious]


def test_nwb_reads_back_as_the_journal(exported):
    from pynwb import NWBHDF5IO

    folder, out = exported
    sent, shown, counts, scores, status = journal_view(folder)
    by_pid = {p["pid"]: p for p in sent}
    with NWBHDF5IO(str(out / "session.nwb"), "r") as io:
        nwb = io.read()
        trials = nwb.intervals["presentations"].to_dataframe()
        assert sorted(trials["pid"]) == sorted(by_pid) and len(trials) == len(sent)
        assert nwb.subject.subject_id == "sim-1" and nwb.subject.species == "Macaca mulatta"
        assert (nwb.subject.sex, nwb.subject.age, nwb.subject.weight) == ("M", "P7Y", "9.5 kg")
        assert list(nwb.experimenter) == ["Doe, Jane"] and nwb.institution == "Simulated Institute"
        assert nwb.lab == "Closed-loop lab" and nwb.session_description == METADATA["session_description"]
        assert nwb.session_id == folder.name and str(uuid.UUID(nwb.identifier)) == nwb.identifier
        images = nwb.stimulus_template["stimulus_images"]
        order = [img.name for img in images.order_of_images.data]
        for _, t in trials.iterrows():
            p = by_pid[t["pid"]]
            assert t["status"] == status(p["pid"]) and t["event_code"] == p["code"]
            assert t["generation"] == p["generation"] and t["thread"] == p["thread"] and t["kind"] == p["kind"]
            assert order[t["image_index"]] == p["image_id"].replace("/", "_")
            if t["status"] == "shown":
                assert t["start_time"] == counts[p["pid"]]["onset"]   # the rig's clock, unshifted
                assert t["trial"] == shown[p["pid"]]["trial"] >= 0
                assert list(t["spike_counts"]) == counts[p["pid"]]["counts"]
                assert list(t["baseline_counts"]) == counts[p["pid"]]["baseline"]
                assert t["stop_time"] > t["start_time"] >= 0
                assert t["frames"] == shown[p["pid"]]["frames"] and t["dropped_frames"] == shown[p["pid"]]["dropped"]
            elif p["pid"] not in counts:
                assert np.isnan(t["spike_counts"]).all() and np.isnan(t["response"])
            if p["kind"] == "generated":
                assert same(t["score"], scores[p["image_id"]])
        assert list(trials["start_time"]) == sorted(trials["start_time"])
        # the images: references as stored, each generation's best as the server archived it
        for path in (folder / "references").glob("*.png"):
            assert np.array_equal(images[f"ref_{path.stem}"].data[:], np.asarray(Image.open(path).convert("RGB")))
        for r in records(folder):
            if r["kind"] == "scores":
                best = r["ids"][int(np.nanargmax(np.array(r["scores"], dtype=float)))]
                png = folder / "best" / f"gen{r['generation']:03d}_{r['thread']}.png"
                assert np.array_equal(images[best.replace("/", "_")].data[:], np.asarray(Image.open(png)))
        presented = nwb.stimulus["presented_images"]
        on_screen = trials[~np.isnan(trials["start_time"])]
        assert list(presented.data[:]) == list(on_screen["image_index"])
        assert np.array_equal(presented.timestamps[:], on_screen["start_time"].to_numpy())
        gens = nwb.intervals["generations"].to_dataframe()
        summary = json.loads((folder / "summary.json").read_text())
        assert list(gens["mean"]) == [s["mean"] for s in summary]
        assert list(gens["max"]) == [s["max"] for s in summary]
        codes = nwb.processing["evolution"]["latent_codes"].to_dataframe()
        for g in range(3):
            with np.load(folder / "codes" / f"gen{g:03d}_a.npz") as npz:
                mine = codes[codes["generation"] == g]
                assert list(mine["image_id"]) == list(npz["ids"])
                assert np.array_equal(np.stack(mine["code"].to_list()), npz["codes"])


def test_a_presentation_that_never_reached_the_screen(exported, tmp_path):
    """Closed as missing by the server (no report, no counts): a presentation with no time, and still
    valid NWB."""
    from nwbinspector import Importance, inspect_nwbfile
    from pynwb import NWBHDF5IO

    folder, _ = exported
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    recs = records(copy)
    pid = next(r["pid"] for r in recs if r["kind"] == "shown" and r["status"] == "shown")
    recs = [r for r in recs if not (r["kind"] in ("shown", "counts") and r["pid"] == pid)]
    recs.insert(-1, {"seq": 0, "t": recs[-1]["t"], "kind": "missing", "block_id": 0, "pids": [pid], "why": "test"})
    write(copy, recs, renumber=True)
    session = load_session(copy)
    assert session.by_pid[pid].status == "missing" and session.by_pid[pid].missing_why == "test"
    write_nwb(session, tmp_path / "m.nwb", with_images=False, subject_id="x", species="Macaca mulatta")
    serious = [m for m in inspect_nwbfile(nwbfile_path=tmp_path / "m.nwb") if m.importance == Importance.CRITICAL]
    assert not serious, [(m.check_function_name, m.message) for m in serious]
    with NWBHDF5IO(str(tmp_path / "m.nwb"), "r") as io:
        rows = io.read().intervals["presentations"].to_dataframe()
        row = rows[rows["pid"] == pid].iloc[0]
        assert row["status"] == "missing" and np.isnan(row["start_time"]) and row["missing_why"] == "test"


def us_in(offsets, lo_ms, hi_ms):
    """How many offsets (integer us) lie in [lo_ms, hi_ms): counted here, not by the recorder's code."""
    return sum(1 for o in offsets if lo_ms * 1000 <= o < hi_ms * 1000)


def test_journal_spike_times_match_the_counts(exported):
    """Every counted presentation carries its spike times, per channel, in the configured span,
    ascending; those within the counting window number exactly the count, and those within the
    baseline window the baseline (the span [-100, 400) ms holds both windows)."""
    folder, _ = exported
    recs = records(folder)
    start = recs[0]
    assert start["kind"] == "session_start" and start["spike_times_ms"] == [-100.0, 400.0]
    window, baseline = [50.0, 200.0], [0.0, 50.0]
    ok = [r for r in recs if r["kind"] == "counts" and r["status"] == "ok"]
    assert ok and sum(len(o) for r in ok for o in r["spike_times"]) > 100
    for r in ok:
        assert len(r["spike_times"]) == len(r["counts"]) == 2
        for ch, offsets in enumerate(r["spike_times"]):
            assert offsets == sorted(offsets) and all(-100_000 <= o < 400_000 for o in offsets)
            assert us_in(offsets, *window) == r["counts"][ch], (r["pid"], ch)
            assert us_in(offsets, *baseline) == r["baseline"][ch], (r["pid"], ch)
    assert any(o < 0 for r in ok for offsets in r["spike_times"] for o in offsets)   # before the onset too


def test_session_start_and_rig_clock_are_journaled(exported):
    """The session id and [metadata] at session start; the recorder's (wall, rig) pair soon after."""
    folder, _ = exported
    recs = records(folder)
    start = recs[0]
    filled = config_mod.to_dict(config_mod.from_dict({"threads": [{}], "metadata": METADATA}))["metadata"]
    assert start["session"] == folder.name and start["metadata"] == filled
    clocks = [r for r in recs if r["kind"] == "rig_clock"]
    assert clocks and clocks[0]["peer"] == "recorder"
    first_counts = next(r["seq"] for r in recs if r["kind"] == "counts")
    assert clocks[0]["seq"] < first_counts
    assert abs(clocks[0]["wall"] - clocks[0]["server_wall"]) < 5.0 and clocks[0]["rig"] >= 0


def test_nwb_units_hold_the_journaled_spike_times(exported):
    """One unit per channel; around each counted presentation's onset its spike times are the
    journaled offsets (to the microsecond), and its obs_intervals cover every span."""
    from pynwb import NWBHDF5IO

    folder, out = exported
    ok = [r for r in records(folder) if r["kind"] == "counts" and r["status"] == "ok"]
    with NWBHDF5IO(str(out / "session.nwb"), "r") as io:
        units = io.read().units.to_dataframe()
    assert list(units["channel"]) == [0, 1]
    for ch in (0, 1):
        times = np.asarray(units["spike_times"].iloc[ch])
        assert np.all(np.diff(times) >= 0)   # in time order; a spike in two overlapping spans is there once
        intervals = np.asarray(units["obs_intervals"].iloc[ch])
        for r in ok:
            lo, hi = r["onset"] - 0.1, r["onset"] + 0.4
            assert np.any((intervals[:, 0] <= lo + 1e-9) & (intervals[:, 1] >= hi - 1e-9))
            mine = times[(times >= lo - 2e-6) & (times < hi - 2e-6)]
            expected = r["onset"] + np.asarray(r["spike_times"][ch]) / 1e6
            assert mine.size == expected.size, (r["pid"], ch)
            assert np.allclose(mine, expected, rtol=0, atol=2e-6)


def test_nwb_trials_are_the_presenters_fixation_trials(exported):
    """`trials` holds the presenter's trials (4 presentations a trial, a fixation break ends one
    early): each row's presentations are the journaled shown reports with its trial number."""
    from pynwb import NWBHDF5IO

    folder, out = exported
    shown = [r for r in records(folder) if r["kind"] == "shown"]
    by_trial: dict[int, list[str]] = {}
    for r in shown:
        if r["trial"] >= 0:
            by_trial.setdefault(r["trial"], []).append(r["pid"])
    with NWBHDF5IO(str(out / "session.nwb"), "r") as io:
        nwb = io.read()
        trials = nwb.trials.to_dataframe()
        presentations = nwb.intervals["presentations"].to_dataframe()
        assert sorted(trials["trial_number"]) == sorted(by_trial)
        assert (trials["n_aborted"] > 0).any()   # a fixation break ended a trial
        for _, row in trials.iterrows():
            pids = list(row["presentations"]["pid"])
            assert sorted(pids) == sorted(by_trial[row["trial_number"]]) and len(pids) <= 4
            mine = presentations[presentations["pid"].isin(pids)]
            timed = mine[~np.isnan(mine["start_time"])]
            if len(timed):
                assert row["start_time"] == timed["start_time"].min()
                assert row["stop_time"] == (timed["stop_time"]).max()
        assert list(trials["start_time"].dropna()) == sorted(trials["start_time"].dropna())


def test_an_older_journal_still_exports(exported, tmp_path):
    """A journal written before spike times, trial numbers, rig_clock and [metadata] (and its
    config.json without spike_times_ms and metadata) exports: no units, no trials table, a note,
    the subject from the flags, and nwbinspector finds nothing critical."""
    from nwbinspector import Importance, inspect_nwbfile
    from pynwb import NWBHDF5IO

    folder, _ = exported
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    recs = [r for r in records(copy) if r["kind"] != "rig_clock"]
    for r in recs:
        for key in ("spike_times", "trial", "metadata", "spike_times_ms"):
            r.pop(key, None)
    write(copy, recs, renumber=True)
    cfg = json.loads((copy / "config.json").read_text())
    del cfg["metadata"], cfg["response"]["spike_times_ms"]
    (copy / "config.json").write_text(json.dumps(cfg))
    result = subprocess.run([sys.executable, "-m", "xdream.cli", "export", str(copy), "--no-images",
                             "--nwb", str(tmp_path / "old.nwb"), "--subject-id", "old-1", "--species",
                             "Macaca mulatta"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no trials table" in result.stdout and "no rig_clock pair" in result.stdout
    serious = [m for m in inspect_nwbfile(nwbfile_path=tmp_path / "old.nwb") if m.importance == Importance.CRITICAL]
    assert not serious, [(m.check_function_name, m.message) for m in serious]
    with NWBHDF5IO(str(tmp_path / "old.nwb"), "r") as io:
        nwb = io.read()
        assert nwb.trials is None and nwb.units is None and nwb.subject.subject_id == "old-1"
        assert len(nwb.intervals["presentations"]) == len({p["pid"] for r in recs if r["kind"] == "block"
                                                            for p in r["presentations"]})


def test_overlapping_reports_give_each_spike_once_and_keep_two_spikes_of_one_tick():
    """The NWB units' merge of the presentations' spike reports: a spike in two presentations'
    spans (reported by both, 1 us apart after rounding) is one spike; two spikes that one report
    puts at the same microsecond (the simulated rig's Poisson spikes share a 33 us tick) are two.
    A set union (the export before) lost the second: a session's NWB then had fewer spikes than
    its journal."""
    from server.export import union_of_reports

    assert union_of_reports([(100, 0), (101, 1), (500, 0)]) == [100, 500]
    assert union_of_reports([(100, 0), (100, 0), (101, 1)]) == [100, 100]       # two in report 0
    assert union_of_reports([(100, 0), (100, 0), (100, 1), (100, 1)]) == [100, 100]
    assert union_of_reports([(300, 1), (100, 0), (200, 0)]) == [100, 200, 300]   # any order in
    assert union_of_reports([]) == []
