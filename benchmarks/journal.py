"""What crash safety costs per generation: the server's journal writes of one
generation of the default session (2 threads of 20 DeePSiM fc6 codes, 8
references: 48 presentations), with the server's fsync policy, and the same
writes with fsync turned off.  A benchmark, not a test.

    python -m benchmarks.journal [--dir DIR] [--generations N]

DIR should be on the disk the sessions go to (default: ./bench-journal, next
to the default sessions/ folder); it is removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from unittest import mock

import numpy as np

from server.journal import Journal
from server.optimizers import make_optimizer
from server.resume import checkpoint_arrays
from server.scheduler import Scheduler
from server.threads import EvolutionThread

THREADS, POPULATION, DIM, REFERENCES = 2, 20, 4096, 8


def one_generation(journal: Journal, generation: int, threads, scheduler) -> None:
    """The writes and syncs of server/app.py for one generation, in its order."""
    rng = np.random.default_rng(generation)
    asked = {t.name: t.optimizer.ask() for t in threads}
    for t in threads:
        journal.save_codes(generation, t.name, asked[t.name].ids, asked[t.name].codes)
    n = THREADS * POPULATION + REFERENCES
    pids = [f"b{generation:04d}-{i:03d}" for i in range(n)]
    journal.write("block", block_id=generation, generation=generation,
                  presentations=[{"pid": p, "code": i + 1, "kind": "generated", "thread": "a",
                                  "image_id": f"a/g{generation:03d}/{i:05d}", "requeue_of": ""}
                                 for i, p in enumerate(pids)])
    journal.sync()                                   # before the block is sent
    for i, pid in enumerate(pids):                   # each report: journal, fsync, then ACK
        journal.write("shown", peer="presenter", block_id=generation, pid=pid, status="shown",
                      onset=1.0 + 0.2 * i, frames=6, dropped=0)
        journal.sync()
        journal.write("counts", peer="recorder", block_id=generation, pid=pid, status="ok",
                      counts=[float(k) for k in rng.poisson(10, 2)], baseline=[0.0, 1.0], onset=2.0 + 0.2 * i)
        journal.sync()
    for t in threads:
        scores = rng.normal(10, 2, POPULATION)
        journal.write("scores", generation=generation, thread=t.name, ids=asked[t.name].ids, scores=scores.tolist())
        t.optimizer.tell(asked[t.name].ids, scores)
        journal.add_summary({"generation": generation, "thread": t.name, "mean": float(scores.mean())})
    journal.sync()
    journal.save_checkpoint(checkpoint_arrays(generation, threads, scheduler))
    journal.write("checkpoint", generation=generation)
    journal.sync()


def measure(folder: Path, generations: int, fsync: bool) -> dict:
    rng = np.random.default_rng(0)
    threads = [EvolutionThread(name, i, make_optimizer("ga", (DIM,), np.random.default_rng(i), population=POPULATION,
                                                       init_codes=rng.normal(size=(POPULATION, DIM)), name=name),
                               generator=None)
               for i, name in enumerate("ab"[:THREADS])]
    scheduler = Scheduler([], np.random.default_rng(1))
    patch = contextlib.nullcontext() if fsync else mock.patch("os.fsync", lambda fd: None)
    times = []
    with patch:
        journal = Journal(folder)
        for g in range(generations):
            t0 = time.perf_counter()
            one_generation(journal, g, threads, scheduler)
            times.append(time.perf_counter() - t0)
        journal.close()
    per_gen_fsyncs = journal.fsyncs / generations
    return {"fsync": fsync, "median_ms": 1000 * statistics.median(times), "max_ms": 1000 * max(times),
            "fsyncs_per_generation": round(per_gen_fsyncs, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="bench-journal", help="scratch folder on the sessions' disk (removed after)")
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    base = Path(args.dir)
    if base.exists():
        raise SystemExit(f"{base} exists; give another --dir")
    try:
        results = [measure(base / f"run{i}", args.generations, fsync)
                   for i, fsync in enumerate((True, False, True, False))]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    on = [r["median_ms"] for r in results if r["fsync"]]
    off = [r["median_ms"] for r in results if not r["fsync"]]
    out = {"machine": platform.platform(), "cpus": os.cpu_count(), "load": os.getloadavg()[0],
           "generations": args.generations, "presentations_per_generation": THREADS * POPULATION + REFERENCES,
           "runs": results, "fsync_median_ms": min(on), "no_fsync_median_ms": min(off),
           "cost_ms_per_generation": min(on) - min(off)}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['presentations_per_generation']} presentations a generation, "
              f"{results[0]['fsyncs_per_generation']} fsyncs (journal, codes, summary, checkpoint, folders)")
        print(f"with the fsync policy: {out['fsync_median_ms']:.1f} ms a generation (median of {args.generations}); "
              f"without fsync: {out['no_fsync_median_ms']:.1f} ms; cost {out['cost_ms_per_generation']:.1f} ms, "
              f"{out['cost_ms_per_generation'] / results[0]['fsyncs_per_generation']:.2f} ms a fsync "
              f"(load average {out['load']:.1f} on {out['cpus']} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
