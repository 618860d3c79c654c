"""`xdream bench optimizers`: the Ponce-lab optimizer benchmark (Wang & Ponce,
GECCO 2022, arXiv 2204.06765) on in-silico neurons.

Protocol (per run): an optimizer evolves codes of the DeePSiM-fc6-shaped
generator for `generations` x `population` images (75 x 40 = 3,000) against one
AlexNet unit (simulators/insilico.py: layer, channel, centre position; ReLU output
for conv1..fc7, raw fc8 as the Ponce lab hooked them).  The optimizer sees
score * max(0, 1 + sigma * N(0, 1)); every image's clean (noise-free)
activation is recorded too, and only clean activations enter the metrics.

Normalisation: each unit gets a white-box reference, gradient ascent on the
code through the same generator and network with the code norm bounded
(`Pipeline.whitebox`), and the unit's normaliser is the best clean activation
any method reached on it: the white-box reference or any image of any run of
this invocation (all optimizers, sigmas, seeds).

Metrics per run: the clean activation of the final generation's best image
(`norm_best`) and the final generation's mean (`norm_mean`), both divided by
the normaliser; per generation, the normalised clean max and mean (curves).

Jobs: a run (unit, sigma, seed, optimizer) and a white-box reference (unit) are
independent jobs, JSON-described; `--list-jobs` prints them one per line and
`--job JSON` runs one, so that a cluster can run them as a job array and a
last plain call aggregates.  Results land in OUT/jobs/ and are reused by any
later call with the identical job (the white-box cache per unit included).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import platform
import re
import shlex
import sys
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.engine import SEQUENTIAL, Engine, Outcome, engine_from_args
from benchmarks.engine import run_jobs as run_engine
from xdream.errors import ConfigError
from xdream.files import write_atomic
from xdream.optimizer_kinds import OPTIMIZER_ALIASES, OPTIMIZER_KINDS, canonical_kind
from xdream.progress import Bar

log = logging.getLogger(__name__)

DIM = 4096
INIT_NORM = math.sqrt(DIM)         # E|z| of a N(0, I) code: 64
WB_NORM_FACTOR = 8.0               # white-box code-norm bound = 8 x 64 = 512 (docs/benchmarks.md, Optimizers)
ALL_LAYERS = ("conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
SIGMAS = (0.0, 0.2, 0.5)
ALL_OPTIMIZERS = OPTIMIZER_KINDS
QUICK_OPTIMIZERS = ("ga", "pycma", "pycma-diag", "sphere-cma", "sphere-es")   # the Goal's comparison
# A run's random streams are keyed by its optimizer's name; a renamed kind keeps its old name's
# streams, so that the tables measured as "ours" (docs/benchmarks.md) reproduce to the last digit.
STREAM_NAME = {new: old for old, new in OPTIMIZER_ALIASES.items()}


@dataclass(frozen=True)
class Suite:
    """What to run.  A unit is (layer, channel); channels are 0..channels-1,
    as the Ponce lab took channels 0-9 of every layer."""
    name: str
    layers: tuple[str, ...]
    channels: int
    seeds: tuple[int, ...]
    sigmas: tuple[float, ...] = SIGMAS
    optimizers: tuple[str, ...] = ALL_OPTIMIZERS
    generations: int = 75
    population: int = 40
    wb_norm: float = WB_NORM_FACTOR * INIT_NORM
    wb_restarts: int = 2
    wb_steps: int = 200
    wb_lr: float = 1.0
    channel_list: tuple[int, ...] | None = None   # explicit channels, overriding `channels`

    def units(self):
        from simulators.insilico import Unit
        chans = self.channel_list if self.channel_list is not None else tuple(range(self.channels))
        return [Unit.centre(layer, c) for layer in self.layers for c in chans]

    def describe(self) -> str:
        chans = list(self.channel_list) if self.channel_list is not None else f"0..{self.channels - 1}"
        name = self.name if SUITES.get(self.name) == self else f"{self.name}, modified by options"
        return (f"suite {name}: layers {', '.join(self.layers)}; channels {chans} (centre position of conv "
                f"maps); seeds {list(self.seeds)}; sigma {list(self.sigmas)}; optimizers "
                f"{', '.join(self.optimizers)}; {self.generations} generations x {self.population} images; "
                f"white-box: {self.wb_restarts} restarts x {self.wb_steps} Adam steps (lr {self.wb_lr}), "
                f"code norm <= {self.wb_norm:g}")


SUITES = {
    # 2 units x 3 noise levels x 5 optimizers = 30 runs + 2 white-box references:
    # 16.4 min on the 2-core dev CPU when quiet (docs/benchmarks.md, Optimizers)
    "quick": Suite("quick", layers=("conv3", "fc8"), channels=1, seeds=(0,), optimizers=QUICK_OPTIMIZERS),
    # the published protocol: 7 layers x 10 channels x 5 repetitions x 3 noise levels x 7 optimizers
    "gecco": Suite("gecco", layers=ALL_LAYERS, channels=10, seeds=(0, 1, 2, 3, 4),
                   wb_restarts=4, wb_steps=500),
}


def make_suite(name: str = "quick", **overrides) -> Suite:
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; suites: {', '.join(SUITES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "optimizers" in overrides:   # an old name ("ours") runs the kind it names now
        overrides["optimizers"] = tuple(canonical_kind(o) for o in overrides["optimizers"])
    suite = replace(SUITES[name], **overrides)
    from simulators.alexnet import LAYERS
    bad = [layer for layer in suite.layers if layer not in LAYERS]
    if bad:
        raise ConfigError(f"unknown layers {bad}; layers: {', '.join(LAYERS)}")
    if suite.generations < 1 or suite.population < 2:
        raise ConfigError("generations must be >= 1 and population >= 2")
    if any(s < 0 for s in suite.sigmas):
        raise ConfigError("sigma must be >= 0")
    if suite.wb_norm <= 0 or suite.wb_restarts < 1 or suite.wb_steps < 0:
        raise ConfigError("white-box: norm > 0, restarts >= 1, steps >= 0")
    known = available_optimizers()
    if "optimizers" not in overrides:   # a suite's own list: those this checkout has
        suite = replace(suite, optimizers=tuple(o for o in suite.optimizers if o in known))
    unknown = [o for o in suite.optimizers if o not in known]
    if unknown or not suite.optimizers:
        raise ConfigError(f"optimizers {unknown} are not available here; available: {', '.join(known)}")
    return suite


# --------------------------------------------------------------------------- optimizers

def available_optimizers() -> tuple[str, ...]:
    from server.optimizers import OPTIMIZERS
    return tuple(OPTIMIZERS)


def new_optimizer(kind: str, rng: np.random.Generator, population: int, init_codes: np.ndarray, **params):
    from server.optimizers import make_optimizer
    return make_optimizer(kind, init_codes.shape[1:], rng, population=population, init_codes=init_codes, name=kind,
                          **params)


def optimizer_params(opt) -> dict:
    """The optimizer's constructor keywords with their values, where they are plain numbers/strings."""
    out = {}
    for name in inspect.signature(type(opt).__init__).parameters:
        value = getattr(opt, name, None)
        if name not in ("self", "code_shape", "rng", "init_codes", "name") and isinstance(value, (int, float, str)):
            out[name] = value
    return out


# --------------------------------------------------------------------------- jobs

def weights_entry(path: str | None, seed: int) -> dict:
    if not path:
        return {"weights": None, "sha256": None, "seed": int(seed)}
    from xdream.files import sha256_file
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    return {"weights": str(p), "sha256": sha256_file(p), "seed": int(seed)}


def make_setting(generator_weights: str | None = None, alexnet_weights: str | None = None,
                 generator_seed: int = 0, alexnet_seed: int = 0, generator_kind: str = "deepsim-fc6") -> dict:
    """The in-silico world every job of an invocation shares.  The generator's kind is
    named only when it is not the protocol's DeePSiM fc6 (so stored fc6 jobs keep their keys)."""
    generator = weights_entry(generator_weights, generator_seed)
    if generator_kind != "deepsim-fc6":
        generator["kind"] = generator_kind
    return {"generator": generator, "alexnet": weights_entry(alexnet_weights, alexnet_seed)}


def generator_kind(setting: dict) -> str:
    return setting["generator"].get("kind", "deepsim-fc6")


def list_jobs(suite: Suite, setting: dict) -> list[dict]:
    """White-box jobs (one per unit), then runs (unit x sigma x seed x optimizer)."""
    jobs = []
    for unit in suite.units():
        jobs.append({"type": "whitebox", "setting": setting, "unit": unit.to_dict(), "norm": float(suite.wb_norm),
                     "restarts": suite.wb_restarts, "steps": suite.wb_steps, "lr": suite.wb_lr, "seed": 0})
    for unit in suite.units():
        for sigma in suite.sigmas:
            for seed in suite.seeds:
                for opt in suite.optimizers:
                    jobs.append({"type": "run", "setting": setting, "unit": unit.to_dict(), "sigma": float(sigma),
                                 "seed": int(seed), "optimizer": opt, "generations": suite.generations,
                                 "population": suite.population})
    return jobs


def job_key(job: dict) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:12]


def job_path(job: dict, out: Path) -> Path:
    from simulators.insilico import Unit
    unit = re.sub(r"[^A-Za-z0-9_.-]", "_", Unit.from_dict(job["unit"]).id)
    if job["type"] == "whitebox":
        name = f"whitebox/{unit}-{job_key(job)}.json"
    else:
        name = f"runs/{unit}_s{job['sigma']:g}_seed{job['seed']}_{job['optimizer']}-{job_key(job)}.json"
    return Path(out) / "jobs" / name


def parse_job(text: str) -> dict:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        job = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--job: not JSON: {exc}") from None
    if not isinstance(job, dict) or job.get("type") not in ("run", "whitebox") or "unit" not in job \
            or "setting" not in job:
        raise ConfigError("--job: expected a job object from --list-jobs (type run or whitebox)")
    return job


def code_fingerprint(job: dict) -> dict:
    """What computed a job's result, beside the job itself: the source of the
    optimizer's module (and of the optimizers' base module) for a run, and the
    in-silico pipeline's version.  A stored result whose fingerprint differs is
    stale: the optimizer (or the pipeline) changed since it was computed."""
    from simulators.insilico import PIPELINE_VERSION
    out = {"pipeline": PIPELINE_VERSION}
    if job["type"] == "run":
        out["optimizer"] = optimizer_fingerprint(job["optimizer"])
    return out


def optimizer_fingerprint(kind: str) -> str:
    from server.optimizers import OPTIMIZERS
    cls = OPTIMIZERS[canonical_kind(kind)]
    h = hashlib.sha256()
    for module in dict.fromkeys([inspect.getmodule(cls)] + [inspect.getmodule(b) for b in cls.__mro__[1:-1]]):
        try:
            h.update(inspect.getsource(module).encode())
        except (OSError, TypeError):
            h.update(repr(module).encode())
    return h.hexdigest()[:16]


def load_result(job: dict, out: Path) -> dict | None:
    """The stored result of exactly this job, computed by the code there is now; else None."""
    path = job_path(job, out)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("job") != job:
        return None
    if "code" in data and data["code"] != code_fingerprint(job):
        log.info("stored result %s is stale (the optimizer or the pipeline changed): recomputing", path)
        return None
    return data


_PIPELINES: dict = {}


def pipeline_for(setting: dict, device: str = "auto"):
    """One Pipeline per (setting, device) per process (building one takes seconds)."""
    from simulators.insilico import Pipeline
    from xdream.files import sha256_file
    key = (json.dumps(setting, sort_keys=True), device)
    if key not in _PIPELINES:
        for part in ("generator", "alexnet"):
            entry = setting[part]
            if entry["weights"] and sha256_file(entry["weights"]) != entry["sha256"]:
                raise ConfigError(f"{entry['weights']} changed since the jobs were listed (SHA-256 differs)")
        _PIPELINES.clear()
        _PIPELINES[key] = Pipeline(setting["generator"]["weights"], setting["generator"]["seed"],
                                   setting["alexnet"]["weights"], setting["alexnet"]["seed"], device=device,
                                   generator_kind=generator_kind(setting))
    return _PIPELINES[key]


def _stream(*parts) -> np.random.Generator:
    """A generator keyed by strings and numbers (stable across runs and machines)."""
    words = [zlib.crc32(str(p).encode()) for p in parts]
    return np.random.default_rng(np.random.SeedSequence(words))


def run_run(job: dict, pipe, observer=None, score=None, unit_id: str | None = None) -> dict:
    """One run; `observer(generation, codes, clean, seen)` sees every generation
    (tests use it to check that only the optimizer sees noise).  `score(codes)` and
    `unit_id` replace the job's AlexNet unit (benchmarks/study.py: known-optimum units)."""
    from simulators.insilico import Unit
    if score is None:
        alexnet_unit = Unit.from_dict(job["unit"])
        unit_id = alexnet_unit.id

        def score(codes):
            return pipe.score(codes, alexnet_unit)
    assert unit_id is not None
    sigma, seed, kind = float(job["sigma"]), int(job["seed"]), job["optimizer"]
    population, generations = int(job["population"]), int(job["generations"])
    # common random numbers: every optimizer and noise level of (unit, seed) starts from
    # the same codes; the optimizer's own draws do not depend on sigma
    init = _stream("init", unit_id, seed).standard_normal((population, int(np.prod(pipe.code_shape))))
    key = STREAM_NAME.get(kind, kind)
    opt = new_optimizer(kind, _stream("optimizer", unit_id, seed, key), population, init,
                        **job.get("optimizer_params", {}))   # the study's default, as its config sets it
    noise_rng = _stream("noise", unit_id, seed, key, sigma)
    curves = {k: [] for k in ("clean_max", "clean_mean", "seen_max", "seen_mean", "norm_mean", "norm_max")}
    best_ever, best_gen = -math.inf, -1
    t0 = time.perf_counter()
    final = None
    for g in range(generations):
        cand = opt.ask()
        codes = np.asarray(cand.codes, dtype=float).reshape(len(cand.ids), -1)
        clean = score(codes)
        if sigma > 0:
            seen = clean * np.maximum(0.0, 1.0 + sigma * noise_rng.standard_normal(len(clean)))
        else:
            seen = clean.copy()
        if observer is not None:
            observer(g, codes, clean, seen)
        opt.tell(cand.ids, seen)
        norms = np.linalg.norm(codes, axis=1)
        for k, v in (("clean_max", clean.max()), ("clean_mean", clean.mean()), ("seen_max", seen.max()),
                     ("seen_mean", seen.mean()), ("norm_mean", norms.mean()), ("norm_max", norms.max())):
            curves[k].append(float(v))
        if clean.max() > best_ever:
            best_ever, best_gen = float(clean.max()), g
        final = clean
    seconds = time.perf_counter() - t0
    return {"final_best": float(final.max()), "final_mean": float(final.mean()), "final_n": int(len(final)),
            "best_ever": best_ever, "best_ever_generation": best_gen,
            "final_code_norm": curves["norm_mean"][-1], "max_code_norm": max(curves["norm_max"]),
            "curves": curves, "seconds": seconds, "seconds_per_generation": seconds / generations,
            "optimizer_params": optimizer_params(opt)}


def run_job(job: dict, out: str | Path, *, device: str = "auto", reuse: bool = True) -> dict:
    """Run one job (or reuse its stored result) and write OUT/jobs/.../<name>.json."""
    out = Path(out)
    if reuse:
        stored = load_result(job, out)
        if stored is not None:
            return stored
    from simulators.insilico import Unit
    pipe = pipeline_for(job["setting"], device)
    t0 = time.perf_counter()
    if job["type"] == "whitebox":
        result = pipe.whitebox(Unit.from_dict(job["unit"]), bound=job["norm"], restarts=job["restarts"],
                               steps=job["steps"], lr=job["lr"], seed=job["seed"])
        result["seconds"] = time.perf_counter() - t0
    else:
        result = run_run(job, pipe)
    record = {"job": job, "result": result, "code": code_fingerprint(job), "device": str(pipe.device),
              "accelerated": pipe.accelerated,
              "provenance": {"generator": pipe.generator_provenance, "alexnet": pipe.alexnet_provenance},
              "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = job_path(job, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record).encode()
    write_atomic(path, lambda f: f.write(text))   # a reader never sees half a result
    return record


def _tune_allocator() -> None:
    try:
        from server.generators.fast import tune_cpu_allocator
    except ImportError:
        return
    tune_cpu_allocator()


def engine_job(job: dict, out: str, device: str) -> dict:
    """One job as the engine runs it (in this process or a Ray worker): computed, stored, returned."""
    _tune_allocator()     # per process; idempotent
    return run_job(job, out, device=device, reuse=False)


def run_suite(jobs: list[dict], out: str | Path, *, engine: Engine = SEQUENTIAL, device: str = "auto",
              progress=None) -> Outcome:
    """Every job, reusing stored results, on `engine` (benchmarks/engine.py: sequential or Ray);
    a job that fails twice is in `Outcome.failed` and its record is None.
    `progress(done, total, job, record)` after each computed job."""
    out = Path(out)
    return run_engine(jobs, lambda j: load_result(j, out), engine_job, (str(out), device), engine, progress)


def run_jobs(jobs: list[dict], out: str | Path, *, engine: Engine = SEQUENTIAL, device: str = "auto",
             progress=None) -> list[dict]:
    """Every job's record, in order; a job that fails (twice) raises."""
    outcome = run_suite(jobs, out, engine=engine, device=device, progress=progress)
    if outcome.failed:
        f = outcome.failed[0]
        raise RuntimeError(f"{len(outcome.failed)} job(s) failed; the first: {f.job} ({f.error})")
    return outcome.records


# --------------------------------------------------------------------------- aggregation

def _mean_sem(values) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), sem, len(v)


def aggregate(jobs: list[dict], records: list) -> dict:
    """Failed jobs (record None) are left out."""
    from simulators.insilico import Unit
    pairs = [(j, r) for j, r in zip(jobs, records) if r is not None]
    jobs, records = [j for j, _ in pairs], [r for _, r in pairs]
    units: dict[str, dict] = {}
    for job, rec in zip(jobs, records):
        uid = Unit.from_dict(job["unit"]).id
        u = units.setdefault(uid, {"layer": job["unit"]["layer"], "whitebox": None, "best_blackbox": -math.inf,
                                   "best_blackbox_from": None, "whitebox_seconds": None})
        if job["type"] == "whitebox":
            u["whitebox"] = rec["result"]["best"]
            u["whitebox_seconds"] = rec["result"]["seconds"]
            u["whitebox_code_norm"] = rec["result"]["best_code_norm"]
        elif rec["result"]["best_ever"] > u["best_blackbox"]:
            u["best_blackbox"] = rec["result"]["best_ever"]
            u["best_blackbox_from"] = f"{job['optimizer']} sigma {job['sigma']:g} seed {job['seed']}"
    for u in units.values():
        wb = u["whitebox"] if u["whitebox"] is not None else -math.inf
        u["normaliser"] = max(wb, u["best_blackbox"])
        u["normaliser_from"] = "white-box" if wb >= u["best_blackbox"] else u["best_blackbox_from"]
        u["usable"] = bool(np.isfinite(u["normaliser"]) and u["normaliser"] > 0)
        if u["best_blackbox"] == -math.inf:
            u["best_blackbox"] = None

    runs = []
    for job, rec in zip(jobs, records):
        if job["type"] != "run":
            continue
        uid = Unit.from_dict(job["unit"]).id
        u, r = units[uid], rec["result"]
        n = u["normaliser"] if u["usable"] else math.nan
        bb = u["best_blackbox"] if u["best_blackbox"] and u["best_blackbox"] > 0 else math.nan
        runs.append({"unit": uid, "layer": job["unit"]["layer"], "sigma": job["sigma"], "seed": job["seed"],
                     "optimizer": job["optimizer"], "final_best": r["final_best"], "final_mean": r["final_mean"],
                     "best_ever": r["best_ever"], "norm_best": r["final_best"] / n, "norm_mean": r["final_mean"] / n,
                     "norm_best_ever": r["best_ever"] / n, "bb_best": r["final_best"] / bb,
                     "bb_mean": r["final_mean"] / bb, "final_code_norm": r["final_code_norm"],
                     "max_code_norm": r["max_code_norm"], "seconds": r["seconds"],
                     "curve_max": [x / n for x in r["curves"]["clean_max"]],
                     "curve_mean": [x / n for x in r["curves"]["clean_mean"]]})

    optimizers = list(dict.fromkeys(r["optimizer"] for r in runs))
    sigmas = sorted({r["sigma"] for r in runs})
    layers = [layer for layer in ALL_LAYERS + ("conv1",) if any(r["layer"] == layer for r in runs)]

    def cell(rows):
        out = {"n": len(rows)}
        for key, field in (("best", "norm_best"), ("mean", "norm_mean"), ("bb_best", "bb_best"),
                           ("bb_mean", "bb_mean")):
            out[key], out[f"{key}_sem"], _ = _mean_sem(r[field] for r in rows)
        out["final_code_norm_median"] = float(np.median([r["final_code_norm"] for r in rows])) if rows else math.nan
        out["seconds_mean"] = float(np.mean([r["seconds"] for r in rows])) if rows else math.nan
        return out

    table, by_layer, curves = [], [], {}
    for opt in optimizers:
        for s in sigmas:
            rows = [r for r in runs if r["optimizer"] == opt and r["sigma"] == s and np.isfinite(r["norm_best"])]
            table.append({"optimizer": opt, "sigma": s, **cell(rows)})
            for layer in layers:
                lrows = [r for r in rows if r["layer"] == layer]
                by_layer.append({"optimizer": opt, "sigma": s, "layer": layer, **cell(lrows)})
            if rows:
                cmax = np.array([r["curve_max"] for r in rows])
                cmean = np.array([r["curve_mean"] for r in rows])
                sem = cmax.std(0, ddof=1) / math.sqrt(len(rows)) if len(rows) > 1 else np.full(cmax.shape[1], np.nan)
                curves.setdefault(opt, {})[f"{s:g}"] = {"max": cmax.mean(0).tolist(), "max_sem": sem.tolist(),
                                                        "mean": cmean.mean(0).tolist(), "n": len(rows)}
    run_seconds = [r["seconds"] for r in runs]
    wb_seconds = [u["whitebox_seconds"] for u in units.values() if u["whitebox_seconds"] is not None]
    return {"units": units, "runs": runs, "table": table, "by_layer": by_layer, "curves": curves,
            "optimizers": optimizers, "sigmas": sigmas, "layers": layers,
            "timing": {"runs": len(runs), "run_seconds_mean": float(np.mean(run_seconds)) if runs else None,
                       "run_seconds_sum": float(np.sum(run_seconds)),
                       "whitebox_seconds_mean": float(np.mean(wb_seconds)) if wb_seconds else None,
                       "whitebox_seconds_sum": float(np.sum(wb_seconds))},
            "excluded_units": [k for k, u in units.items() if not u["usable"]]}


# --------------------------------------------------------------------------- report

def machine() -> dict:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gpu": gpu, "python": platform.python_version(), "load_average": load}


def _fmt(mean: float, sem: float) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.2f} ± {sem:.2f}" if np.isfinite(sem) else f"{mean:.2f}"


def table_markdown(agg: dict, by_layer: bool = False, metrics: tuple[str, ...] = ("best", "mean")) -> str:
    """Mean ± s.e.m. per optimizer (and layer) and sigma; `metrics`: best, mean
    (normalised by the unit's normaliser) or bb_best, bb_mean (by the best black-box image)."""
    sigmas = agg["sigmas"]
    label = {"best": "best", "mean": "mean", "bb_best": "best/bb", "bb_mean": "mean/bb"}
    head = "| optimizer |" + ("" if not by_layer else " layer |") + "".join(
        f" σ={s:g} {label[m]} |" for s in sigmas for m in metrics) + " code norm | s/run |"
    sep = "|---|" + ("" if not by_layer else "---|") + "---|" * (len(metrics) * len(sigmas)) + "---|---|"
    lines = [head, sep]
    rows = agg["by_layer"] if by_layer else agg["table"]
    groups = [(o, layer) for o in agg["optimizers"] for layer in (agg["layers"] if by_layer else [None])]
    for opt, layer in groups:
        cells = [r for r in rows if r["optimizer"] == opt and (layer is None or r["layer"] == layer)]
        by_s = {r["sigma"]: r for r in cells}
        parts = []
        for s in sigmas:
            r = by_s.get(s)
            parts += [_fmt(r[m], r[f"{m}_sem"]) if r else "-" for m in metrics]
        norms = [r["final_code_norm_median"] for r in cells if np.isfinite(r["final_code_norm_median"])]
        secs = [r["seconds_mean"] * r["n"] for r in cells if r["n"]]
        n_runs = sum(r["n"] for r in cells)
        tail = f" {np.median(norms):.0f} |" if norms else " - |"
        tail += f" {sum(secs) / n_runs:.0f} |" if n_runs else " - |"
        lines.append(f"| {opt} |" + (f" {layer} |" if by_layer else "") + "".join(f" {p} |" for p in parts) + tail)
    return "\n".join(lines)


def curve_markdown(agg: dict, points: tuple[int, ...] = (1, 10, 25, 50, 75)) -> str:
    """The curves in numbers: normalised generation max (mean over runs) at some generations."""
    n_gen = max((len(c["max"]) for o in agg["curves"].values() for c in o.values()), default=0)
    gens = [g for g in points if g <= n_gen] or [n_gen]
    lines = ["| optimizer | σ |" + "".join(f" g{g} |" for g in gens), "|---|---|" + "---|" * len(gens)]
    for opt in agg["optimizers"]:
        for s in agg["sigmas"]:
            c = agg["curves"].get(opt, {}).get(f"{s:g}")
            if c:
                lines.append(f"| {opt} | {s:g} |" + "".join(f" {c['max'][g - 1]:.2f} |" for g in gens))
    return "\n".join(lines)


def plot_curves(agg: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig = curves_figure(agg)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_figure(agg: dict):
    """One panel per noise level; one colour per optimizer (its current name: results stored under an
    old one, "ours", are drawn as the kind it names now), solid = generation max (± s.e.m.), dashed =
    generation mean.  The legend sits below the panels, never over a curve."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    sigmas = agg["sigmas"]
    names = [canonical_kind(o) for o in agg["optimizers"]]
    fig, axes = plt.subplots(1, len(sigmas), figsize=(4.2 * len(sigmas), 4.2), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, s in zip(axes[0], sigmas):
        for i, opt in enumerate(agg["optimizers"]):
            c = agg["curves"].get(opt, {}).get(f"{s:g}")
            if not c:
                continue
            x = np.arange(1, len(c["max"]) + 1)
            color = colors[i % len(colors)]
            ax.plot(x, c["max"], color=color)
            sem = np.asarray(c["max_sem"], dtype=float)
            if np.isfinite(sem).all():
                ax.fill_between(x, np.asarray(c["max"]) - sem, np.asarray(c["max"]) + sem, color=color, alpha=0.2)
            ax.plot(x, c["mean"], color=color, linestyle="--", linewidth=1)
        ax.set_title(f"noise σ = {s:g}")
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalised clean activation")
    handles = [Line2D([], [], color=colors[i % len(colors)], linewidth=2, label=name) for i, name in enumerate(names)]
    handles += [Line2D([], [], color="0.3", label="generation max (± s.e.m.)"),
                Line2D([], [], color="0.3", linestyle="--", linewidth=1, label="generation mean")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4 if len(sigmas) < 3 else 7),
               fontsize=8, frameon=False)
    fig.suptitle("xdream bench optimizers: normalised clean activation per generation", fontsize=9)
    rows = -(-len(handles) // (4 if len(sigmas) < 3 else 7))
    fig.tight_layout(rect=(0, (0.25 * rows + 0.1) / fig.get_figheight(), 1, 1))
    return fig


def replot(out: Path, path: Path | None = None) -> Path:
    """Draw OUT/curves.png again from OUT/results.json (no job is run)."""
    results = Path(out) / "results.json"
    try:
        agg = json.loads(results.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{results} cannot be read ({exc}): run the benchmark first") from None
    if not agg.get("curves"):
        raise ConfigError(f"{results} holds no curves (written by another benchmark?)")
    for c in (c for o in agg["curves"].values() for c in o.values()):   # strict JSON wrote NaN as null
        c["max_sem"] = [math.nan if v is None else v for v in c["max_sem"]]
    return plot_curves(agg, path or Path(out) / "curves.png")


def report_markdown(agg: dict, suite: Suite, setting: dict, command: str, info: dict) -> str:
    m = info["machine"]
    t = agg["timing"]
    gen = setting["generator"]
    net = setting["alexnet"]
    dev = info.get("device", "cpu")
    lines = [
        "## Optimizers (`xdream bench optimizers`)", "",
        "Command:", "", "```", command, "```", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads), device {dev}"
        + (f" ({m['gpu']})" if m.get("gpu") else "") + f"; load average at start {info.get('load_start')}, "
        f"at end {info.get('load_end')} (1, 5, 15 min).", "",
        f"Suite: {suite.describe()}.", "",
        f"Generator: DeePSiM-fc6-shaped, "
        + (f"weights {gen['weights']} (sha256 {gen['sha256'][:12]}...)" if gen["weights"]
           else f"seeded random weights (seed {gen['seed']}, LSUV-scaled)")
        + "; AlexNet: " + (f"weights {net['weights']} (sha256 {net['sha256'][:12]}...)" if net["weights"]
                           else f"seeded random weights (seed {net['seed']}), each channel standardised on the "
                                "generator's images") + ".", "",
        f"{len(agg['runs'])} runs and {len(agg['units'])} white-box references; this call computed "
        f"{info.get('computed', '?')} of them (the rest were stored results) in "
        f"{info.get('wall_seconds', 0) / 60:.1f} min. Job times as measured when each ran: one run "
        f"({suite.generations}x{suite.population}) {t['run_seconds_mean'] or 0:.0f} s on average, one white-box "
        f"reference {t['whitebox_seconds_mean'] or 0:.0f} s; all jobs "
        f"{(t['run_seconds_sum'] + t['whitebox_seconds_sum']) / 60:.1f} min (without start-up)"
        + (f"; jobs ran {info['engine']}" if info.get("engine") else "") + ".", "",
    ]
    if info.get("failed"):
        lines += [f"**{len(info['failed'])} job(s) failed** (tried twice) and are left out of every figure below: "
                  + "; ".join(f"{f['job'].get('optimizer', 'white-box')} {f['job']['unit']['layer']} "
                              f"c{f['job']['unit']['channel']}: {f['error']}" for f in info["failed"]), ""]
    lines += [
        "Normalised clean activation of the final generation, mean ± s.e.m. over units x seeds "
        "(best = its best image, mean = its mean); code norm = median final mean code norm:", "",
        table_markdown(agg), "",
        "The same, normalised the published way (by the best clean activation any black-box run reached on "
        "the unit, no white-box reference):", "",
        table_markdown(agg, metrics=("bb_best",)), "",
    ]
    if len(agg["layers"]) > 1:
        lines += ["Per layer (white-box normalisation):", "", table_markdown(agg, by_layer=True), ""]
    lines += ["Units (normaliser = best clean activation any method reached):", "",
              "| unit | white-box | best black-box | normaliser from |", "|---|---|---|---|"]
    for uid, u in agg["units"].items():
        wb = f"{u['whitebox']:.3f}" if u["whitebox"] is not None else "-"
        bb = f"{u['best_blackbox']:.3f}" if u["best_blackbox"] is not None else "-"
        lines.append(f"| {uid} | {wb} | {bb} | {u['normaliser_from']} |")
    if agg["excluded_units"]:
        lines += ["", f"Excluded (no method drove them above 0): {', '.join(agg['excluded_units'])}."]
    lines += ["", "Normalised generation max (white-box normalisation, mean over units x seeds) at some "
              "generations; all of them in curves.png:", "", curve_markdown(agg), "",
              "![normalised activation per generation](curves.png)", ""]
    return "\n".join(lines)


def write_outputs(agg: dict, suite: Suite, setting: dict, out: Path, command: str, info: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(agg, out / "curves.png")
    (out / "report.md").write_text(report_markdown(agg, suite, setting, command, info))
    summary = {"suite": asdict(suite), "setting": setting, "command": command, **info,
               **{k: v for k, v in agg.items() if k != "runs"},
               "runs": [{k: v for k, v in r.items() if not k.startswith("curve_")} for r in agg["runs"]],
               "files": {"report": str(out / "report.md"), "plot": str(out / "curves.png"),
                         "results": str(out / "results.json")}}
    summary = plain(summary)
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    return summary


def plain(x):
    """JSON-ready: numpy scalars as Python numbers, NaN and infinities as None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# --------------------------------------------------------------------------- the command

def _csv(text: str | None, cast=str):
    if text is None:
        return None
    return tuple(cast(x.strip()) for x in text.split(",") if x.strip())


def suite_from_args(args) -> Suite:
    return make_suite(args.suite, optimizers=_csv(args.optimizers), layers=_csv(args.layers),
                      channels=args.channels, channel_list=_csv(args.channel_list, int),
                      seeds=tuple(range(args.seeds)) if args.seeds else None, sigmas=_csv(args.sigmas, float),
                      generations=args.generations, population=args.batch,
                      wb_norm=args.wb_norm, wb_restarts=args.wb_restarts, wb_steps=args.wb_steps)


def cli_bench_optimizers(args) -> int:
    out = Path(args.out)
    if getattr(args, "replot", False):
        print(f"wrote {replot(out)}")
        return 0
    if args.job:
        job = parse_job(args.job)
        record = run_job(job, out, device=args.device)
        print(json.dumps({"path": str(job_path(job, out)), "type": job["type"],
                          "seconds": record["result"].get("seconds")}))
        return 0
    suite = suite_from_args(args)
    setting = make_setting(args.generator_weights, args.alexnet_weights)
    jobs = list_jobs(suite, setting)
    if args.list_jobs:
        for job in jobs:
            print(json.dumps(job, sort_keys=True))
        return 0
    command = "xdream " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    info = {"machine": machine(), "load_start": machine()["load_average"]}
    if args.device == "cpu" or args.device == "auto":
        _tune_allocator()
    engine = engine_from_args(args)
    print(f"{suite.describe()}\n{len(jobs)} jobs -> {out} ({engine.describe()})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    bar = Bar("bench optimizers", total=len(jobs), unit="job")   # on a terminal; a log gets one line a job

    def progress(done, total, job, record):
        seconds = record["result"]["seconds"]    # the job's own time (not its wait in a queue)
        what = (f"white-box {job['unit']['layer']} c{job['unit']['channel']}" if job["type"] == "whitebox" else
                f"{job['optimizer']} {job['unit']['layer']} c{job['unit']['channel']} sigma {job['sigma']:g} "
                f"seed {job['seed']}")
        if bar.drawn:
            bar.update(done - bar_done[0])
            bar_done[0] = done
            bar.note(f"{what}: {seconds:.0f} s")
        else:
            print(f"[{done}/{total}] {what}: {seconds:.0f} s (elapsed {(time.perf_counter() - t0) / 60:.1f} min)",
                  file=sys.stderr, flush=True)

    bar_done = [0]
    with bar:
        outcome = run_suite(jobs, out, engine=engine, device=args.device, progress=progress)
    records = outcome.records
    done = [r for r in records if r is not None]
    info.update(wall_seconds=time.perf_counter() - t0, computed=outcome.computed, stored=outcome.stored,
                engine=engine.describe(), load_end=machine()["load_average"],
                failed=[{"job": f.job, "error": f.error, "attempts": f.attempts} for f in outcome.failed],
                device=done[0]["device"] if done else args.device)
    report_failures(outcome)
    agg = aggregate(jobs, records)
    summary = write_outputs(agg, suite, setting, out, command, info)
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        print(table_markdown(agg))
        print(f"\nreport: {out / 'report.md'}  plot: {out / 'curves.png'}  results: {out / 'results.json'}")
    return 1 if outcome.failed else 0


def report_failures(outcome: Outcome) -> None:
    """Failed jobs on stderr (the suite went on without them; a rerun tries them again)."""
    for f in outcome.failed:
        print(f"FAILED after {f.attempts} attempts: {json.dumps(f.job, sort_keys=True)}: {f.error}",
              file=sys.stderr, flush=True)
    if outcome.failed:
        print(f"{len(outcome.failed)} job(s) failed; the report covers the others; a rerun computes only the "
              "missing ones", file=sys.stderr, flush=True)


__all__ = ["Suite", "SUITES", "make_suite", "make_setting", "list_jobs", "job_path", "parse_job", "run_job",
           "run_jobs", "run_run", "aggregate", "write_outputs", "plot_curves", "replot", "cli_bench_optimizers"]
