"""The dashboard in a real browser: headless Chromium from Debian (/usr/bin/chromium) driven by
Playwright for Python, never a browser Playwright downloads (design.md, "Testing what a person
sees").  A small dry run (server, presenter, simulated rig as processes) is watched live, paused,
resumed and stopped from the page; the finished session's page is rendered from its journal.
Screenshots are saved in the test's tmp folder (and looked at by whoever changes the page)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright import sync_api   # the test extra; its browser is Debian's, never a download

from tests.conftest import small_config
from tests.dryrun_helpers import journal
from xdream import config as config_mod
from xdream.dashboard.web import Hub, make_app, start_site
from xdream.status_state import StatusState
from xdream.stdout_lines import DASHBOARD, SESSION_FOLDER, STATUS

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (run.sh test does)", pytrace=False)


def _line(proc, prefix: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the process ended before saying {prefix!r}")
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise AssertionError(f"no {prefix!r} line within {timeout} s")


def _snapshot(url: str) -> dict:
    with urllib.request.urlopen(url + "api/snapshot", timeout=10) as r:
        return json.loads(r.read())


def _wait(pred, timeout: float, what: str, period: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(period)
    raise AssertionError(f"timed out waiting for {what}")


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, HOME=str(tmp_path), PSYCHOPYNOPACKAGES="1")
    env.setdefault("LSLAPICFG", str(Path(__file__).parent / "lsl_api.cfg"))
    return env


def _dashboard(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "xdream.cli", "dashboard", "--port", "0", *args],
                            stdout=subprocess.PIPE, text=True, env=_env(tmp_path))
    return proc, _line(proc, DASHBOARD, 60)


@pytest.fixture(scope="module")
def live_session(tmp_path_factory):
    """A 40-generation dry run, watched from the page: paused, resumed, stopped.  Returns what was seen."""
    tmp = tmp_path_factory.mktemp("live")
    cfg = small_config(tmp, generations=40)
    config_mod.save_json(cfg, tmp / "cfg.json")
    seen: dict = {"tmp": tmp}
    dry = subprocess.Popen([sys.executable, "-m", "xdream.cli", "dry-run", str(tmp / "cfg.json"), "--out",
                            str(tmp / "out")], stdout=subprocess.PIPE, text=True, env=_env(tmp))
    dash = None
    try:
        seen["folder"] = Path(_line(dry, SESSION_FOLDER))
        endpoint = _line(dry, STATUS)
        dash, url = _dashboard(["--server", endpoint], tmp)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)

            def points() -> int:
                return int(page.locator("#trajectory").get_attribute("data-points") or 0)

            _wait(lambda: points() >= 2, 120, "two generations on the page's trajectory")
            seen["points"] = [points()]
            _wait(lambda: points() > seen["points"][0], 60, "a new point per generation")
            seen["points"].append(points())
            seen["images"] = page.locator("img.gen-image").count()
            _wait(lambda: page.locator("#psth-panel").is_visible(), 20, "the PSTH panel")
            seen["psth_bins"] = int(page.locator("#psth").get_attribute("data-bins") or 0)
            seen["psth_traces"] = page.locator("#psth .scatterlayer .trace").count()
            seen["live_psth"] = _snapshot(url)["psth"]
            seen["best"] = page.locator("img.best-image").count()
            page.screenshot(path=str(tmp / "live.png"), full_page=True)
            page.click("#pause")
            _wait(lambda: page.locator("#state").inner_text() == "paused", 10, "the page to say paused")
            # the block in flight finishes, then no new block while paused
            time.sleep(3.0)
            blocks = _snapshot(url)["rig"]["blocks"]
            time.sleep(3.0)
            seen["paused_blocks"] = (blocks, _snapshot(url)["rig"]["blocks"])
            seen["paused_points"] = (points(), points())
            page.screenshot(path=str(tmp / "paused.png"), full_page=True)
            page.click("#resume")
            _wait(lambda: _snapshot(url)["rig"]["blocks"] > blocks, 30, "a new block after resume")
            page.click("#stop")
            dry.wait(120)
            _wait(lambda: page.locator("#state").inner_text() == "ended", 20, "the page to say ended")
            seen["ended_points"] = points()
            page.screenshot(path=str(tmp / "ended.png"), full_page=True)
            browser.close()
        seen["returncode"] = dry.returncode
    finally:
        for proc in (dry, dash):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    return seen


def test_the_live_page_follows_the_session_and_its_buttons_steer_it(live_session):
    seen = live_session
    assert seen["points"][1] > seen["points"][0] >= 2
    assert seen["images"] == 6 and seen["best"] == 1     # population 6, one thread
    before, after = seen["paused_blocks"]
    assert before == after, "a block was sent while paused"
    assert seen["returncode"] == 0
    records = journal(seen["folder"])
    kinds = [r["kind"] for r in records]
    assert {"paused", "resumed", "stop_requested"} <= set(kinds)
    end = records[-1]
    assert end["kind"] == "session_end" and end["reason"].startswith("stopped: by dashboard"), end
    scored = {r["generation"] for r in records if r["kind"] == "scores"}
    assert seen["ended_points"] == len(scored) < 40     # stopped early, every generation drawn
    assert (seen["tmp"] / "live.png").stat().st_size > 10_000
    # the PSTH panel (issue 14): 10 ms bins over the default span [-100, 400) ms, drawn
    assert seen["psth_bins"] == 50 and seen["psth_traces"] >= 2   # images and references at least
    _assert_psth_shows_the_response(seen["live_psth"]["a"]["latest"])


def _assert_psth_shows_the_response(p: dict) -> None:
    """The simulated rig answers 60 ms after onset for 120 ms (simulators' latency_ms,
    duration_ms): the images' bins from there on are higher than those just before the onset
    and in the latency.  Not all of [-100, 0): presentations start every 200 ms (on 100, off
    100), so the previous image's response runs until -20 ms.  The references' PSTH is there
    but not compared: the simulated unit hardly answers them."""
    assert p["start_ms"] == -100 and p["bin_ms"] == 10 and p["n_images"] > 0 and p["n_refs"] > 0
    assert len(p["images"]) == len(p["refs"]) == 50
    quiet = sum(p["images"][8:16]) / 8          # [-20, 60) ms: baseline only
    response = sum(p["images"][17:27]) / 10     # [70, 170) ms
    assert response > quiet + 20, (quiet, response, p["images"])


def test_the_journal_folds_into_the_same_psth_as_the_live_stream(live_session):
    from xdream.dashboard.journal_events import session_state

    state = session_state(live_session["folder"])
    psth = state.snapshot()["psth"]["a"]
    _assert_psth_shows_the_response(psth["latest"])
    assert psth["first"]["generation"] == 0 < psth["latest"]["generation"]
    live = live_session["live_psth"]["a"]["first"]
    assert psth["first"] == live      # the same generation binned the same way from either source
    assert all("psth" not in th for g in state.generations for th in g["threads"])   # summaries stay small


def _finished_page(folder: Path, tmp_path: Path, shot: str, *extra: str) -> dict:
    """`xdream dashboard FOLDER` in Chromium: what the finished page shows (and a screenshot)."""
    dash, url = _dashboard([str(folder), *extra], tmp_path)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            _wait(lambda: page.locator("#state").inner_text() == "ended", 20, "the finished page")
            cells = page.locator("img.gen-image")
            seen = {"points": int(page.locator("#trajectory").get_attribute("data-points")),
                    "best": page.locator("img.best-image").count(),
                    "controls": page.locator("#controls").is_visible(),
                    "traces": page.locator("#trajectory .scatterlayer .trace").count(),
                    "psth": page.locator("#psth-panel").is_visible(),
                    "grid": [(cells.nth(k).get_attribute("alt"), cells.nth(k).get_attribute("src"))
                             for k in range(cells.count())],
                    "loaded": page.evaluate("Array.from(document.querySelectorAll('img.gen-image'))"
                                            ".map(i => i.complete && i.naturalWidth)"),
                    "header": page.locator("#latest > div").first.inner_text(),
                    "notes": page.locator("#latest .grid-note").all_inner_texts()}
            page.screenshot(path=str(tmp_path / shot), full_page=True)
            browser.close()
    finally:
        dash.kill()
        dash.wait()
    return seen


def _latest(folder: Path) -> tuple[int, list[str], list[float | None]]:
    """Thread a's latest scored generation, from the journal read on its own: (generation, ids, scores)."""
    rec = max((r for r in journal(folder) if r["kind"] == "scores" and r["thread"] == "a"),
              key=lambda r: r["generation"])
    return rec["generation"], rec["ids"], rec["scores"]


def test_a_finished_sessions_page_renders_from_its_journal(live_session, tmp_path):
    """Besides the history, the latest generation's images as a grid (issue 14): one thumbnail per
    image of that generation, each the JPEG the live stream would have sent of the image the
    session's generator makes again from the journaled code, and the best of them is the image
    the server saved in best/ while the session ran."""
    import base64

    from server.regenerate import Regenerator
    from server.status import thumbnail
    from xdream.session_reader import load_session

    folder = live_session["folder"]
    seen = _finished_page(folder, tmp_path, "finished.png")
    scored = {r["generation"] for r in journal(folder) if r["kind"] == "scores"}
    assert seen["points"] == len(scored)
    assert seen["best"] == 1
    assert not seen["controls"]     # a finished session has no controls
    assert seen["traces"] == 3      # mean, max, reference
    assert seen["psth"]
    g, ids, scores = _latest(folder)
    assert f"generation {g}" in seen["header"]
    assert len(seen["grid"]) == len(ids) == 6 and seen["notes"] == []   # population 6: every image, no note
    assert all(seen["loaded"]), seen["loaded"]
    shown = {alt: base64.b64decode(src.split(",", 1)[1]) for alt, src in seen["grid"]}
    assert sorted(shown) == sorted(ids)
    made = Regenerator(load_session(folder), device="cpu").of_thread(g, "a")
    assert all(shown[i] == thumbnail(made[i]) for i in ids)
    assert len(set(shown.values())) == len(ids)       # six different images, not one six times
    best = ids[max(range(len(ids)), key=lambda k: -1e300 if scores[k] is None else scores[k])]
    stored = np.asarray(Image.open(folder / "best" / f"gen{g:03d}_a.png").convert("RGB"))
    assert shown[best] == thumbnail(stored)           # the session's own image, not only our regeneration
    assert seen["grid"][0][0] == best                 # sorted by score, best first


def test_a_finished_page_without_its_generator_says_why_its_grid_is_empty(live_session, tmp_path):
    """A weights file named in the config and gone since: the page renders all the same (history,
    best image from best/), with an empty grid and one line saying why."""
    copy = tmp_path / live_session["folder"].name
    shutil.copytree(live_session["folder"], copy)
    cfg = json.loads((copy / "config.json").read_text())
    gone = tmp_path / "moved" / "fc6.pt"
    cfg["threads"][0]["generator"]["weights"] = str(gone)
    (copy / "config.json").write_text(json.dumps(cfg))
    seen = _finished_page(copy, tmp_path, "no-generator.png")
    assert seen["grid"] == [] and seen["best"] == 1
    assert seen["points"] == len({r["generation"] for r in journal(copy) if r["kind"] == "scores"})
    assert len(seen["notes"]) == 1, seen["notes"]
    note = seen["notes"][0]
    assert note.startswith("no images: the session's generator could not be built") and str(gone) in note, note
    assert "\n" not in note


def test_names_and_warnings_from_peers_are_shown_as_text_never_as_markup(tmp_path):
    """A peer's name (its hello) and warnings (which quote rigs and peers) are untrusted: the page
    shows them as text; markup in them builds no element and runs nothing."""
    evil = '<img id="injected" src="x" onerror="window.__pwned = 1">'
    state = StatusState()
    state.apply({"v": 1, "kind": "session", "seq": 1, "t": time.time(), "session": "s", "generations": 3,
                 "threads": [{"name": "a", "channel": 0}], "population": 2, "references": []})
    state.apply({"v": 1, "kind": "peers", "seq": 2, "t": time.time(),
                 "peers": [{"name": evil, "role": "recorder", "connected": True, "last_seen_s": 0.1, "joins": 1}]})
    state.apply({"v": 1, "kind": "warning", "seq": 3, "t": time.time(), "text": f"rig said {evil}"})
    state.apply({"v": 1, "kind": "generation", "seq": 4, "t": time.time(), "generation": 0, "timing": {},
                 "channels": [], "threads": [{"thread": "a", "channel": 0, "mean": 1.0, "max": 2.0, "ref_mean": 0.5,
                                              "ids": [evil, "b"], "scores": [None, None], "images": []}]})
    with _hub_site(Hub(state, live=False)) as (url, _publish):
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            _wait(lambda: evil in page.locator("#warnings").inner_text(), 20, "the warning, as text")
            assert evil in page.locator("#peers").inner_text()
            assert page.locator("#injected").count() == 0
            assert page.evaluate("() => window.__pwned === undefined")
            page.screenshot(path=str(tmp_path / "escaped.png"), full_page=True)
            browser.close()


@contextlib.contextmanager
def _hub_site(hub):
    """The dashboard's web server in-process, on its own loop in a thread: (its URL, publish),
    where publish(event) hands an event to the hub as the live follower would."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner, url = asyncio.run_coroutine_threadsafe(start_site(make_app(hub), "127.0.0.1", 0), loop).result(30)

    async def publish(event: dict) -> None:
        hub.publish(event)

    async def shut_down() -> None:     # the page's event stream waits on its queue: cancel it first
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        await runner.cleanup()
    try:
        yield url, lambda event: asyncio.run_coroutine_threadsafe(publish(event), loop).result(10)
    finally:
        asyncio.run_coroutine_threadsafe(shut_down(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _generation(seq: int, generation: int) -> dict:
    return {"v": 1, "kind": "generation", "seq": seq, "t": time.time(), "generation": generation, "timing": {},
            "channels": [], "threads": [{"thread": "a", "channel": 0, "mean": 1.0 + generation, "max": 2.0,
                                         "ref_mean": 0.5, "ids": ["x"], "scores": [1.0], "images": []}]}


def _one_generation() -> StatusState:
    """A live session's state after its session event (seq 1) and generation 0 (seq 2)."""
    state = StatusState()
    state.apply({"v": 1, "kind": "session", "seq": 1, "t": time.time(), "session": "s", "generations": 9,
                 "threads": [{"name": "a", "channel": 0}], "population": 1, "references": []})
    state.apply(_generation(2, 0))
    return state


def _rig_shown(page) -> str:
    """The rig table's 'shown' count, as the page shows it."""
    return page.locator("#rig tr", has_text="shown").locator("td").inner_text()


def _shown(seq: int) -> dict:
    return {"v": 1, "kind": "presentation", "seq": seq, "t": time.time(), "fate": "shown", "late": False}


def _open_with_snapshots_routed(p, url: str, handler):
    """Debian's Chromium on `url`, every snapshot request going through `handler` (a Playwright route)."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    page = browser.new_page()
    page.route("**/api/snapshot", handler)
    page.goto(url)
    return browser, page


def test_a_page_opened_mid_session_misses_no_event_and_counts_none_twice(tmp_path):
    """The page listens first and takes its snapshot after (the clone pattern): an event published
    while the snapshot is on its way is drawn, and one that is in the snapshot and also comes
    down the stream is counted once.  The snapshot's reply is held back to widen the window that
    a loaded machine opens by chance (CI lost a generation this way: 16 points drawn, 17 scored)."""
    with _hub_site(Hub(_one_generation(), live=True)) as (url, publish):
        def slow_snapshot(route) -> None:
            publish(_shown(3))              # before the snapshot: in it, and (if listening) in the stream too
            reply = route.fetch()
            publish(_generation(4, 1))      # after the snapshot, before the page has it
            publish(_shown(5))
            time.sleep(0.5)
            route.fulfill(response=reply)

        with sync_api.sync_playwright() as p:
            browser, page = _open_with_snapshots_routed(p, url, slow_snapshot)
            _wait(lambda: page.locator("#trajectory").get_attribute("data-points"), 20, "the trajectory")
            time.sleep(1.0)                 # a redraw is at most 200 ms behind its event
            points = int(page.locator("#trajectory").get_attribute("data-points"))
            shown = _rig_shown(page)
            browser.close()
    assert points == 2, "a generation published while the snapshot was on its way is missing"
    assert shown == "2", f"shown {shown}: each presentation counted once"


def test_a_resync_asked_while_a_snapshot_is_on_its_way_takes_a_fresh_one_and_loses_nothing(tmp_path):
    """The hub tells the page to resync (it fell behind) while the page's first snapshot is still
    on its way: the page takes one snapshot at a time, then a fresh one, keeping the events that
    came meanwhile; it ends with every generation and each presentation counted once."""
    with _hub_site(Hub(_one_generation(), live=True)) as (url, publish):
        fetched = []

        def slow_snapshots(route) -> None:
            reply = route.fetch()
            fetched.append(reply)
            if len(fetched) == 1:       # the resync comes while the first snapshot is on its way
                publish({"v": 1, "kind": "resync", "seq": 2})   # as live.py says after a gap
                time.sleep(0.5)
            elif len(fetched) == 2:     # events after the second snapshot, before the page has it
                publish(_generation(3, 1))
                publish(_shown(4))
                time.sleep(0.5)
            route.fulfill(response=reply)

        with sync_api.sync_playwright() as p:
            browser, page = _open_with_snapshots_routed(p, url, slow_snapshots)
            # (the sync API handles routes only inside its own calls: wait_for_timeout lets it)
            _wait(lambda: page.wait_for_timeout(50) or len(fetched) >= 2, 20, "a second snapshot")
            publish(_shown(5))
            _wait(lambda: page.locator("#trajectory").get_attribute("data-points") == "2", 20, "both generations")
            time.sleep(1.0)
            shown = _rig_shown(page)
            browser.close()
    assert shown == "2", f"shown {shown}: each presentation counted once"
