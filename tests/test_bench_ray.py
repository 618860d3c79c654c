"""The benchmark suites on Ray (benchmarks/engine.py): a local Ray with 2 workers
gives the sequential run's numbers bit for bit, a rerun computes only missing
jobs, a failing job is tried twice and reported while the others are stored,
and no Ray process outlives a test (its session folder is under tmp_path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the 'cluster' extra (ray==2.60.0) is not installed")

from benchmarks import optimizers as bo  # noqa: E402
from benchmarks import validity  # noqa: E402
from benchmarks.engine import Engine, run_jobs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def ray_processes(marker: str) -> list[str]:
    """Processes whose command line names `marker` (the test's Ray folder): raylet, gcs_server, workers."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines()[1:] if marker in line and "ps -eo" not in line]


@pytest.fixture
def ray_dir(tmp_path_factory):
    """Ray's session folder for one test (a short path: Ray's sockets live there, and a Unix socket's
    path has at most 107 bytes); after the test, nothing of that Ray may still run."""
    folder = tmp_path_factory.mktemp("r")
    yield folder
    import ray
    assert not ray.is_initialized(), "the engine left Ray initialised in this process"
    assert ray_processes(str(folder)) == [], "Ray processes outlived the test"


def without_times(record: dict) -> dict:
    """A record's numbers: everything but wall-clock times and the time it was written."""
    result = {k: v for k, v in record["result"].items() if k not in ("seconds", "seconds_per_generation")}
    return {"job": record["job"], "result": result, "code": record["code"]}


def tiny_jobs() -> list[dict]:
    """2 optimizers x 1 unit x 2 seeds, one noise level, 3 generations x 8 images, and the
    unit's white-box reference (2 steps)."""
    suite = bo.make_suite("quick", layers=("conv3",), channel_list=(0,), sigmas=(0.2,), seeds=(0, 1),
                          optimizers=("ga", "sphere-es"), generations=3, population=8, wb_restarts=1, wb_steps=2)
    return bo.list_jobs(suite, bo.make_setting())


def test_local_ray_gives_the_sequential_numbers_and_a_rerun_skips_finished_jobs(tmp_path, ray_dir):
    jobs = tiny_jobs()
    assert len(jobs) == 5
    bogus = dict(jobs[1], optimizer="no-such-kind")      # fails in every attempt
    seq = bo.run_suite(jobs, tmp_path / "seq", device="cpu")
    assert seq.computed == 5 and not seq.failed

    engine = Engine("ray", workers=2, temp_dir=str(ray_dir))
    par = bo.run_suite(jobs + [bogus], tmp_path / "ray", engine=engine, device="cpu")
    assert par.computed == 5 and par.stored == 0
    assert [without_times(r) for r in par.records[:5]] == [without_times(r) for r in seq.records]
    # the failing job: tried twice, reported with its error, no record; the others are stored
    (failure,) = par.failed
    assert failure.index == 5 and failure.attempts == 2 and "no-such-kind" in failure.error
    assert par.records[5] is None and not bo.job_path(bogus, tmp_path / "ray").exists()
    for job in jobs:
        assert bo.load_result(job, tmp_path / "ray") is not None
    agg_seq, agg_par = bo.aggregate(jobs, seq.records), bo.aggregate(jobs + [bogus], par.records)
    assert [r["norm_best"] for r in agg_par["runs"]] == [r["norm_best"] for r in agg_seq["runs"]]

    # a rerun: every stored job is skipped (Ray is not even started for none), one removed job is recomputed
    again = bo.run_suite(jobs, tmp_path / "ray", engine=engine, device="cpu")
    assert (again.computed, again.stored) == (0, 5)
    bo.job_path(jobs[3], tmp_path / "ray").unlink()
    seen = []
    again = bo.run_suite(jobs, tmp_path / "ray", engine=engine, device="cpu",
                         progress=lambda done, total, job, rec: seen.append(job))
    assert (again.computed, again.stored) == (1, 4) and seen == [jobs[3]]
    assert without_times(again.records[3]) == without_times(seq.records[3])


def flaky(job: dict, log_dir: str) -> dict:
    """A job that fails its first job["fail"] attempts; every attempt leaves a line in LOG_DIR/NAME."""
    log = Path(log_dir) / job["name"]
    with log.open("a") as fh:
        fh.write(f"{os.getpid()}\n")
    attempts = len(log.read_text().splitlines())
    if attempts <= job["fail"]:
        raise ValueError(f"{job['name']}: attempt {attempts} fails on purpose")
    return {"job": job, "attempts": attempts}


@pytest.mark.parametrize("kind", ["sequential", "ray"])
def test_a_failed_job_is_retried_once_then_reported(tmp_path, ray_dir, kind):
    jobs = [{"name": "fine", "fail": 0}, {"name": "once", "fail": 1}, {"name": "always", "fail": 9},
            {"name": "late", "fail": 0}]
    engine = Engine(kind, workers=2, temp_dir=str(ray_dir))
    outcome = run_jobs(jobs, lambda job: None, flaky, (str(tmp_path),), engine)
    tries = {j["name"]: len((tmp_path / j["name"]).read_text().splitlines()) for j in jobs}
    assert tries == {"fine": 1, "once": 2, "always": 2, "late": 1}
    assert [r and r["attempts"] for r in outcome.records] == [1, 2, None, 1]
    (failure,) = outcome.failed
    assert failure.job == jobs[2] and failure.attempts == 2
    assert failure.error == "ValueError: always: attempt 2 fails on purpose"
    assert outcome.computed == 3


def assert_the_sequential_curves(out: Path) -> None:
    """The tiny validity suite's stored curves are the ones this process computes sequentially."""
    jobs = validity.list_jobs(validity.make_suite("quick", spaces=("fourier",), units=("colour", "blob"),
                                                  optimizers=("ga", "sphere-es"), generations=2, population=6,
                                                  image_size=32))
    for job in jobs:
        stored = validity.load_result(job, out)
        assert stored is not None and stored["result"]["curve"] == validity.run_job(job)["result"]["curve"]


def test_cli_validity_on_a_local_ray_then_a_rerun_computes_nothing(tmp_path, ray_dir):
    out = tmp_path / "v"
    env = dict(os.environ, RAY_TMPDIR=str(ray_dir), PYTHONPATH=str(REPO))
    args = [sys.executable, "-m", "xdream.cli", "bench", "validity", "--quick", "--spaces", "fourier", "--units",
            "colour,blob", "--optimizers", "ga,sphere-es", "--generations", "2", "--batch", "6", "--image-size",
            "32", "--out", str(out), "--json", "--workers", "2"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "local Ray, at most 2 jobs at a time" in first.stderr
    summary = json.loads(first.stdout.splitlines()[0])
    assert (summary["computed"], summary["stored"], summary["failed"]) == (4, 0, [])
    assert len(list(out.glob("jobs/*.json"))) == 4
    assert list((ray_dir / "ray").glob("session_*")), "Ray's session folder is not under the test's tmp path"
    assert_the_sequential_curves(out)
    second = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert (json.loads(second.stdout.splitlines()[0])["computed"]) == 0


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_processes(sid: int) -> list[int]:
    ps = subprocess.run(["ps", "-eo", "pid,sid,stat"], capture_output=True, text=True, check=True).stdout
    return [int(p) for p, s, stat in (line.split() for line in ps.splitlines()[1:])
            if int(s) == sid and not stat.startswith("Z")]


@pytest.fixture
def ray_cluster(ray_dir, tmp_path):
    """A Ray cluster as a lab runs one (`ray start --head`, token authentication), kept on
    loopback: Ray would otherwise turn 127.0.0.1 into the machine's address.  Yields (address,
    the environment a driver needs); afterwards every process of the head's session is gone."""
    import secrets
    import signal
    import time
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    port = free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", str(ray_dir),
                             "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while subprocess.run([ray_cli, "status", "--address", address], env=env,
                             capture_output=True).returncode != 0:
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray head did not come up in 90 s"
            time.sleep(1)
        yield address, env
    finally:
        # `ray stop` would stop every Ray on the machine: kill this head's session only
        for _ in range(10):
            pids = session_processes(head.pid)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        head.wait(10)
        assert session_processes(head.pid) == []


def test_cli_validity_on_a_ray_cluster_by_address_gives_the_sequential_numbers(tmp_path, ray_cluster):
    address, env = ray_cluster
    out = tmp_path / "v"
    args = [sys.executable, "-m", "xdream.cli", "bench", "validity", "--quick", "--spaces", "fourier", "--units",
            "colour,blob", "--optimizers", "ga,sphere-es", "--generations", "2", "--batch", "6", "--image-size",
            "32", "--out", str(out), "--json", "--address", address]
    # the driver runs outside the checkout: the cluster's workers get the code as Ray's working_dir upload
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=dict(env, PYTHONPATH=str(REPO)))
    assert p.returncode == 0, p.stderr
    assert f"Ray cluster {address}" in p.stderr
    summary = json.loads(p.stdout.splitlines()[0])
    assert (summary["computed"], summary["failed"]) == (4, [])
    assert_the_sequential_curves(out)
