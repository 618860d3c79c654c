"""`xdream export`: CSV tables and an NWB file that nwbinspector passes and pynwb reads back."""

import csv
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from server.export import write_nwb
from xdream.session_reader import load_session
from tests.dryrun_helpers import journal as records
from tests.test_replay import make_session, write


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small session with aborts and re-queues, exported once through the CLI."""
    tmp = tmp_path_factory.mktemp("export")
    folder = make_session(tmp)
    out = tmp / "out"
    result = subprocess.run([sys.executable, "-m", "xdream.cli", "export", str(folder), "--csv", str(out / "csv"),
                             "--nwb", str(out / "session.nwb"), "--subject-id", "sim-1", "--species",
                             "Macaca mulatta"], capture_output=True, text=True, timeout=300)
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
            assert num(r["rig_onset"]) == c["onset"] and num(r["presenter_onset"]) == shown[p["pid"]]["onset"]
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
        trials = nwb.trials.to_dataframe()
        assert sorted(trials["pid"]) == sorted(by_pid) and len(trials) == len(sent)
        assert nwb.subject.subject_id == "sim-1"
        images = nwb.stimulus_template["stimulus_images"]
        order = [img.name for img in images.order_of_images.data]
        for _, t in trials.iterrows():
            p = by_pid[t["pid"]]
            assert t["status"] == status(p["pid"]) and t["event_code"] == p["code"]
            assert t["generation"] == p["generation"] and t["thread"] == p["thread"] and t["kind"] == p["kind"]
            assert order[t["image_index"]] == p["image_id"].replace("/", "_")
            if t["status"] == "shown":
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
    """Closed as missing by the server (no report, no counts): a trial with no time, and still valid NWB."""
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
        trials = io.read().trials.to_dataframe()
        row = trials[trials["pid"] == pid].iloc[0]
        assert row["status"] == "missing" and np.isnan(row["start_time"]) and row["missing_why"] == "test"
