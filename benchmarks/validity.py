"""`xdream bench validity`: does the search reach a neuron's known optimum?

Each image space (deepsim-fc6 with seeded random weights, deepsim-fc6 with a
weights file when given, fourier, dcgan-face) x each optimizer x each
known-optimum unit (simulators/known_units.py) x each seed is one run:
`generations` x `population` images, built and scored as a session would
(server.generators.build_generator, server.optimizers.build_optimizer with the
session config's defaults for that kind), the whole image as the unit's
receptive field.  The optimizer sees what a recorder counts: Poisson spikes
at baseline + the unit's rate in a 150 ms window.  Only noise-free responses
enter the metrics:

- best:  the fraction of the optimum (noise-free rate / optimum rate) of the
  best image any generation showed (by its noise-free response);
- final: that of the final generation's best image.

Jobs, stored results and code fingerprints work as in benchmarks/optimizers.py
(one JSON file per job under OUT/jobs/, reused by a later call with the
identical job and unchanged code).  The report is mean ± s.e.m. over seeds
and a figure of each space's best images beside each unit's optimum.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.engine import SEQUENTIAL, Engine, Outcome, engine_from_args
from benchmarks.engine import run_jobs as run_engine
from benchmarks.optimizers import _csv as csv
from benchmarks.optimizers import _mean_sem, _stream, job_key, machine, optimizer_fingerprint, plain, report_failures
from xdream.errors import ConfigError
from xdream.files import write_atomic
from xdream.optimizer_kinds import canonical_kind

SPACES = ("deepsim-fc6", "fourier", "dcgan-face")
WEIGHTED_SPACE = "deepsim-fc6-weights"     # deepsim-fc6 with --generator-weights
WINDOW_S = 0.150
BASELINE_HZ = 8.0
# The known-optimum units the suite runs: one of each kind, off-centre where a kind has a position
UNITS: dict[str, dict] = {
    "colour": {"kind": "colour", "hue_deg": 200.0, "centre": [0.5, 0.5], "size": 0.2},
    "gabor-energy": {"kind": "gabor-energy", "orientation_deg": 30.0, "cycles": 6.0, "size": 0.15},
    "blob": {"kind": "blob", "size": 0.08, "surround_ratio": 3.0},
    "convnet-capped": {"kind": "convnet-capped", "layer": "conv2", "channel": 5, "whitebox_steps": 150},
}


@dataclass(frozen=True)
class Suite:
    name: str
    spaces: tuple[str, ...] = SPACES
    optimizers: tuple[str, ...] = ("ga", "pycma", "sphere-cma", "sphere-es")
    units: tuple[str, ...] = tuple(UNITS)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    generations: int = 75
    population: int = 40
    image_size: int = 128

    def describe(self) -> str:
        return (f"suite {self.name}: spaces {', '.join(self.spaces)}; optimizers {', '.join(self.optimizers)}; "
                f"units {', '.join(self.units)}; seeds {list(self.seeds)}; {self.generations} generations x "
                f"{self.population} images of {self.image_size} px")


SUITES = {
    "full": Suite("full"),
    # about a minute on 2 CPU cores: the default optimizer on the analytic units, one seed
    "quick": Suite("quick", spaces=("fourier", "deepsim-fc6"), optimizers=("sphere-es",),
                   units=("colour", "gabor-energy", "blob"), seeds=(0,), generations=10, population=20,
                   image_size=64),
}


def make_suite(name: str = "full", **overrides) -> Suite:
    if name not in SUITES:
        raise ConfigError(f"unknown validity suite {name!r}; suites: {', '.join(SUITES)}")
    suite = replace(SUITES[name], **{k: v for k, v in overrides.items() if v is not None})
    suite = replace(suite, optimizers=tuple(canonical_kind(o) for o in suite.optimizers))
    from server.optimizers import OPTIMIZERS
    bad = [o for o in suite.optimizers if o not in OPTIMIZERS] + [u for u in suite.units if u not in UNITS] + \
        [s for s in suite.spaces if s not in SPACES + (WEIGHTED_SPACE,)]
    if bad:
        raise ConfigError(f"unknown optimizers, units or spaces {bad}; optimizers {', '.join(OPTIMIZERS)}; "
                          f"units {', '.join(UNITS)}; spaces {', '.join(SPACES + (WEIGHTED_SPACE,))}")
    if suite.generations < 1 or suite.population < 4 or suite.image_size < 16:
        raise ConfigError("generations >= 1, population >= 4, image size >= 16")
    return suite


# --------------------------------------------------------------------------- jobs

def list_jobs(suite: Suite, generator_weights: str | None = None) -> list[dict]:
    weights = None
    if generator_weights:
        from xdream.files import sha256_file
        p = Path(generator_weights).expanduser().resolve()
        if not p.is_file():
            raise ConfigError(f"weights file {generator_weights} does not exist")
        weights = {"weights": str(p), "sha256": sha256_file(p)}
    spaces = list(suite.spaces)
    if weights and WEIGHTED_SPACE not in spaces:
        spaces.append(WEIGHTED_SPACE)
    jobs = []
    for space in spaces:
        if space == WEIGHTED_SPACE and not weights:
            raise ConfigError(f"space {WEIGHTED_SPACE} needs --generator-weights")
        for unit in suite.units:
            for opt in suite.optimizers:
                for seed in suite.seeds:
                    jobs.append({"type": "validity", "space": space,
                                 "weights": weights if space == WEIGHTED_SPACE else None,
                                 "unit": unit, "unit_config": UNITS[unit], "optimizer": opt, "seed": int(seed),
                                 "generations": suite.generations, "population": suite.population,
                                 "image_size": suite.image_size})
    return jobs


def job_path(job: dict, out: Path) -> Path:
    return Path(out) / "jobs" / (f"{job['space']}_{job['unit']}_{job['optimizer']}_seed{job['seed']}-"
                                 f"{job_key(job)}.json")


def code_fingerprint(job: dict) -> dict:
    """The optimizer's source, and that of the units and the image space: a stored result
    computed by other code is stale."""
    import server.generators as gens
    import simulators.known_units as ku
    h = hashlib.sha256(inspect.getsource(ku).encode())
    space = job["space"].removesuffix("-weights")
    module = {"fourier": "fourier", "dcgan-face": "dcgan_face"}.get(space, "deepsim")
    h.update(Path(gens.__file__).with_name(f"{module}.py").read_bytes())
    return {"optimizer": optimizer_fingerprint(job["optimizer"]), "space_and_units": h.hexdigest()[:16]}


def load_result(job: dict, out: Path) -> dict | None:
    try:
        data = json.loads(job_path(job, out).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("job") != job or data.get("code") != code_fingerprint(job):
        return None
    return data


_CACHE: dict = {}


def _generator(job: dict):
    from server.generators import build_generator
    from xdream.config import GeneratorConfig
    params = job.get("generator_params", {})     # e.g. fourier's max_cycles (benchmarks/fourier_band.py)
    key = ("gen", job["space"], json.dumps(job["weights"]), job["image_size"], json.dumps(params, sort_keys=True))
    if key not in _CACHE:
        kind = "deepsim-fc6" if job["space"] == WEIGHTED_SPACE else job["space"]
        cfg = GeneratorConfig(kind=kind, weights=job["weights"]["weights"] if job["weights"] else "", device="cpu",
                              **params)
        _CACHE[key] = build_generator(cfg, job["image_size"])
    return _CACHE[key]


def known_unit(name: str, unit_config: dict):
    """A unit of the suite (the ConvNet one shares one seeded AlexNet per process)."""
    from simulators.known_units import make_known_unit
    from xdream import typed
    from xdream.config import UnitConfig
    key = ("unit", name, json.dumps(unit_config, sort_keys=True))
    if key not in _CACHE:
        ucfg = typed.convert(unit_config, UnitConfig, root="unit", error=ConfigError)
        net = None
        if ucfg.kind == "convnet-capped":
            from simulators.alexnet import seeded_alexnet
            net = seeded_alexnet(0)
            for p in net.parameters():
                p.requires_grad_(False)
        _CACHE[key] = make_known_unit(ucfg, net=net, seed=0)
    return _CACHE[key]


def run_job(job: dict, out: Path | None = None, *, keep_best: bool = False) -> dict:
    """One run; its record is written to OUT/jobs/ when `out` is given."""
    from server.optimizers import build_optimizer
    from xdream.config import OptimizerConfig
    gen = _generator(job)
    unit = known_unit(job["unit"], job["unit_config"])
    unit.optimum(job["image_size"])     # computed (and cached) outside the run's time
    rng = _stream("validity", job["space"], job["unit"], job["optimizer"], job["seed"])
    spikes = _stream("spikes", job["space"], job["unit"], job["optimizer"], job["seed"])
    opt = build_optimizer(OptimizerConfig(kind=job["optimizer"], population=job["population"],
                                          **job.get("optimizer_params", {})), gen, rng,
                          job["optimizer"], generations=job["generations"])
    t0 = time.perf_counter()
    best, best_image, curve = -1.0, None, []
    final = 0.0
    for _ in range(job["generations"]):
        cand = opt.ask()
        images = gen.generate(np.asarray(cand.codes))
        frac = unit.fraction(images)
        counts = spikes.poisson((BASELINE_HZ + unit.cfg.peak_hz * frac) * WINDOW_S).astype(float)
        opt.tell(cand.ids, counts)
        i = int(np.argmax(frac))
        if frac[i] > best:
            best, best_image = float(frac[i]), images[i]
        final = float(frac.max())
        curve.append(final)
    result = {"best": best, "final": final, "curve": curve, "seconds": time.perf_counter() - t0}
    record = {"job": job, "result": result, "code": code_fingerprint(job),
              "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if out is not None:
        path = job_path(job, out)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(record).encode()
        write_atomic(path, lambda f: f.write(text))
        if best_image is not None:
            np.save(path.with_suffix(".npy"), best_image)
    if keep_best:
        record["best_image"] = best_image
    return record


def sphere_es_variant(space: str, seeds: int, title: str, **params: dict) -> dict[str, list[float]]:
    """sphere-es at the Goal's budget (150 x 20, 64 px) on every known-optimum unit, the suite's
    own jobs and seeds (so paired with `xdream bench validity`), each job given `params`
    (optimizer_params, generator_params); prints each run and the mean ± s.e.m. per unit."""
    suite = make_suite("full", spaces=(space,), optimizers=("sphere-es",), generations=150, population=20,
                       image_size=64, seeds=tuple(range(seeds)))
    best: dict[str, list[float]] = {}
    for job in list_jobs(suite):
        job.update(params)
        got = run_job(job)["result"]["best"]
        best.setdefault(job["unit"], []).append(got)
        print(f"{job['unit']} seed {job['seed']}: {got:.3f}", flush=True)
    print(f"{title} (mean ± s.e.m. over seeds):")
    for unit, xs in best.items():
        m, sem, _ = _mean_sem(xs)
        print(f"  {unit}: {_fmt(m, sem)}  ({', '.join(f'{x:.2f}' for x in xs)})")
    return best


# --------------------------------------------------------------------------- report

def aggregate(jobs: list[dict], records: list[dict]) -> dict:
    cells: dict[tuple, list] = {}
    for job, rec in zip(jobs, records):
        cells.setdefault((job["space"], job["optimizer"], job["unit"]), []).append(rec["result"])
    table = []
    for (space, opt, unit), results in cells.items():
        b, bs, n = _mean_sem(r["best"] for r in results)
        f, fs, _ = _mean_sem(r["final"] for r in results)
        table.append({"space": space, "optimizer": opt, "unit": unit, "best": b, "best_sem": bs, "final": f,
                      "final_sem": fs, "n": n,
                      "seconds_mean": float(np.mean([r["seconds"] for r in results]))})
    return {"table": table}


def _fmt(m, s) -> str:
    if not np.isfinite(m):
        return "-"
    return f"{m:.2f} ± {s:.2f}" if np.isfinite(s) else f"{m:.2f}"


def table_markdown(agg: dict) -> str:
    units = list(dict.fromkeys(r["unit"] for r in agg["table"]))
    lines = ["| space | optimizer |" + "".join(f" {u} |" for u in units) + " n | s/run |",
             "|---|---|" + "---|" * len(units) + "---|---|"]
    rows: dict[tuple, dict] = {}
    for r in agg["table"]:
        rows.setdefault((r["space"], r["optimizer"]), {})[r["unit"]] = r
    for (space, opt), by_unit in rows.items():
        cells = [_fmt(by_unit[u]["best"], by_unit[u]["best_sem"]) if u in by_unit else "-" for u in units]
        n = max(r["n"] for r in by_unit.values())
        secs = np.mean([r["seconds_mean"] for r in by_unit.values()])
        lines.append(f"| {space} | {opt} |" + "".join(f" {c} |" for c in cells) + f" {n} | {secs:.0f} |")
    return "\n".join(lines)


def plot_best(jobs: list[dict], out: Path, path: Path) -> Path | None:
    """Per unit: its optimum, then the best image of seed 0 of each space x optimizer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    units = list(dict.fromkeys(j["unit"] for j in jobs))
    columns = list(dict.fromkeys((j["space"], j["optimizer"]) for j in jobs))
    seed0 = min(j["seed"] for j in jobs)
    fig, axes = plt.subplots(len(units), 1 + len(columns), figsize=(1.6 * (1 + len(columns)), 1.8 * len(units)),
                             squeeze=False)
    for r, unit in enumerate(units):
        job0 = next(j for j in jobs if j["unit"] == unit)
        axes[r][0].imshow(known_unit(unit, job0["unit_config"]).optimum(job0["image_size"]).image)
        axes[r][0].set_title(f"{unit}\noptimum", fontsize=7)
        for c, (space, opt) in enumerate(columns, start=1):
            job = next((j for j in jobs if (j["unit"], j["space"], j["optimizer"], j["seed"]) ==
                        (unit, space, opt, seed0)), None)
            npy = job_path(job, out).with_suffix(".npy") if job else None
            if npy is not None and npy.is_file():
                rec = load_result(job, out)
                axes[r][c].imshow(np.load(npy))
                axes[r][c].set_title(f"{space}\n{opt}: {rec['result']['best']:.2f}" if rec else space, fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def engine_job(job: dict, out: str) -> dict:
    """One job as the engine runs it (in this process or a Ray worker): computed, stored, returned."""
    return run_job(job, Path(out))


def run_suite(jobs: list[dict], out: str | Path, *, engine: Engine = SEQUENTIAL, progress=None) -> Outcome:
    """Every job, reusing stored results, on `engine` (benchmarks/engine.py); see optimizers.run_suite."""
    out = Path(out)
    return run_engine(jobs, lambda j: load_result(j, out), engine_job, (str(out),), engine, progress)


def cli_bench_validity(args) -> int:
    out = Path(args.out if args.out != "bench-optimizers" else "bench-validity")
    suite = make_suite("quick" if args.quick else "full", optimizers=csv(args.optimizers),
                       spaces=csv(args.spaces), units=csv(args.units),
                       seeds=tuple(range(args.seeds)) if args.seeds else None, generations=args.generations,
                       population=args.batch if args.batch != 40 else None, image_size=args.image_size)
    jobs = list_jobs(suite, args.generator_weights)
    command = "xdream " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"{suite.describe()}\n{len(jobs)} jobs -> {out}", file=sys.stderr, flush=True)
    engine = engine_from_args(args)
    print(f"({engine.describe()})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()

    def progress(done, total, job, rec):
        print(f"[{done}/{total}] {job['space']} {job['optimizer']} {job['unit']} seed {job['seed']}: "
              f"best {rec['result']['best']:.3f} ({rec['result']['seconds']:.0f} s)", file=sys.stderr, flush=True)

    outcome = run_suite(jobs, out, engine=engine, progress=progress)
    report_failures(outcome)
    records = [r for r in outcome.records if r is not None]
    jobs = [j for j, r in zip(jobs, outcome.records) if r is not None]
    agg = aggregate(jobs, records)
    out.mkdir(parents=True, exist_ok=True)
    if jobs:
        plot_best(jobs, out, out / "best_images.png")
    info = {"machine": machine(), "wall_seconds": time.perf_counter() - t0, "command": command,
            "suite": asdict(suite), "engine": engine.describe(), "computed": outcome.computed,
            "stored": outcome.stored,
            "failed": [{"job": f.job, "error": f.error, "attempts": f.attempts} for f in outcome.failed]}
    (out / "results.json").write_text(json.dumps(plain({**info, **agg}), indent=1))
    text = table_markdown(agg)
    (out / "report.md").write_text(f"Command: `{command}`\n\n{suite.describe()}\n\nFraction of the optimum reached "
                                   f"by the best image (mean ± s.e.m. over seeds):\n\n{text}\n\n"
                                   f"![best images](best_images.png)\n")
    print(json.dumps(plain({**info, **agg}), allow_nan=False) if args.json else text)
    print(f"\nreport: {out / 'report.md'}  figure: {out / 'best_images.png'}  "
          f"({(time.perf_counter() - t0):.0f} s)", file=sys.stderr)
    ok = not outcome.failed and all(math.isfinite(r["result"]["best"]) for r in records)
    return 0 if ok else 1
