"""A variant of the default optimizer on the study's AlexNet units, paired with the study's
stored runs (same units, seeds, starting codes and noise): how a change to the default
would fare before the whole study is run again.

    python -m benchmarks.study_variant --out runs/study --layers conv2,conv3 --sigma 0.2 \
        --param init_norm_factor=20 --param max_norm_factor=40

Prints each (unit, seed): the variant's clean activation of the final best image beside
each stored optimizer's, then the variant's wins against each and its mean ratio to each.
With no --param the variant is the stored default itself, and its numbers are the stored ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks import optimizers as bo
from benchmarks import study as bs


def compare(out: Path, layers, sigma: float, params: dict, study_name: str = "study", log=print) -> list[dict]:
    """Rerun the default's stored jobs on `layers` at `sigma` with `params` over its keywords.
    One row per (unit, seed) whose every optimizer's run is stored: the variant's final best
    and the stored final best of each optimizer."""
    study = bs.make_study(study_name)
    setting = bs.make_setting(study)
    jobs = [j for j in bs.list_jobs(study, setting) if j["type"] == "run" and j["sigma"] == sigma
            and j["unit"].get("layer") in layers]
    by = {(json.dumps(j["unit"]), j["seed"], j["optimizer"]): j for j in jobs}
    bo._tune_allocator()
    pipe = bo.pipeline_for(setting, "cpu")
    rows = []
    for (unit, seed, opt), job in by.items():
        if opt != bs.DEFAULT:
            continue
        stored = {o: bo.load_result(by[(unit, seed, o)], Path(out)) for o in study.optimizers}
        if any(r is None for r in stored.values()):
            continue
        variant = dict(job, optimizer_params={**job.get("optimizer_params", {}), **params})
        got = bo.run_run(variant, pipe)
        row = {"unit": job["unit"], "seed": seed, "variant": got["final_best"],
               "code_norm": got["final_code_norm"],
               "stored": {o: r["result"]["final_best"] for o, r in stored.items()}}
        rows.append(row)
        log(f"{job['unit']['layer']} c{job['unit']['channel']} seed {seed}: variant {row['variant']:.3f} "
            f"(code norm {row['code_norm']:.0f}); " + ", ".join(f"{o} {v:.3f}" for o, v in row["stored"].items()))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the study's results folder")
    ap.add_argument("--layers", required=True, help="comma-separated AlexNet layers")
    ap.add_argument("--sigma", type=float, default=0.0)
    ap.add_argument("--quick", action="store_true", help="the folder holds `xdream bench study --quick`")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help=f"a keyword of {bs.DEFAULT} (repeatable), replacing the default config's")
    args = ap.parse_args(argv)
    params = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    study_name = "quick" if args.quick else "study"
    rows = compare(Path(args.out), args.layers.split(","), args.sigma, params, study_name,
                   log=lambda line: print(line, flush=True))
    print(f"variant {params} at sigma {args.sigma:g}, {len(rows)} pairs:")
    for o in bs.make_study(study_name).optimizers:
        v = np.array([[r["variant"], r["stored"][o]] for r in rows])
        if len(v):
            print(f"  against {o}: wins {int((v[:, 0] > v[:, 1]).sum())}, losses {int((v[:, 0] < v[:, 1]).sum())}, "
                  f"mean ratio {float(np.mean(v[:, 0] / v[:, 1])):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
