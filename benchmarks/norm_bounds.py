"""sphere-es's code-norm bounds in the default's image space (dcgan-face), at the validity
suite's Goal budget: 150 generations x 20 images, 64 px, 5 seeds, every known-optimum unit.
The same jobs as `xdream bench validity` (same seeds, so paired), with the optimizer's
init / min / max norm factors set.

    python -m benchmarks.norm_bounds 3,3,10      # the default
    python -m benchmarks.norm_bounds 1,0.5,10    # what sphere_es.py suggested for a GAN
    python -m benchmarks.norm_bounds 6,3,16 --space fourier --max-cycles 8
"""

from __future__ import annotations

import argparse

from benchmarks import validity


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("factors", help="init,min,max norm factors, e.g. 3,3,10")
    ap.add_argument("--space", default="dcgan-face")
    ap.add_argument("--max-cycles", type=int, help="fourier's band limit (generator.max_cycles)")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args(argv)
    extra = {"generator_params": {"max_cycles": args.max_cycles}} if args.max_cycles else {}
    init, lo, hi = (float(x) for x in args.factors.split(","))
    validity.sphere_es_variant(args.space, args.seeds, f"sphere-es on {args.space}, norm factors {init:g}, {lo:g}, "
                               f"{hi:g}", optimizer_params={"init_norm_factor": init, "min_norm_factor": lo,
                                                            "max_norm_factor": hi}, **extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
