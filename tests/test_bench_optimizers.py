"""`xdream bench optimizers` on a tiny budget: the harness's functions, the job
list/run round trip, the noise model, the AlexNet key mapping and the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import optimizers as bo
from simulators.insilico import Pipeline, Unit, load_alexnet, map_alexnet_state, project_to_ball
from simulators.alexnet import AlexNet
from xdream.errors import ConfigError, GeneratorError

REPO = Path(__file__).resolve().parents[1]
EPS = 1e-9
TWO = tuple(o for o in ("ga", "cmaes") if o in bo.available_optimizers())


@pytest.fixture(scope="module")
def tiny():
    """One unit (conv3 channel 0: it answers most random codes), two noise
    levels, the GA and CMA-ES, 3 generations x 8 images, a 3-step white-box."""
    suite = bo.make_suite("quick", layers=("conv3",), sigmas=(0.0, 0.5), optimizers=TWO, generations=3,
                          population=8, wb_restarts=2, wb_steps=3)
    return suite, bo.make_setting()


@pytest.fixture(scope="module")
def ran(tiny, tmp_path_factory):
    suite, setting = tiny
    out = tmp_path_factory.mktemp("bench-opt")
    jobs = bo.list_jobs(suite, setting)
    records = bo.run_jobs(jobs, out, device="cpu")
    return out, jobs, records


def test_job_list_round_trips_through_json_and_files(tiny, ran, monkeypatch):
    suite, setting = tiny
    out, jobs, records = ran
    assert [j["type"] for j in jobs] == ["whitebox"] + ["run"] * (2 * len(TWO))
    assert {(j["sigma"], j["optimizer"]) for j in jobs[1:]} == {(s, o) for s in (0.0, 0.5) for o in TWO}
    for job, record in zip(jobs, records):
        line = json.dumps(job, sort_keys=True)          # what --list-jobs prints
        assert bo.parse_job(line) == job
        path = bo.job_path(job, out)
        assert path.is_file() and json.loads(path.read_text()) == record
        assert record["job"] == job
    # a second run reuses every stored result and builds nothing
    monkeypatch.setattr(bo, "pipeline_for", lambda *a, **k: pytest.fail("recomputed a stored job"))
    assert bo.run_jobs(jobs, out) == records
    # a job that differs in anything is a different file
    other = dict(jobs[1], seed=7)
    assert bo.job_path(other, out) != bo.job_path(jobs[1], out)
    # a result computed by another version of the optimizer is stale
    path = bo.job_path(jobs[1], out)
    assert records[1]["code"]["optimizer"] == bo.optimizer_fingerprint(jobs[1]["optimizer"])
    path.write_text(json.dumps(dict(records[1], code=dict(records[1]["code"], optimizer="0" * 16))))
    assert bo.load_result(jobs[1], out) is None
    path.write_text(json.dumps(records[1]))
    with pytest.raises(ConfigError):
        bo.parse_job('{"type": "nonsense"}')


def test_aggregate_structure_and_normalised_range(tiny, ran, tmp_path):
    suite, setting = tiny
    out, jobs, records = ran
    agg = bo.aggregate(jobs, records)
    (uid, unit), = agg["units"].items()
    assert uid == "conv3:c0@6,6"
    wb = records[0]["result"]["best"]
    best_bb = max(r["result"]["best_ever"] for r in records[1:])
    assert unit["normaliser"] == pytest.approx(max(wb, best_bb)) and unit["normaliser"] > 0
    assert unit["usable"] and not agg["excluded_units"]
    assert len(agg["runs"]) == 2 * len(TWO)
    for r in agg["runs"]:
        assert 0 < r["norm_best"] <= 1 + EPS
        assert r["norm_mean"] <= r["norm_best"] + EPS
        assert r["norm_best_ever"] <= 1 + EPS
        assert len(r["curve_max"]) == suite.generations and max(r["curve_max"]) <= 1 + EPS
        assert r["curve_max"][-1] == pytest.approx(r["norm_best"])
    assert {(c["optimizer"], c["sigma"]) for c in agg["table"]} == {(o, s) for o in TWO for s in (0.0, 0.5)}
    for c in agg["table"]:
        assert c["n"] == 1 and 0 < c["best"] <= 1 + EPS and math.isnan(c["best_sem"])
    for opt in TWO:
        assert set(agg["curves"][opt]) == {"0", "0.5"}
    summary = bo.write_outputs(agg, suite, setting, tmp_path, "xdream bench optimizers (test)",
                               {"machine": bo.machine(), "wall_seconds": 1.0})
    assert (tmp_path / "curves.png").stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "xdream bench optimizers (test)" in report and "| ga |" in report
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["table"] == summary["table"] and stored["table"][0]["best_sem"] is None   # NaN -> null


def test_noise_reaches_only_the_optimizer(tiny):
    suite, setting = tiny
    pipe = bo.pipeline_for(setting, "cpu")
    job = next(j for j in bo.list_jobs(suite, setting) if j["type"] == "run" and j["optimizer"] == "ga")
    seen_by = {}
    for sigma in (0.0, 0.5):
        log = []
        result = bo.run_run(dict(job, sigma=sigma), pipe,
                            observer=lambda g, codes, clean, seen: log.append((codes, clean, seen)))
        seen_by[sigma] = log
        for codes, clean, seen in log:
            # what is recorded as clean is the network's answer, re-scored from the codes
            np.testing.assert_allclose(clean, pipe.score(codes, Unit.from_dict(job["unit"])), rtol=1e-5, atol=1e-6)
            if sigma == 0:
                np.testing.assert_array_equal(seen, clean)
            else:
                assert not np.allclose(seen, clean)
                assert np.all((seen >= 0) | (clean < 0))          # the gain is max(0, 1 + sigma N)
        assert result["curves"]["clean_max"] == [float(c.max()) for _, c, _ in log]
        assert result["final_best"] == float(log[-1][1].max())
        assert result["curves"]["seen_max"] == [float(s.max()) for _, _, s in log]
    # both noise levels start from the same codes (common random numbers)
    np.testing.assert_array_equal(seen_by[0.0][0][0], seen_by[0.5][0][0])
    np.testing.assert_array_equal(seen_by[0.0][0][1], seen_by[0.5][0][1])


def test_whitebox_stays_in_the_ball(tiny):
    pipe = bo.pipeline_for(tiny[1], "cpu")
    r = pipe.whitebox(Unit.centre("conv3", 0), bound=100.0, restarts=2, steps=4, lr=0.5)
    assert r["best_code_norm"] <= 100.0 + 1e-3
    assert r["best"] == max(r["per_restart"]) and len(r["pre_activation_trace"]) == 5
    z = torch.randn(3, 4096) * 10
    assert float(project_to_ball(z, 5.0).norm(dim=1).max()) == pytest.approx(5.0, rel=1e-5)


TV_NAMES = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6", "conv4": "features.8",
            "conv5": "features.10", "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}


def torchvision_names(state: dict, prefix: str = "") -> dict:
    return {f"{prefix}{TV_NAMES[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in state.items()}


def test_alexnet_weights_from_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(3)
    ref = AlexNet().eval()
    ours = ref.state_dict()
    path = tmp_path / "alexnet-tv.pth"
    torch.save(torchvision_names(ours, "module."), path)      # as saved from a DataParallel model
    net, sha = load_alexnet(path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, ours[k]), k
    assert len(sha) == 64
    # the pipeline uses such weights as they are (no standardisation)
    pipe = Pipeline(alexnet_weights=str(path), device="cpu", fast=False)
    assert pipe.alexnet_provenance == sha
    codes = np.random.default_rng(0).standard_normal((2, 4096))
    with torch.no_grad():
        x = pipe._network_input(pipe.generator(torch.as_tensor(codes, dtype=torch.float32)))
        want = ref(x)[:, 5].double().numpy()
    np.testing.assert_allclose(pipe.score(codes, Unit.centre("fc8", 5)), want, rtol=1e-5, atol=1e-6)
    # our own names, wrapped in {'state_dict': ...}, map too; wrong keys and shapes are named
    assert set(map_alexnet_state({"state_dict": dict(ours)})) == set(ours)
    tv = torchvision_names(ours)
    del tv["classifier.6.bias"]
    with pytest.raises(GeneratorError, match="fc8.bias"):
        map_alexnet_state(tv)
    tv["classifier.6.bias"] = torch.zeros(10)
    with pytest.raises(GeneratorError, match="shape"):
        map_alexnet_state(tv)
    with pytest.raises(GeneratorError, match="unexpected"):
        map_alexnet_state(dict(torchvision_names(ours), **{"features.99.weight": torch.zeros(1)}))


def test_cli_list_jobs_job_and_json(tmp_path, capsys):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = ["bench", "optimizers", "--layers", "conv3", "--channel-list", "0", "--sigmas", "0,0.2",
            "--optimizers", TWO[0], "--generations", "2", "--batch", "6", "--wb-steps", "2", "--wb-restarts", "1",
            "--device", "cpu", "--out", str(tmp_path), "--sequential"]

    def run(*extra):
        p = subprocess.run([sys.executable, "-m", "xdream.cli"] + args + list(extra), capture_output=True,
                           text=True, timeout=150, cwd=REPO, env=env)
        assert p.returncode == 0, p.stderr
        return p.stdout

    lines = run("--list-jobs").splitlines()
    jobs = [json.loads(line) for line in lines]
    assert [j["type"] for j in jobs] == ["whitebox", "run", "run"]
    # one job through the same command line, in this process (as a cluster task would run it)
    from xdream.cli import main
    assert main(args + ["--job", lines[0]]) == 0
    done = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert Path(done["path"]).is_file() and done["type"] == "whitebox"
    summary = json.loads(run("--json"))
    assert summary["computed"] == 2                       # the white-box reference was reused
    assert {(c["optimizer"], c["sigma"]) for c in summary["table"]} == {(TWO[0], 0.0), (TWO[0], 0.2)}
    for r in summary["runs"]:
        assert 0 < r["norm_best"] <= 1 + EPS
    assert summary["units"]["conv3:c0@6,6"]["normaliser"] > 0
    assert summary["suite"]["generations"] == 2 and summary["suite"]["population"] == 6
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "report.md").is_file()


def test_alexnet_weights_of_the_wrong_shape_are_named():
    from simulators.insilico import map_alexnet_state
    from simulators.alexnet import AlexNet
    from xdream.errors import GeneratorError
    state = AlexNet().state_dict()
    state["conv1.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(GeneratorError, match=r"conv1.weight has shape \(3, 3, 3, 3\), expected \(64, 3, 11, 11\)"):
        map_alexnet_state(state)


def test_the_curves_legend_sits_outside_every_panel_and_names_kinds_as_now():
    """The quick suite's plot hid the sigma 0.5 curves behind its legend and said "ours"."""
    import matplotlib.pyplot as plt

    from benchmarks.optimizers import curves_figure

    x = np.linspace(0.01, 0.3, 75)
    agg = {"optimizers": ["ga", "pycma", "pycma-diag", "sphere-cma", "ours"], "sigmas": [0, 0.2, 0.5],
           "curves": {o: {f"{s:g}": {"max": (x * (i + 1)).tolist(), "mean": (x * i).tolist(),
                                     "max_sem": (x * 0.1).tolist()} for s in (0, 0.2, 0.5)}
                      for i, o in enumerate(["ga", "pycma", "pycma-diag", "sphere-cma", "ours"])}}
    fig = curves_figure(agg)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
        legend = fig.legends[0].get_window_extent(renderer)
        assert not any(legend.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert "sphere-es" in labels and "ours" not in labels
    finally:
        plt.close(fig)
