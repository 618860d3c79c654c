"""The fourier space's band limit at the validity suite's Goal budget: sphere-es, 150
generations x 20 images, 64 px, 5 seeds, every known-optimum unit, with the generator's
band limit set (`generator.max_cycles`; the same jobs and seeds as `xdream bench validity`).

    python -m benchmarks.fourier_band 8      # |f| <= 8 cycles per image: 591 numbers a code
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import validity


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("max_cycles", type=int)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args(argv)
    suite = validity.make_suite("full", spaces=("fourier",), optimizers=("sphere-es",), generations=150,
                                population=20, image_size=64, seeds=tuple(range(args.seeds)))
    best: dict[str, list[float]] = {}
    for job in validity.list_jobs(suite):
        job["generator_params"] = {"max_cycles": args.max_cycles}
        best.setdefault(job["unit"], []).append(validity.run_job(job)["result"]["best"])
    print(f"fourier, max_cycles {args.max_cycles}, sphere-es (mean ± s.e.m. over seeds):")
    for unit, xs in best.items():
        print(f"  {unit}: {np.mean(xs):.2f} ± {np.std(xs, ddof=1) / np.sqrt(len(xs)):.2f}  "
              f"({', '.join(f'{x:.2f}' for x in xs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
