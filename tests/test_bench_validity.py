"""`xdream bench validity` (benchmarks/validity.py) on a tiny suite."""

import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import validity
from xdream.errors import ConfigError


def _tiny(**kw):
    args = dict(spaces=("fourier",), optimizers=("ga",), units=("colour", "blob"), seeds=(0,), generations=3,
                population=6, image_size=32)
    args.update(kw)
    return validity.make_suite("quick", **args)


def test_a_run_reports_the_fraction_its_best_image_reaches(tmp_path):
    """The stored best image, re-scored by the unit, gives the reported fraction; the best is
    at least every generation's best; the result is stored and reused."""
    jobs = validity.list_jobs(_tiny())
    assert len(jobs) == 2
    for job in jobs:
        rec = validity.run_job(job, tmp_path)
        res = rec["result"]
        assert 0.0 <= res["final"] <= res["best"] <= 1.0 and len(res["curve"]) == 3
        assert res["best"] == max(res["curve"])
        best = np.load(validity.job_path(job, tmp_path).with_suffix(".npy"))
        unit = validity.known_unit(job["unit"], job["unit_config"])
        assert unit.fraction(best)[0] == pytest.approx(res["best"], rel=1e-12)
        assert validity.load_result(job, tmp_path) == json.loads(json.dumps(rec))
    changed = dict(jobs[0], optimizer="sphere-es")
    assert validity.load_result(changed, tmp_path) is None


def test_same_job_same_numbers(tmp_path):
    job = validity.list_jobs(_tiny(units=("blob",)))[0]
    a = validity.run_job(job)["result"]
    b = validity.run_job(job)["result"]
    assert a["curve"] == b["curve"]


def test_unknown_names_and_missing_weights_are_refused():
    with pytest.raises(ConfigError, match="unknown"):
        _tiny(units=("grating",))
    with pytest.raises(ConfigError, match="unknown"):
        _tiny(spaces=("biggan",))
    with pytest.raises(ConfigError, match="needs --generator-weights"):
        validity.list_jobs(_tiny(spaces=("deepsim-fc6-weights",)))


def test_cli_writes_table_report_and_figure(tmp_path):
    out = tmp_path / "v"
    result = subprocess.run([sys.executable, "-m", "xdream.cli", "bench", "validity", "--quick", "--spaces",
                             "fourier", "--units", "colour,gabor-energy", "--generations", "2", "--batch", "6",
                             "--image-size", "32", "--out", str(out), "--json", "--sequential"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[0])
    assert {(r["space"], r["unit"]) for r in summary["table"]} == {("fourier", "colour"),
                                                                   ("fourier", "gabor-energy")}
    assert (out / "best_images.png").stat().st_size > 1000 and "| fourier |" in (out / "report.md").read_text()


def test_a_jobs_optimizer_params_reach_the_optimizer():
    """benchmarks/norm_bounds.py sets sphere-es's norm bounds through the job: the defaults
    given explicitly reproduce the plain job exactly, other bounds give another run."""
    from benchmarks import validity
    suite = validity.make_suite("full", spaces=("dcgan-face",), optimizers=("sphere-es",), generations=10,
                                population=20, image_size=64, seeds=(0,), units=("blob",))
    job = validity.list_jobs(suite)[0]
    plain = validity.run_job(job)["result"]["curve"]
    job["optimizer_params"] = {"init_norm_factor": 3.0, "min_norm_factor": 3.0, "max_norm_factor": 10.0}
    assert validity.run_job(job)["result"]["curve"] == plain
    job["optimizer_params"] = {"init_norm_factor": 1.0, "min_norm_factor": 0.5, "max_norm_factor": 10.0}
    assert validity.run_job(job)["result"]["curve"] != plain
