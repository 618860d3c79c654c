"""`xdream replay`: a recorded session re-derived, and tampered copies caught."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from server.replay import replay
from tests.conftest import small_config
from xdream import config as config_mod

EYE_PRESENTER = """
[monitor]
resolution = [128, 128]
refresh_hz = 60.0
[markers]
kind = "none"
[eye]
source = "simulated"
seed = 1
break_probability = 0.3
away_ms = 200.0
[trial]
presentations = 4
fixation_window_deg = 2.0
fixation_ms = 100.0
inter_trial_ms = 0.0
"""


def make_session(tmp: Path, generations: int = 3) -> Path:
    """A small dry run whose simulated eye breaks fixation: aborts, re-queues, NaN by policy."""
    cfg = small_config(tmp, generations=generations, max_requeues=1)
    config_mod.save_json(cfg, tmp / "small.json")
    (tmp / "eye.toml").write_text(EYE_PRESENTER)
    out = tmp / "sessions"
    result = subprocess.run([sys.executable, "-m", "xdream.cli", "dry-run", str(tmp / "small.json"),
                             "--presenter-config", str(tmp / "eye.toml"), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (folder,) = out.iterdir()
    return folder


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return make_session(tmp_path_factory.mktemp("replay"))


@pytest.fixture
def copy(session, tmp_path):
    target = tmp_path / session.name
    shutil.copytree(session, target)
    return target


def records(folder):
    return [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines()]


def write(folder, recs, renumber=False):
    if renumber:
        for i, r in enumerate(recs):
            r["seq"] = i
    (folder / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def generated_shown_counts(recs, generation):
    """Index of a counts record of a generated image of `generation` shown once."""
    block_gen = {}
    kinds = {}
    for r in recs:
        if r["kind"] == "block":
            for p in r["presentations"]:
                block_gen[p["pid"]] = r["generation"]
                kinds[p["pid"]] = (p["kind"], p["image_id"])
    for i, r in enumerate(recs):
        if r["kind"] == "counts" and block_gen[r["pid"]] == generation and kinds[r["pid"]][0] == "generated":
            return i
    raise AssertionError("no counted generated presentation")


def test_the_session_has_aborts_and_requeues(session):
    recs = records(session)
    assert any(r["kind"] == "shown" and r["status"] == "aborted" for r in recs)
    assert any(p["requeue_of"] for r in recs if r["kind"] == "block" for p in r["presentations"])


def test_untouched_session_is_reproduced(session):
    result = replay(session)
    assert result.ok, result.lines()
    assert result.generations_checked == 3 and result.threads == ["a"]


def test_edited_score_names_its_generation(copy):
    recs = records(copy)
    i = [j for j, r in enumerate(recs) if r["kind"] == "scores" and r["generation"] == 1][0]
    recs[i]["scores"][2] = (recs[i]["scores"][2] or 0) + 1.0
    write(copy, recs)
    result = replay(copy)
    assert not result.ok and result.mismatch.generation == 1 and result.mismatch.thread == "a"
    assert recs[i]["ids"][2] in result.mismatch.what and result.generations_checked == 1


def test_edited_count_names_its_generation(copy):
    recs = records(copy)
    i = generated_shown_counts(recs, 2)
    recs[i]["counts"][0] += 3.0
    write(copy, recs)
    result = replay(copy)
    assert not result.ok and result.mismatch.generation == 2 and result.generations_checked == 2


def test_deleted_count_renumbered_is_caught_by_the_scores(copy):
    recs = records(copy)
    i = generated_shown_counts(recs, 1)
    del recs[i]
    write(copy, recs, renumber=True)
    result = replay(copy)
    assert not result.ok and result.mismatch.generation == 1
    assert "NaN" in result.mismatch.what   # the image has no measured repeat left


def test_deleted_record_is_caught_by_the_journal_reader(copy):
    recs = records(copy)
    del recs[len(recs) // 2]
    write(copy, recs)
    result = replay(copy)
    assert not result.ok and result.problems and "seq" in result.problems[0]


def test_edited_codes_file_names_its_generation(copy):
    path = copy / "codes" / "gen002_a.npz"
    with np.load(path) as npz:
        ids, codes = npz["ids"], npz["codes"].copy()
    codes[3, 100] = np.nextafter(codes[3, 100], np.inf)   # one bit
    np.savez(path, ids=ids, codes=codes)
    result = replay(copy)
    assert not result.ok and result.mismatch.generation == 2 and result.mismatch.thread == "a"
    assert "1 of 6 codes differ" in result.mismatch.what and "row 3" in result.mismatch.what


def test_edited_event_code_is_caught_by_the_rebuilt_block(copy):
    recs = records(copy)
    i = [j for j, r in enumerate(recs) if r["kind"] == "block" and r["generation"] == 1][0]
    recs[i]["presentations"][0]["code"] += 100
    write(copy, recs)
    result = replay(copy)
    assert not result.ok and result.mismatch.generation == 1 and "block" in result.mismatch.what


def test_a_session_stopped_before_its_last_scores_is_reproduced_so_far(copy):
    recs = records(copy)
    last = [j for j, r in enumerate(recs) if r["kind"] == "scores"][-1]
    write(copy, recs[:last])
    result = replay(copy)
    assert result.ok, result.lines()
    assert result.generations_checked == 2
    assert any("never scored" in n for n in result.notes) and any("session_end" in n for n in result.notes)


def test_cli_exit_codes(session, copy):
    ok = subprocess.run([sys.executable, "-m", "xdream.cli", "replay", str(session)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "reproduced: 3 generations" in ok.stdout, ok.stdout + ok.stderr
    recs = records(copy)
    i = [j for j, r in enumerate(recs) if r["kind"] == "scores" and r["generation"] == 0][0]
    recs[i]["scores"][0] = 1234.0
    write(copy, recs)
    bad = subprocess.run([sys.executable, "-m", "xdream.cli", "replay", str(copy)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "MISMATCH at generation 0, thread a" in bad.stdout, bad.stdout + bad.stderr
