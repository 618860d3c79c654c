"""Runs a benchmark suite's jobs: one after another in this process, or on Ray.

A suite (benchmarks/optimizers.py, benchmarks/validity.py) is a list of
JSON-described jobs, a `load(job)` that returns a job's stored result computed
by the code there is now (else None) and a module-level `run(job, *args)` that
computes a job, writes its result file and returns its record.  This module
only schedules them:

- stored results are reused, never recomputed (a rerun skips finished jobs);
- each job's result is written by the job itself as it finishes, so a suite
  killed half-way keeps what it finished;
- a job that raises (or whose Ray worker dies) is tried once more, then
  reported in `Outcome.failed`; the other jobs go on (not fatal to the suite).

Ray: a local Ray by default (`ray.init(num_cpus=...)` on this machine's cores,
no dashboard, bound to 127.0.0.1: nothing to set up), or a running cluster
given by `address` ("auto", "ray://host:10001", ...).  Ray workers import
benchmarks/ (not in the wheel) from this checkout: a local Ray gets the
checkout's root on PYTHONPATH, a cluster gets the checkout as its runtime_env
working_dir (uploaded by Ray; the cluster's Python must have the project's
dependencies).  `workers` caps the jobs in flight (and a local Ray's CPUs).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from xdream.errors import ConfigError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]      # the checkout: benchmarks/, simulators/, server/, xdream/
# what a cluster's working_dir upload leaves out (results, environments, history)
UPLOAD_EXCLUDES = [".git", ".venv", "**/__pycache__", "bench-*", "*.nwb", "*.npy", "node_modules", ".mypy_cache",
                   ".pytest_cache", ".ruff_cache", ".hypothesis", "build", "sessions", "*.egg-info"]
ATTEMPTS = 2                                    # a failed job is tried once more, then reported


@dataclass(frozen=True)
class Engine:
    """Where jobs run.  kind "sequential": in this process, in order; "ray": on Ray."""
    kind: str = "sequential"
    address: str | None = None      # a Ray cluster; None: a local Ray started (and shut down) here
    workers: int | None = None      # jobs in flight at most (default: the cluster's or machine's CPUs)
    temp_dir: str | None = None     # a local Ray's session folder (Ray's _temp_dir; default /tmp/ray)

    def describe(self) -> str:
        if self.kind == "sequential":
            return "sequential (this process)"
        where = f"Ray cluster {self.address}" if self.address else "local Ray"
        return where + (f", at most {self.workers} jobs at a time" if self.workers else "")


SEQUENTIAL = Engine()


@dataclass
class Failure:
    index: int
    job: dict
    error: str
    attempts: int


@dataclass
class Outcome:
    records: list          # one per job; None where the job failed
    computed: int = 0      # jobs run by this call (the rest were stored results)
    stored: int = 0        # jobs whose stored result was reused
    failed: list[Failure] = field(default_factory=list)
    wall_seconds: float = 0.0


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def engine_from_args(args) -> Engine:
    """--sequential, --address, --workers; without --sequential a local Ray, or, where Ray is
    not installed (the `cluster` extra), sequential with a note."""
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise ConfigError("--workers must be >= 1")
    address = getattr(args, "address", None)
    if getattr(args, "sequential", False):
        if address:
            raise ConfigError("--sequential and --address exclude each other")
        return Engine("sequential")
    if not ray_available():
        if address:
            raise ConfigError("--address needs Ray: pip install 'xdream-lab[cluster]' (ray==2.60.0)")
        log.warning("Ray is not installed (the 'cluster' extra): running the jobs sequentially")
        return Engine("sequential")
    return Engine("ray", address=address, workers=workers)


def run_jobs(jobs: list[dict], load: Callable[[dict], dict | None], run: Callable, args: tuple = (),
             engine: Engine = SEQUENTIAL, progress: Callable | None = None) -> Outcome:
    """Every job: its stored result, or `run(job, *args)` (a module-level function: Ray
    pickles it by name).  `progress(done, total, job, record)` after each computed job."""
    t0 = time.perf_counter()
    records: list = [load(j) for j in jobs]
    todo = [i for i, r in enumerate(records) if r is None]
    outcome = Outcome(records, stored=len(jobs) - len(todo))
    done = [outcome.stored]

    def finished(i: int, record: dict) -> None:
        records[i] = record
        outcome.computed += 1
        done[0] += 1
        if progress:
            progress(done[0], len(jobs), jobs[i], record)

    def failed(i: int, error: str, attempts: int) -> None:
        outcome.failed.append(Failure(i, jobs[i], error, attempts))
        done[0] += 1
        log.error("job %d failed after %d attempts: %s", i, attempts, error)

    if engine.kind == "ray" and todo:
        _run_on_ray(jobs, todo, run, args, engine, finished, failed)
    elif engine.kind not in ("ray", "sequential"):
        raise ConfigError(f"unknown engine {engine.kind!r}")
    else:
        for i in todo:
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    record = run(jobs[i], *args)
                except Exception as exc:    # noqa: BLE001 - any job error is reported, never fatal
                    if attempt == ATTEMPTS:
                        failed(i, f"{type(exc).__name__}: {exc}", attempt)
                    else:
                        log.warning("job %d failed (%s: %s): trying it once more", i, type(exc).__name__, exc)
                    continue
                finished(i, record)
                break
    outcome.failed.sort(key=lambda f: f.index)
    outcome.wall_seconds = time.perf_counter() - t0
    return outcome


def _attempt(run: Callable, job: dict, args: tuple):
    """What a Ray worker runs: one try of one job."""
    return run(job, *args)


def _run_on_ray(jobs, todo, run, args, engine: Engine, finished, failed) -> None:
    import ray
    started_here = not ray.is_initialized()
    try:
        if started_here:
            _init_ray(engine)
        capacity = int(ray.cluster_resources().get("CPU", 1))
        limit = max(1, min(engine.workers or capacity, capacity))
        task = ray.remote(num_cpus=1, max_retries=0)(_attempt)   # retries: ours below, for errors and crashes
        queue = list(todo)
        in_flight: dict = {}      # ObjectRef -> (job index, attempt)
        run_ref = ray.put(run)

        def submit(i: int, attempt: int) -> None:
            in_flight[task.remote(run_ref, jobs[i], args)] = (i, attempt)

        while queue or in_flight:
            while queue and len(in_flight) < limit:
                submit(queue.pop(0), 1)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            i, attempt = in_flight.pop(ref)
            try:
                record = ray.get(ref)
            except Exception as exc:    # noqa: BLE001 - RayTaskError (the job raised) or a dead worker
                cause = getattr(exc, "cause", None) or exc
                error = f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
                if attempt < ATTEMPTS:
                    log.warning("job %d failed (%s): trying it once more", i, error)
                    submit(i, attempt + 1)
                else:
                    failed(i, error, attempt)
                continue
            finished(i, record)
    finally:
        if started_here:
            ray.shutdown()


def _init_ray(engine: Engine) -> None:
    import ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")     # nothing leaves the machine
    if engine.address:
        ray.init(address=engine.address, logging_level=logging.WARNING,
                 runtime_env={"working_dir": str(ROOT), "excludes": UPLOAD_EXCLUDES})
        return
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=engine.workers or os.cpu_count() or 1, include_dashboard=False,
             _node_ip_address="127.0.0.1", _temp_dir=engine.temp_dir, logging_level=logging.WARNING,
             object_store_memory=200 * 2**20, runtime_env={"env_vars": {"PYTHONPATH": path}})
