"""Soak: a long simulated session, and whether the server's memory, open files
and time per generation stay flat (issue 12).

    python -m benchmarks.soak --generations 1000 [--out FOLDER] [--json FILE]

Runs the real processes, as `xdream dry-run --recorder in-server` does: `xdream
serve CONFIG --simulate` (server + in-process recorder on a simulated rig) and a
headless `xdream present`, on a small fast config (32-px Fourier images, 4 a
generation, 1 reference, 20 ms on / 0 off, a 10-40 ms response window).  At each
generation line the server prints, this process reads the server's
/proc/PID/status VmRSS and counts /proc/PID/fd (Linux only), and takes the wall
time since the previous line.  Reported: the least-squares slope of each per
100 generations, over the generations after a warm-up (the first 10: imports,
first allocations, peers joining), with the start and end values.

A leak grows linearly with generations; noise does not: with n generations
the slope's standard error is about sd * sqrt(12 / n^3) per generation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xdream import config as config_mod
from xdream.stdout_lines import LISTENING, SCREEN_TAP, SESSION_FOLDER

WARMUP = 10


def soak_config(generations: int, out: Path) -> config_mod.Config:
    cfg = config_mod.load(None)
    cfg.session.name = "soak"
    cfg.session.out_dir = str(out)
    cfg.session.generations = generations
    cfg.session.block_timeout_s = 30.0
    cfg.session.wait_for_peers_s = 60.0
    cfg.threads = cfg.threads[:1]
    cfg.threads[0].generator.kind = "fourier"
    cfg.threads[0].optimizer.population = 4
    cfg.reference.count = 1
    cfg.presentation.image_size_px = 32
    cfg.presentation.window_size = [64, 64]
    cfg.presentation.on_ms = 20.0
    cfg.presentation.off_ms = 0.0
    cfg.presentation.frame_rate_hz = 100.0
    cfg.response.window_ms = [10.0, 40.0]
    cfg.response.baseline_ms = [0.0, 10.0]
    cfg.simulator.latency_ms = 10.0
    cfg.simulator.duration_ms = 30.0
    cfg.simulator.rf_size_px = 32
    cfg.network.heartbeat_s = 0.5
    return cfg.validate()


@dataclass
class Soak:
    generations: int
    rss_mb: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    folder: str = ""
    wall_s: float = 0.0

    def slope(self, values) -> float:
        """Least-squares slope per 100 generations, after the warm-up."""
        y = np.asarray(values[WARMUP:], dtype=float)
        if len(y) < 3:
            return float("nan")
        x = np.arange(len(y), dtype=float)
        return float(np.polyfit(x, y, 1)[0] * 100.0)

    def report(self) -> dict:
        out = {"generations": self.generations, "measured": len(self.seconds), "wall_s": round(self.wall_s, 1),
               "folder": self.folder}
        for name, values in (("rss_mb", self.rss_mb), ("fds", self.fds), ("seconds", self.seconds)):
            v = np.asarray(values[WARMUP:], dtype=float)
            out[name] = {"slope_per_100": self.slope(values), "first": float(v[:10].mean()) if len(v) else None,
                         "last": float(v[-10:].mean()) if len(v) else None,
                         "sd": float(v.std()) if len(v) else None}
        return out


def _proc(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss_kb / 1024.0, len(os.listdir(f"/proc/{pid}/fd"))


def _wait_line(proc: subprocess.Popen[str], prefix: str) -> str:
    for line in proc.stdout or ():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise RuntimeError(f"the server exited ({proc.wait()}) before {prefix!r}")


def run_soak(generations: int, out: Path | None = None, timeout_s: float = 7200.0) -> Soak:
    """One soak session; the server is sampled at each generation line it prints."""
    cli = [sys.executable, "-m", "xdream.cli"]
    result = Soak(generations)
    with tempfile.TemporaryDirectory(prefix="xdream-soak-") as tmp:
        where = Path(out) if out else Path(tmp)
        cfg_path = Path(tmp) / "soak.json"
        config_mod.save_json(soak_config(generations, where), cfg_path)
        procs: list[subprocess.Popen[str]] = []
        t0 = time.monotonic()
        try:
            server = subprocess.Popen(cli + ["serve", str(cfg_path), "--simulate"], stdout=subprocess.PIPE,
                                      text=True, bufsize=1)
            procs.append(server)
            tap = _wait_line(server, SCREEN_TAP)
            result.folder = _wait_line(server, SESSION_FOLDER)
            endpoint = _wait_line(server, LISTENING)
            procs.append(subprocess.Popen(cli + ["present", "--server", endpoint, "--screen-tap", tap,
                                                 "--headless", "--window-size", "64", "64", "--frame-rate", "100",
                                                 "--log-dir", tmp], stdout=subprocess.DEVNULL, text=True))
            last = time.monotonic()
            for line in server.stdout or ():
                if not line.startswith("gen "):
                    continue
                now = time.monotonic()
                rss, fds = _proc(server.pid)
                result.rss_mb.append(rss)
                result.fds.append(fds)
                result.seconds.append(now - last)
                last = now
                if now - t0 > timeout_s:
                    break
            server.wait(timeout=60)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        result.wall_s = time.monotonic() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generations", type=int, default=1000)
    p.add_argument("--out", help="keep the session folder here (default: a temp folder)")
    p.add_argument("--json", help="write the report (and the per-generation series) here")
    args = p.parse_args(argv)
    soak = run_soak(args.generations, Path(args.out) if args.out else None)
    report = soak.report()
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"report": report, "series": asdict(soak)}))
    return 0 if report["measured"] == args.generations else 1


if __name__ == "__main__":
    sys.exit(main())
