"""`xdream bench study` (benchmarks/study.py): the study's size, its statistics on
numbers worked by hand, and its --quick version end to end (sequentially)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import study as bs
from benchmarks import validity

REPO = Path(__file__).resolve().parents[1]


def test_the_study_is_large_enough_for_claims():
    s = bs.make_study("study")
    assert s.n_units >= 16 and len(s.layers) >= 4 and set(s.known) == set(validity.UNITS)
    assert len(s.seeds) == 3 and s.sigmas == (0.0, 0.2, 0.5)
    assert {"sphere-es", "sphere-cma", "pycma"} <= set(s.optimizers)
    assert s.space == "dcgan-face" == bs.default_space()     # the claims are about the default as run
    jobs = bs.list_jobs(s, bs.make_setting(s))
    runs = [j for j in jobs if j["type"] in ("run", "known")]
    assert len(runs) == s.n_units * 3 * 3 * len(s.optimizers)
    assert len({bs.job_path(j, Path("o")) for j in jobs}) == len(jobs)


def test_interval_and_paired_test_on_numbers_worked_by_hand():
    m, lo, hi, n = bs.interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)          # t(0.975, 2) x s.d. 1 / sqrt(3)
    assert (m, n) == (2.0, 3) and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    rows = []
    for seed in range(10):      # sphere-es ahead on all 10 pairs; exact two-sided p = 2 / 2**10
        rows.append({"unit": "u", "seed": seed, "sigma": 0.0, "optimizer": "sphere-es", "score": 0.5 + 0.01 * seed})
        rows.append({"unit": "u", "seed": seed, "sigma": 0.0, "optimizer": "pycma", "score": 0.4})
    c = bs.paired(rows, "sphere-es", "pycma", 0.0)
    assert (c["n"], c["wins"], c["losses"], c["ties"]) == (10, 10, 0, 0)
    assert c["p"] == pytest.approx(2 / 1024)
    rows[1]["score"] = 0.9      # seed 0: now a loss
    c = bs.paired(rows, "sphere-es", "pycma", 0.0)
    assert (c["wins"], c["losses"]) == (9, 1) and c["p"] > 2 / 1024


def study_cli(out: Path, *args: str) -> dict:
    """`xdream bench study --quick ARGS --out OUT --json` from outside the checkout: its JSON summary."""
    p = subprocess.run([sys.executable, "-m", "xdream.cli", "bench", "study", "--quick", *args, "--device", "cpu",
                        "--out", str(out), "--json"], capture_output=True, text=True, timeout=400, cwd=out.parent,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[0])


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    """`xdream bench study --quick`, run once sequentially: its folder and its JSON summary."""
    out = tmp_path_factory.mktemp("study") / "s"
    return out, study_cli(out, "--sequential")


def test_quick_study_from_the_cli(quick_study, tmp_path):
    stored, summary = quick_study
    out = tmp_path / "s"
    shutil.copytree(stored, out)       # this test deletes a stored job; the folder is shared
    assert summary["failed"] == [] and summary["computed"] == 1 + 2 * 2 * 2 * 3   # white-box + runs
    table = summary["table"]
    assert {(r["sigma"], r["optimizer"]) for r in table} == {(s, o) for s in (0.0, 0.5)
                                                             for o in ("sphere-es", "sphere-cma", "pycma")}
    for r in table:
        assert r["n"] == 4 and 0 <= r["mean"] <= 1 + 1e-9     # 2 units x 2 seeds, normalised
        assert r["ci_low"] <= r["mean"] <= r["ci_high"]
    for c in summary["comparisons"]:
        assert c["n"] == 4 and c["wins"] + c["losses"] + c["ties"] == 4
    assert 0 <= summary["known_sigma0"]["sphere-es"]["mean"] <= 1
    groups = {g["group"] for g in summary["by_group"]}
    assert groups == {"conv3", "known:colour"}
    assert (out / "study.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "Wilcoxon" in report and "| 0.5 | pycma |" in report
    # the known-optimum unit's stored runs: their score is the fraction of the optimum of their images
    known = sorted((out / "jobs" / "known").glob("*.json"))
    assert len(known) == 2 * 2 * 3
    # a study under way: --stored-only reports the complete units, computing nothing
    known[0].unlink()
    partial = study_cli(out, "--stored-only")
    assert partial["computed"] == 0 and partial["stored"] == 1 + 2 * 2 * 3      # the conv3 unit only
    assert "the 1 of 2 units" in partial["partial"] and "known:" not in partial["partial"].split(": ", 1)[1]
    assert all(r["n"] == 2 for r in partial["table"]) and partial["known_sigma0"]["sphere-es"]["n"] == 0
    assert not known[0].exists()
    assert "Partial: the 1 of 2 units" in (out / "report.md").read_text()


def test_the_study_runs_in_the_default_space_and_sees_the_images_a_session_shows():
    import numpy as np

    from benchmarks import optimizers as bo
    from server.generators import build_generator
    from xdream.config import GeneratorConfig
    s = bs.make_study("quick")
    pipe = bo.pipeline_for(bs.make_setting(s), "cpu")
    assert pipe.code_shape == (100,) and pipe.generator_provenance.startswith("dcgan-face:")
    codes = np.random.default_rng(3).standard_normal((6, 100))
    shown = build_generator(GeneratorConfig(kind="dcgan-face", device="cpu"), 64).generate(codes)
    seen = pipe.images(codes)
    assert seen.shape == shown.shape == (6, 64, 64, 3)
    diff = np.abs(seen.astype(int) - shown.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01      # float rounding at a .5 only
    # the known-optimum units see them at their native size; the white-box bound scales with the code
    assert s.image_size == 64 and s.wb_norm == pytest.approx(80.0)
    fc6 = bs.make_study("quick", space="deepsim-fc6")
    assert fc6.image_size == 128 and fc6.wb_norm == pytest.approx(512.0)
    with pytest.raises(bs.ConfigError, match="setting's generator"):
        bs.list_jobs(fc6, bs.make_setting(s))
    with pytest.raises(bs.ConfigError, match="unknown study space"):
        bs.make_study("quick", space="fourier")


def test_the_study_runs_the_default_optimizer_as_the_default_config_sets_it(monkeypatch):
    import numpy as np

    from benchmarks import optimizers as bo
    from xdream import config
    s = bs.make_study("quick")
    shipped = {"init_norm_factor": 20.0, "max_norm_factor": 40.0}          # xdream/default_config.toml
    assert bs.default_optimizer_params() == shipped
    for j in bs.list_jobs(s, bs.make_setting(s)):
        assert j.get("optimizer_params") == (shipped if j["type"] != "whitebox" and j["optimizer"] == "sphere-es"
                                             else None)
    data = config.to_dict(config.load(None))
    monkeypatch.setattr(config, "load", lambda path=None: config.from_dict(data))
    for t in data["threads"]:    # the class's own keywords: named nowhere, so stored jobs keep their keys
        t["optimizer"].update(init_norm_factor=3.0, max_norm_factor=10.0)
    assert bs.default_optimizer_params() == {}
    assert all("optimizer_params" not in j for j in bs.list_jobs(s, bs.make_setting(s)))
    for t in data["threads"]:
        t["optimizer"]["max_norm_factor"] = 30.0
    assert bs.default_optimizer_params() == {"max_norm_factor": 30.0}
    job = next(j for j in bs.list_jobs(s, bs.make_setting(s)) if j["type"] == "run" and j["optimizer"] == "sphere-es")

    class Flat:                 # a pipeline of the study's code size; the score is the code's norm
        code_shape = (100,)
    result = bo.run_run(dict(job, generations=2), Flat(), score=lambda c: np.linalg.norm(c, axis=1), unit_id="u")
    assert result["optimizer_params"]["max_norm_factor"] == 30.0
    data["threads"][1]["optimizer"]["max_norm_factor"] = 20.0     # two threads, two settings: which is "the default"?
    with pytest.raises(bs.ConfigError, match="differently"):
        bs.default_optimizer_params()


def test_a_variant_without_keywords_reproduces_the_stored_default_and_a_keyword_changes_it(quick_study):
    from benchmarks import study_variant

    out, _ = quick_study
    same = study_variant.compare(out, ["conv3"], 0.0, {}, "quick", log=lambda line: None)
    assert len(same) == 2                                       # conv3 c0 x seeds 0, 1
    for row in same:
        assert row["variant"] == row["stored"]["sphere-es"]     # same seed, codes and noise: same run
    held = {"min_norm_factor": 1.0, "init_norm_factor": 1.0, "max_norm_factor": 1.0}
    capped = study_variant.compare(out, ["conv3"], 0.0, held, "quick", log=lambda line: None)
    assert len(capped) == 2 and all(r["variant"] != r["stored"]["sphere-es"] for r in capped)
    # held near the first codes' norm (about sqrt(100) = 10, give or take the pairs' log-norm offsets),
    # where the config's default starts at 20 times it
    assert max(r["code_norm"] for r in capped) < 30 < 100 < min(r["code_norm"] for r in same)


def test_the_study_reports_on_the_layers_and_units_it_is_given(quick_study, tmp_path):
    """--layers and --units choose the units (a report on the units not used to tune the default):
    here conv3 and the blob unit, whose jobs the quick study did not store."""
    out = tmp_path / "s"
    shutil.copytree(quick_study[0], out)     # the report is written there; the folder is shared
    partial = study_cli(out, "--stored-only", "--layers", "conv3", "--units", "blob")
    assert partial["study"]["known"] == ["blob"] and partial["study"]["layers"] == ["conv3"]
    assert partial["partial"].startswith("Partial: the 1 of 2 units") and "blob" not in partial["partial"]
    assert partial["computed"] == 0 and all(r["n"] == 2 for r in partial["table"])
