"""`xdream bench study`: the optimizer comparison sized for claims.

Units: AlexNet units of several layers (benchmarks/optimizers.py: normalised by
the best clean activation any method reached, white-box reference included)
and the known-optimum units of benchmarks/validity.py (normalised by their
known optimum: the score is the fraction of the optimum, exact).  Every unit x
seed x sigma x optimizer is one run of the optimizer benchmark's protocol
(score * max(0, 1 + sigma N(0, 1)) seen by the optimizer, clean scores
measured), in the image space of the embedded default config (dcgan-face: the
claims are about the default as a lab runs it) unless `space` says otherwise;
a known-optimum unit sees the generator's images at (at most) MAX_IMAGE_SIZE px.

Report per sigma: each optimizer's mean normalised score of the final
generation's best image, with a 95 % t-interval over unit x seed; and the
paired comparison (same unit, seed, sigma, starting codes) of the default
against its peers: wins, losses, ties and the Wilcoxon signed-rank test
(scipy.stats.wilcoxon, two-sided).

Jobs run on benchmarks/engine.py (a local Ray, a cluster or sequentially),
each stored in OUT/jobs/ as it finishes, reused by any later call.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks import optimizers as bo
from benchmarks import validity
from benchmarks.engine import SEQUENTIAL, Engine, Outcome, engine_from_args
from benchmarks.engine import run_jobs as run_engine
from xdream.errors import ConfigError
from xdream.files import write_atomic
from xdream.optimizer_kinds import canonical_kind

DEFAULT = "sphere-es"
PEERS = ("sphere-cma", "pycma")
MAX_IMAGE_SIZE = 128
NATIVE_SIZE = {"deepsim-fc6": 256, "dcgan-face": 64}
CODE_SIZE = {"deepsim-fc6": 4096, "dcgan-face": 100}


def default_space() -> str:
    """The embedded default config's image space: what the study measures unless told."""
    from xdream import config
    kinds = {t.generator.kind for t in config.load(None).threads}
    if len(kinds) != 1 or next(iter(kinds)) not in NATIVE_SIZE:
        raise ConfigError(f"the default config's image spaces {sorted(kinds)}: the study runs one of "
                          f"{', '.join(NATIVE_SIZE)}")
    return next(iter(kinds))


@dataclass(frozen=True)
class Study:
    name: str
    layers: tuple[str, ...] = ("conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    channels: tuple[int, ...] = (0, 1, 2)
    known: tuple[str, ...] = tuple(validity.UNITS)
    seeds: tuple[int, ...] = (0, 1, 2)
    sigmas: tuple[float, ...] = (0.0, 0.2, 0.5)
    optimizers: tuple[str, ...] = (DEFAULT,) + PEERS
    generations: int = 75
    population: int = 40
    wb_restarts: int = 2
    wb_steps: int = 200
    space: str = ""          # "": the embedded default config's (default_space)

    @property
    def image_size(self) -> int:
        return min(MAX_IMAGE_SIZE, NATIVE_SIZE[self.space])

    @property
    def wb_norm(self) -> float:
        """The white-box code-norm bound: 8 x E|z| of a N(0, I) code, as the optimizer benchmark's."""
        return bo.WB_NORM_FACTOR * math.sqrt(CODE_SIZE[self.space])

    @property
    def n_units(self) -> int:
        return len(self.layers) * len(self.channels) + len(self.known)

    def describe(self) -> str:
        return (f"study {self.name} in {self.space}: {self.n_units} units (layers {', '.join(self.layers)} x channels "
                f"{list(self.channels)}; known-optimum {', '.join(self.known) or 'none'}); seeds {list(self.seeds)}; "
                f"sigma {list(self.sigmas)}; optimizers {', '.join(self.optimizers)}; {self.generations} generations "
                f"x {self.population} images; white-box {self.wb_restarts} x {self.wb_steps} steps")


STUDIES = {
    # 21 AlexNet units + 4 known-optimum units x 3 seeds x 3 sigmas x 3 optimizers = 675 runs + 21 white-box
    "study": Study("study"),
    # a smoke test of the whole path: seconds, says nothing about the optimizers
    "quick": Study("quick", layers=("conv3",), channels=(0,), known=("colour",), seeds=(0, 1), sigmas=(0.0, 0.5),
                   generations=3, population=8, wb_restarts=1, wb_steps=2),
}


def make_study(name: str = "study", **overrides) -> Study:
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; studies: {', '.join(STUDIES)}")
    study = replace(STUDIES[name], **{k: v for k, v in overrides.items() if v is not None})
    study = replace(study, optimizers=tuple(canonical_kind(o) for o in study.optimizers),
                    space=study.space or default_space())
    if study.space not in NATIVE_SIZE:
        raise ConfigError(f"unknown study space {study.space!r}; spaces: {', '.join(NATIVE_SIZE)}")
    bo.make_suite("quick", layers=study.layers, optimizers=study.optimizers)   # names checked there
    bad = [u for u in study.known if u not in validity.UNITS]
    if bad:
        raise ConfigError(f"unknown known-optimum units {bad}; units: {', '.join(validity.UNITS)}")
    if DEFAULT not in study.optimizers:
        raise ConfigError(f"the study compares the default ({DEFAULT}) with its peers: include it")
    return study


# --------------------------------------------------------------------------- jobs

def default_optimizer_params() -> dict:
    """The keywords the embedded default config gives its optimizer where they differ from the
    class's own defaults: the study runs the default as a session would build it."""
    from server.optimizers import CONFIG_PARAMS, OPTIMIZERS
    from xdream import config
    found = set()
    for t in config.load(None).threads:
        kind = canonical_kind(t.optimizer.kind)
        if kind != DEFAULT:
            raise ConfigError(f"the default config's optimizer is {kind}; the study compares {DEFAULT}")
        own = inspect.signature(OPTIMIZERS[kind].__init__).parameters
        params = {}
        for key in CONFIG_PARAMS[kind]:
            value = getattr(t.optimizer, key)
            if key == "decay_generations" and value == 0:
                continue   # "the session's length": every optimizer of the study keeps its own schedule
            if value != own[key].default:
                params[key] = value
        found.add(json.dumps(params, sort_keys=True))
    if len(found) != 1:
        raise ConfigError(f"the default config's threads configure {DEFAULT} differently: {sorted(found)}")
    return json.loads(found.pop())


def make_setting(study: Study, generator_weights: str | None = None, alexnet_weights: str | None = None) -> dict:
    return bo.make_setting(generator_weights, alexnet_weights, generator_kind=study.space)


def list_jobs(study: Study, setting: dict) -> list[dict]:
    if bo.generator_kind(setting) != study.space:
        raise ConfigError(f"the setting's generator is {bo.generator_kind(setting)}, the study's space {study.space}")
    suite = bo.make_suite("quick", layers=study.layers, channel_list=study.channels, seeds=study.seeds,
                          sigmas=study.sigmas, optimizers=study.optimizers, generations=study.generations,
                          population=study.population, wb_restarts=study.wb_restarts, wb_steps=study.wb_steps,
                          wb_norm=study.wb_norm)
    jobs = bo.list_jobs(suite, setting) if study.layers and study.channels else []
    for name in study.known:
        for sigma in study.sigmas:
            for seed in study.seeds:
                for opt in study.optimizers:
                    jobs.append({"type": "known", "setting": setting, "known": name,
                                 "unit_config": validity.UNITS[name], "image_size": study.image_size,
                                 "sigma": float(sigma), "seed": int(seed), "optimizer": opt,
                                 "generations": study.generations, "population": study.population})
    params = default_optimizer_params()
    if params:      # named only when set, so that the class's defaults keep their stored jobs
        for job in jobs:
            if job["type"] != "whitebox" and job["optimizer"] == DEFAULT:
                job["optimizer_params"] = params
    return jobs


def job_path(job: dict, out: Path) -> Path:
    if job["type"] != "known":
        return bo.job_path(job, out)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", job["known"])
    return Path(out) / "jobs" / "known" / (f"{name}_s{job['sigma']:g}_seed{job['seed']}_{job['optimizer']}-"
                                           f"{bo.job_key(job)}.json")


def code_fingerprint(job: dict) -> dict:
    import simulators.known_units as ku
    out = bo.code_fingerprint(dict(job, type="run"))
    out["known_units"] = hashlib.sha256(inspect.getsource(ku).encode()).hexdigest()[:16]
    return out


def load_result(job: dict, out: Path) -> dict | None:
    if job["type"] != "known":
        return bo.load_result(job, out)
    try:
        data = json.loads(job_path(job, out).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if data.get("job") == job and data.get("code") == code_fingerprint(job) else None


def _downsample(images: np.ndarray, size: int) -> np.ndarray:
    """(n, S, S, 3) uint8 -> (n, size, size, 3) by block means (S a multiple of size)."""
    n, s = images.shape[0], images.shape[1]
    f = s // size
    blocks = images[:, :f * size, :f * size].reshape(n, size, f, size, f, 3).astype(np.float32)
    return np.round(blocks.mean(axis=(2, 4))).astype(np.uint8)


def engine_job(job: dict, out: str, device: str) -> dict:
    """One job (in this process or a Ray worker): computed, stored, returned."""
    if job["type"] != "known":
        return bo.engine_job(job, out, device)
    bo._tune_allocator()
    pipe = bo.pipeline_for(job["setting"], device)
    unit = validity.known_unit(job["known"], job["unit_config"])
    unit.optimum(job["image_size"])     # computed (and cached) outside the run's time

    def score(codes):
        return unit.fraction(_downsample(pipe.images(codes), job["image_size"])).astype(float)

    result = bo.run_run(job, pipe, score=score, unit_id=f"known:{job['known']}")
    record = {"job": job, "result": result, "code": code_fingerprint(job), "device": str(pipe.device),
              "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = job_path(job, Path(out))
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record).encode()
    write_atomic(path, lambda f: f.write(text))
    return record


def run_suite(jobs: list[dict], out: str | Path, *, engine: Engine = SEQUENTIAL, device: str = "auto",
              progress=None) -> Outcome:
    out = Path(out)
    return run_engine(jobs, lambda j: load_result(j, out), engine_job, (str(out), device), engine, progress)


# --------------------------------------------------------------------------- statistics

def scores(jobs: list[dict], records: list) -> list[dict]:
    """One row per finished run: (unit, sigma, seed, optimizer) and its normalised final best."""
    alexnet = [(j, r) for j, r in zip(jobs, records) if r is not None and j["type"] != "known"]
    rows = []
    if alexnet:
        agg = bo.aggregate([j for j, _ in alexnet], [r for _, r in alexnet])
        rows += [{"unit": r["unit"], "sigma": r["sigma"], "seed": r["seed"], "optimizer": r["optimizer"],
                  "score": r["norm_best"]} for r in agg["runs"] if np.isfinite(r["norm_best"])]
    rows += [{"unit": f"known:{j['known']}", "sigma": j["sigma"], "seed": j["seed"], "optimizer": j["optimizer"],
              "score": r["result"]["final_best"]} for j, r in zip(jobs, records)
             if r is not None and j["type"] == "known"]
    return rows


def interval(values) -> tuple[float, float, float, int]:
    """Mean and its 95 % t-interval."""
    from scipy import stats
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan, 0
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan, 1
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half, len(v)


def paired(rows: list[dict], a: str, b: str, sigma: float) -> dict:
    """`a` against `b` on the same (unit, seed) at `sigma`: wins/losses/ties and Wilcoxon's p."""
    from scipy import stats
    by = {(r["unit"], r["seed"], r["optimizer"]): r["score"] for r in rows if r["sigma"] == sigma}
    keys = sorted({(u, s) for u, s, o in by if o == a and (u, s, b) in by})
    d = np.array([by[(u, s, a)] - by[(u, s, b)] for u, s in keys], dtype=float)
    out = {"a": a, "b": b, "sigma": sigma, "n": len(d), "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
           "ties": int((d == 0).sum()), "median_difference": float(np.median(d)) if len(d) else math.nan,
           "p": math.nan}
    if np.count_nonzero(d) > 0:
        out["p"] = float(stats.wilcoxon(d, alternative="two-sided").pvalue)
    return out


def summarise(rows: list[dict], optimizers, sigmas) -> dict:
    table = []
    for s in sigmas:
        for o in optimizers:
            m, lo, hi, n = interval([r["score"] for r in rows if r["sigma"] == s and r["optimizer"] == o])
            table.append({"sigma": s, "optimizer": o, "mean": m, "ci_low": lo, "ci_high": hi, "n": n})
    known = {}
    for o in optimizers:   # the known-optimum units at sigma 0: what fraction of the optimum
        m, lo, hi, n = interval([r["score"] for r in rows if r["sigma"] == 0 and r["optimizer"] == o
                                 and r["unit"].startswith("known:")])
        known[o] = {"mean": m, "ci_low": lo, "ci_high": hi, "n": n}
    comparisons = [paired(rows, DEFAULT, peer, s) for s in sigmas for peer in PEERS
                   if peer in optimizers and DEFAULT in optimizers]
    by_group = []
    for g in dict.fromkeys(group_of(r["unit"]) for r in rows):
        for s in sigmas:
            for o in optimizers:
                m, lo, hi, n = interval([r["score"] for r in rows if r["sigma"] == s and r["optimizer"] == o
                                         and group_of(r["unit"]) == g])
                by_group.append({"group": g, "sigma": s, "optimizer": o, "mean": m, "ci_low": lo, "ci_high": hi,
                                 "n": n})
    return {"table": table, "known_sigma0": known, "comparisons": comparisons, "by_group": by_group}


def group_of(unit: str) -> str:
    """An AlexNet unit's layer ("conv2" of "conv2_c0..."), or the known-optimum unit itself."""
    return unit if unit.startswith("known:") else re.split(r"[^A-Za-z0-9]", unit, maxsplit=1)[0]


def plot(summary: dict, path: Path) -> Path:
    """Left: each optimizer's mean normalised score per sigma with its 95 % interval.  Right: per
    layer (AlexNet units) and per known-optimum unit, the mean at each sigma (one line per
    optimizer and sigma), so that where an optimizer wins or loses shows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    optimizers = list(dict.fromkeys(r["optimizer"] for r in summary["table"]))
    sigmas = list(dict.fromkeys(r["sigma"] for r in summary["table"]))
    groups = list(dict.fromkeys(r["group"] for r in summary["by_group"]))
    colours = {o: f"C{i}" for i, o in enumerate(optimizers)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 2.4]})
    width = 0.8 / max(len(optimizers), 1)
    for i, o in enumerate(optimizers):
        rows = [next(r for r in summary["table"] if r["sigma"] == s and r["optimizer"] == o) for s in sigmas]
        x = np.arange(len(sigmas)) + (i - (len(optimizers) - 1) / 2) * width
        m = np.array([r["mean"] for r in rows], dtype=float)
        err = np.array([[r["mean"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean"] for r in rows]],
                       dtype=float)
        left.errorbar(x, m, yerr=np.nan_to_num(err), fmt="o", color=colours[o], capsize=3, label=o)
        for s_i, s in enumerate(sigmas):
            pts = [g for g in summary["by_group"] if g["sigma"] == s and g["optimizer"] == o]
            right.plot(range(len(groups)), [next(p["mean"] for p in pts if p["group"] == g) for g in groups],
                       color=colours[o], linestyle=("-", "--", ":")[s_i % 3], marker=".",
                       label=f"{o}, σ {s:g}")
    left.legend(fontsize=7, loc="lower left")
    left.set_xticks(range(len(sigmas)), [f"σ {s:g}" for s in sigmas])
    left.set_ylabel("normalised score of the final best image")
    left.set_title("mean over units x seeds, 95 % interval", fontsize=9)
    right.set_xticks(range(len(groups)), [g.removeprefix("known:") for g in groups], rotation=30, fontsize=8)
    right.set_title("per layer / known-optimum unit (mean over units x seeds)", fontsize=9)
    for ax in (left, right):
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    right.legend(fontsize=7, ncol=len(optimizers), loc="upper center", bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def unit_key(job: dict) -> str:
    if job["type"] == "known":
        return f"known:{job['known']}"
    from simulators.insilico import Unit
    return Unit.from_dict(job["unit"]).id


def complete_units(jobs: list[dict], records: list) -> tuple[list[dict], list, list[str]]:
    """The jobs and records of the units whose every job (white-box included) is stored; their names.
    A unit half done would be normalised by a partial best and paired on some seeds only."""
    missing = {unit_key(j) for j, r in zip(jobs, records) if r is None}
    kept = [(j, r) for j, r in zip(jobs, records) if unit_key(j) not in missing]
    return [j for j, _ in kept], [r for _, r in kept], list(dict.fromkeys(unit_key(j) for j, _ in kept))


def report_markdown(summary: dict) -> str:
    def num(x, fmt="{:.3f}"):
        return "-" if x is None or not np.isfinite(x) else fmt.format(x)

    lines = ["| σ | optimizer | mean normalised score | 95 % interval | n |", "|---|---|---|---|---|"]
    for r in summary["table"]:
        lines.append(f"| {r['sigma']:g} | {r['optimizer']} | {num(r['mean'])} | "
                     f"{num(r['ci_low'])} – {num(r['ci_high'])} | {r['n']} |")
    lines += ["", f"Paired: {DEFAULT} against each peer on the same unit, seed and σ (Wilcoxon signed-rank, "
              "two-sided):", "", "| σ | peer | wins | losses | ties | median difference | p |",
              "|---|---|---|---|---|---|---|"]
    for c in summary["comparisons"]:
        lines.append(f"| {c['sigma']:g} | {c['b']} | {c['wins']} | {c['losses']} | {c['ties']} | "
                     f"{num(c['median_difference'], '{:+.3f}')} | {num(c['p'], '{:.2g}')} |")
    lines += ["", "Known-optimum units at σ 0, fraction of the optimum (mean, 95 % interval):", ""]
    for o, k in summary["known_sigma0"].items():
        lines.append(f"- {o}: {num(k['mean'])} ({num(k['ci_low'])} – {num(k['ci_high'])}, n {k['n']})")
    return "\n".join(lines)


def cli_bench_study(args) -> int:
    out = Path(args.out if args.out != "bench-optimizers" else "bench-study")
    study = make_study("quick" if args.quick else "study", optimizers=bo._csv(args.optimizers),
                       seeds=tuple(range(args.seeds)) if args.seeds else None, generations=args.generations,
                       space=args.space, layers=bo._csv(args.layers), known=bo._csv(args.units))
    setting = make_setting(study, args.generator_weights, args.alexnet_weights)
    jobs = list_jobs(study, setting)
    engine = engine_from_args(args)
    command = "xdream " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"{study.describe()}\n{len(jobs)} jobs -> {out} ({engine.describe()})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()

    def progress(done, total, job, rec):
        print(f"[{done}/{total}] {job['type']} {job.get('optimizer', '')} {job.get('known') or job['unit']} "
              f"({rec['result']['seconds']:.0f} s)", file=sys.stderr, flush=True)

    partial = ""
    if args.stored_only:      # a study under way: its finished units, computing nothing
        stored = [load_result(j, out) for j in jobs]
        done_jobs, done_records, units = complete_units(jobs, stored)
        outcome = Outcome(done_records, stored=len(done_records))
        partial = (f"Partial: the {len(units)} of {study.n_units} units whose every job is stored "
                   f"({sum(r is not None for r in stored)} of {len(jobs)} jobs stored): {', '.join(units)}")
        print(partial, file=sys.stderr)
        jobs = done_jobs
    else:
        outcome = run_suite(jobs, out, engine=engine, device=args.device, progress=progress)
    bo.report_failures(outcome)
    summary = summarise(scores(jobs, outcome.records), study.optimizers, study.sigmas)
    info = {"command": command, "study": asdict(study), "partial": partial, "machine": bo.machine(), "engine": engine.describe(),
            "wall_seconds": time.perf_counter() - t0, "computed": outcome.computed, "stored": outcome.stored,
            "failed": [{"job": f.job, "error": f.error, "attempts": f.attempts} for f in outcome.failed]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(bo.plain({**info, **summary}), indent=1))
    text = report_markdown(summary)
    if summary["table"] and any(r["n"] for r in summary["table"]):
        plot(summary, out / "study.png")
    (out / "report.md").write_text(f"Command: `{command}`\n\n{study.describe()}; {engine.describe()}, "
                                   f"{info['wall_seconds'] / 60:.1f} min\n\n{partial + chr(10) * 2 if partial else ''}"
                                   f"{text}\n")
    print(json.dumps(bo.plain({**info, **summary}), allow_nan=False) if args.json else text)
    return 1 if outcome.failed else 0
