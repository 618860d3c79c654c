"""The fourier space's band limit at the validity suite's Goal budget: sphere-es, 150
generations x 20 images, 64 px, 5 seeds, every known-optimum unit, with the generator's
band limit set (`generator.max_cycles`; the same jobs and seeds as `xdream bench validity`).

    python -m benchmarks.fourier_band 8      # |f| <= 8 cycles per image: 591 numbers a code
"""

from __future__ import annotations

import argparse

from benchmarks import validity


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("max_cycles", type=int)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args(argv)
    validity.sphere_es_variant("fourier", args.seeds, f"fourier, max_cycles {args.max_cycles}, sphere-es",
                               generator_params={"max_cycles": args.max_cycles})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
