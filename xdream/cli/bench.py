"""`xdream bench`: the benchmarks in benchmarks/ (a checkout's, not shipped in the wheel)."""

from __future__ import annotations

import sys
from pathlib import Path

from xdream.errors import ConfigError


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks: 'generators' (images per second against the compute bound), "
                                     "'optimizers' (the GECCO 2022 optimizer benchmark on AlexNet units), "
                                     "'validity' (the fraction of known optima each image space and optimizer reach), "
                                     "'study' (the default optimizer against its peers: intervals, paired tests)")
    b.add_argument("what", choices=["generators", "optimizers", "adapters", "validity", "study"],
                   help="what to measure ('adapters': 384-channel rigs through each simulated wire format)")
    b.add_argument("--json", action="store_true", help="print the figures as JSON")
    b.add_argument("--batch", type=int, default=40, help="images per generation (default 40)")
    b.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    b.add_argument("--suite", choices=["quick", "gecco"], default="quick",
                   help="optimizers: 'quick' (2 units, under 20 min on 2 CPU cores) or 'gecco' (the published "
                        "protocol: 7 layers x 10 units x 5 seeds, for a GPU or a cluster)")
    b.add_argument("--optimizers", help="optimizers: comma-separated kinds (default: the suite's)")
    b.add_argument("--out", default="bench-optimizers", help="optimizers: results folder (default bench-optimizers)")
    b.add_argument("--replot", action="store_true",
                   help="optimizers: draw OUT/curves.png again from OUT/results.json, running nothing")
    b.add_argument("--stored-only", action="store_true",
                   help="study: report the units whose every job is stored in --out, computing nothing")
    b.add_argument("--list-jobs", action="store_true", help="optimizers: print one JSON job per line and exit")
    b.add_argument("--job", help="optimizers: run one job (a line of --list-jobs, or @FILE) into --out")
    b.add_argument("--workers", type=int, help="optimizers, validity: jobs running at once on Ray (default: "
                                               "every CPU of the local machine or of the --address cluster)")
    b.add_argument("--sequential", action="store_true",
                   help="optimizers, validity: run the jobs one after another in this process, without Ray")
    b.add_argument("--address", help="optimizers, validity: a running Ray cluster (e.g. auto, ray://head:10001); "
                                     "default: a local Ray on this machine's cores (the 'cluster' extra)")
    b.add_argument("--device", default="auto", help="optimizers: auto, cpu or cuda (default auto)")
    b.add_argument("--generator-weights", metavar="FILE", help="optimizers: DeePSiM fc6 state dict "
                                                               "(default: seeded random weights)")
    b.add_argument("--alexnet-weights", metavar="FILE", help="optimizers: torchvision-style AlexNet state dict "
                                                             "(default: seeded random weights)")
    b.add_argument("--layers", help="optimizers, study: comma-separated AlexNet layers (overrides the suite's)")
    b.add_argument("--channels", type=int, help="optimizers: channels 0..N-1 of each layer")
    b.add_argument("--channel-list", help="optimizers: comma-separated channels of each layer")
    b.add_argument("--seeds", type=int, help="optimizers: seeds 0..N-1 per unit and noise level")
    b.add_argument("--sigmas", help="optimizers: comma-separated noise levels (default 0,0.2,0.5)")
    b.add_argument("--generations", type=int, help="optimizers: generations per run (default 75)")
    b.add_argument("--wb-norm", type=float, help="optimizers: white-box code-norm bound (default 512 = 8 x 64)")
    b.add_argument("--wb-restarts", type=int, help="optimizers: white-box restarts")
    b.add_argument("--wb-steps", type=int, help="optimizers: white-box Adam steps")
    b.add_argument("--quick", action="store_true",
                   help="validity: the quick suite (about a minute on 2 cores) instead of 75 generations x 40 "
                        "images x 5 seeds; study: a smoke test of the path (seconds; no claim)")
    b.add_argument("--spaces", help="validity: comma-separated image spaces (deepsim-fc6, fourier, dcgan-face; "
                                    "deepsim-fc6-weights is added with --generator-weights)")
    b.add_argument("--space", choices=["dcgan-face", "deepsim-fc6"],
                   help="study: the image space (default: the embedded default config's, dcgan-face)")
    b.add_argument("--units", help="validity, study: comma-separated known-optimum units (colour, gabor-energy, "
                                   "blob, convnet-capped)")
    b.add_argument("--image-size", type=int, help="validity: image side in px (default 128; quick 64)")
    b.add_argument("--seconds", type=float, default=20.0, help="adapters: rig seconds of codes per rig (default 20)")
    b.add_argument("--rigs", help="adapters: comma-separated rigs (default: every one with a simulated peer)")
    b.set_defaults(func=run)


def run(args) -> int:
    _checkout_on_path()
    if args.what == "adapters":
        from benchmarks.adapters import cli_bench_adapters
        return cli_bench_adapters(args)
    if args.what == "validity":
        from benchmarks.validity import cli_bench_validity
        return cli_bench_validity(args)
    if args.what == "study":
        from benchmarks.study import cli_bench_study
        return cli_bench_study(args)
    if args.what == "optimizers":
        from benchmarks.optimizers import cli_bench_optimizers
        return cli_bench_optimizers(args)
    from benchmarks.generators import cli_bench
    return cli_bench(args)


def _checkout_on_path() -> None:
    """benchmarks/ lives beside the packages in a checkout and is not installed."""
    try:
        import benchmarks  # noqa: F401
        return
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "__init__.py").is_file():
        raise ConfigError("xdream bench runs from a checkout of xdream-lab: benchmarks/ is not installed "
                          "with the package (git clone it, then ./run.sh xdream bench ...)")
    sys.path.insert(0, str(root))
