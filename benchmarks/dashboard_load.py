"""The dashboard under load, in a real browser: how long after the journal record a generation
shows on the page, and whether 10 threads x 500 generations stay responsive (docs/benchmarks.md,
"Dashboard").

    python -m benchmarks.dashboard_load [--quick] [--threads 10] [--generations 500]

1. Latency, live: a dry run (the embedded simulated rig, 64 px, small generations) with
   `xdream dashboard --server` beside it, and the page open in Debian's Chromium through
   Playwright.  The page's `draw` is wrapped to note, each time it draws, the wall time and the
   newest generation on it; the journal's `checkpoint` record (a generation's last) carries
   the wall time it was written.  Per generation: first draw showing it - its journal record.  The page redraws at
   most every 200 ms by design (dashboard.js, `schedule`), so that is part of the figure.
2. Load: a dashboard serving a session of T threads x G generations (synthetic status events
   folded into the same state a live session builds, 20 images per thread with 96 px JPEG
   thumbnails for the latest generation), opened in the browser: the time until the page has
   drawn every generation, then 20 more generations published 0.5 s apart: per draw, the time
   the page spent drawing and the latency from publish to drawn.

Not a test: figures go to docs/benchmarks.md.  Needs the `dashboard` and `test` extras
(aiohttp, plotly, playwright) and /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from xdream import config as config_mod
from xdream.dashboard.web import Hub, make_app, start_site
from xdream.status_state import StatusState
from xdream.stdout_lines import DASHBOARD, SESSION_FOLDER, STATUS

CHROMIUM = "/usr/bin/chromium"
WRAP_DRAW = """() => {
  window.__draws = [];
  const original = draw;
  draw = function () {
    const t0 = performance.now();
    original();
    const g = snap.generations;
    window.__draws.push([Date.now() / 1000, performance.now() - t0, g.length ? g[g.length - 1].generation : -1]);
  };
}"""


def _line(proc: subprocess.Popen, prefix: str, timeout_s: float = 120.0) -> str:
    end = time.time() + timeout_s
    while time.time() < end:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"the process ended before printing {prefix!r}")
            continue
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise RuntimeError(f"no {prefix!r} line within {timeout_s} s")


def _browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def live_latency(generations: int, tmp: Path) -> dict:
    """Part 1: journal record -> drawn on the page, per generation, during a real dry run."""
    from playwright import sync_api

    cfg = _small_config(generations, tmp)
    config_mod.save_json(cfg, tmp / "cfg.json")
    env = dict(os.environ, HOME=str(tmp), PSYCHOPYNOPACKAGES="1")
    dry = subprocess.Popen([sys.executable, "-m", "xdream.cli", "dry-run", str(tmp / "cfg.json"), "--out",
                            str(tmp / "out")], stdout=subprocess.PIPE, text=True, env=env)
    dash = None
    try:
        folder = Path(_line(dry, SESSION_FOLDER))
        endpoint = _line(dry, STATUS)
        dash = subprocess.Popen([sys.executable, "-m", "xdream.cli", "dashboard", "--port", "0", "--server",
                                 endpoint], stdout=subprocess.PIPE, text=True, env=env)
        url = _line(dash, DASHBOARD, 60)
        with sync_api.sync_playwright() as p:
            browser = _browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_function("() => typeof snap !== 'undefined' && snap !== null", timeout=60_000)
            page.evaluate(WRAP_DRAW)
            watching_from = time.time()        # generations written before the page watched are not measured
            dry.wait(600)
            time.sleep(1.0)                      # the last generation's draw
            draws = page.evaluate("() => window.__draws")
            browser.close()
    finally:
        for proc in (dry, dash):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    written = {}
    with open(folder / "journal.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "checkpoint":    # the last record of a generation (docs/journal.md)
                written[int(rec["generation"])] = float(rec["t"])
    latency = []
    for g, t in sorted(written.items()):
        if t < watching_from:
            continue
        shown = [d[0] for d in draws if d[2] >= g]
        if shown:
            latency.append(min(shown) - t)
    return {"generations": len(written), "measured": len(latency),
            "latency_s": latency, "draw_ms": [d[1] for d in draws]}


def _small_config(generations: int, tmp: Path) -> config_mod.Config:
    """The embedded default, made small (as the test suite's dry runs): one thread of 6, two
    references, 64 px, short heartbeats."""
    cfg = config_mod.load(None)
    cfg.session.out_dir = str(tmp / "sessions")
    cfg.session.generations = generations
    cfg.threads = cfg.threads[:1]
    cfg.threads[0].optimizer.population = 6
    cfg.reference.count = 2
    cfg.presentation.image_size_px = 64
    cfg.presentation.window_size = [128, 128]
    cfg.network.heartbeat_s = 0.2
    return cfg.validate()


def _jpeg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _events(threads: int, generations: int, population: int, rng: np.random.Generator, start_seq: int = 0,
            start_generation: int = 0, images_from: int = 0):
    """Status events as the server publishes them (docs/protocol.md §8)."""
    names = [f"t{i}" for i in range(threads)]
    seq = start_seq
    if start_generation == 0:
        seq += 1
        yield {"v": 1, "kind": "session", "seq": seq, "t": time.time(), "session": "load", "endpoint": "",
               "resumed": False, "start_generation": 0, "generations": generations + 1000,
               "threads": [{"name": n, "channel": i, "generator": "deepsim-fc6", "optimizer": "sphere-es"}
                           for i, n in enumerate(names)],
               "population": population, "references": ["r0", "r1"], "config": {}}
    thumbs = [_jpeg(rng) for _ in range(population)]
    for g in range(start_generation, start_generation + generations):
        seq += 1
        ths = []
        for i, n in enumerate(names):
            scores = rng.normal(5 + g * 0.01, 1, population).tolist()
            ths.append({"thread": n, "channel": i, "mean": float(np.mean(scores)), "max": float(np.max(scores)),
                        "ref_mean": 5.0, "n_missing": 0, "ids": [f"g{g}_{n}_{k}" for k in range(population)],
                        "scores": scores, "refs": {"ref/r0": 5.0, "ref/r1": 4.0},
                        "images": thumbs if g >= images_from else [], "best_image": None, "best_score": None})
        yield {"v": 1, "kind": "generation", "seq": seq, "t": time.time(), "generation": g, "threads": ths,
               "timing": {"generate": 0.1, "send": 0.01, "present": 5.0, "counts": 0.2, "tell": 0.01,
                          "total": 5.3}, "channels": rng.random(threads).tolist()}


def load(threads: int, generations: int, population: int = 20, more: int = 20) -> dict:
    """Part 2: T threads x G generations on the page, then `more` generations live."""
    from playwright import sync_api

    rng = np.random.default_rng(0)
    hub = Hub(StatusState(), live=True)
    for e in _events(threads, generations, population, rng, images_from=generations - 1):
        hub.state.apply(e)
    loop = asyncio.new_event_loop()
    got: dict = {}
    ready = threading.Event()

    async def serve():
        runner, url = await start_site(make_app(hub), "127.0.0.1", 0)
        got["url"], got["runner"] = url, runner
        ready.set()

    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(serve(), loop)
    ready.wait(30)
    published = {}
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        t0 = time.perf_counter()
        page.goto(got["url"])
        page.wait_for_function(f"() => document.querySelector('#trajectory') && "
                               f"document.querySelector('#trajectory').dataset.points == '{generations}'",
                               timeout=120_000)
        first = time.perf_counter() - t0
        page.evaluate(WRAP_DRAW)
        time.sleep(0.5)
        seq = hub.state.seq
        for e in _events(threads, more, population, rng, start_seq=seq, start_generation=generations):
            published[e["generation"]] = time.time()
            loop.call_soon_threadsafe(hub.publish, e)
            time.sleep(0.5)
        time.sleep(1.0)
        draws = page.evaluate("() => window.__draws")
        browser.close()
    async def shut_down() -> None:      # the page's event stream waits on its queue: cancel it first
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        await got["runner"].cleanup()

    asyncio.run_coroutine_threadsafe(shut_down(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    latency = [min(d[0] for d in draws if d[2] >= g) - t for g, t in published.items()
               if any(d[2] >= g for d in draws)]
    return {"threads": threads, "generations": generations, "first_draw_s": first,
            "draw_ms": [d[1] for d in draws], "latency_s": latency, "published": len(published)}


def _summary(xs: list[float], scale: float = 1.0, unit: str = "") -> str:
    if not xs:
        return "none"
    return (f"median {statistics.median(xs) * scale:.0f}{unit}, max {max(xs) * scale:.0f}{unit} "
            f"(n={len(xs)})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 live generations, 3 threads x 50 generations")
    ap.add_argument("--threads", type=int, default=10)
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--live-generations", type=int, default=20)
    args = ap.parse_args(argv)
    threads, generations, live = (3, 50, 8) if args.quick else (args.threads, args.generations,
                                                                 args.live_generations)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, CPython {platform.python_version()}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        a = live_latency(live, Path(tmp))
    print(f"live dry run, {a['generations']} generations: journal record -> drawn "
          f"{_summary(a['latency_s'], 1000, ' ms')}; a draw took {_summary(a['draw_ms'], 1, ' ms')}")
    b = load(threads, generations)
    print(f"{threads} threads x {generations} generations: page drawn in {b['first_draw_s']:.2f} s; then "
          f"{b['published']} generations 0.5 s apart: publish -> drawn {_summary(b['latency_s'], 1000, ' ms')}; "
          f"a draw took {_summary(b['draw_ms'], 1, ' ms')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
