"""`xdream report` and `from xdream import load_session`, on a small dry run whose simulated eye
breaks fixation (aborts, re-queues): the notebook tables equal the journal (read here on its
own), the report page holds its sections and only embedded images, its PNGs exist, a best image
whose PNG was lost is made again from the codes, and the page renders in headless Chromium
(Debian's /usr/bin/chromium through Playwright; the screenshot is saved in the test's tmp folder)."""

from __future__ import annotations

import base64
import fcntl
import io
import json
import math
import os
import pty
import shutil
import subprocess
import struct
import sys
import termios
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import small_config
from tests.dryrun_helpers import dry_run, journal
from tests.test_replay import EYE_PRESENTER
from xdream import config as config_mod

CHROMIUM = "/usr/bin/chromium"
SECTIONS = {"threads", "trajectories", "drift", "latest-generation", "best-images", "rig-health", "config"}


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    cfg = small_config(tmp, generations=4, max_requeues=1)
    config_mod.save_json(cfg, tmp / "small.json")
    (tmp / "eye.toml").write_text(EYE_PRESENTER)
    _, folder = dry_run([str(tmp / "small.json"), "--presenter-config", str(tmp / "eye.toml")], tmp / "sessions")
    return folder


class Page(HTMLParser):
    """Section ids, images (the figures' apart from the latest generation's grid, by class) and
    every address the page would fetch."""

    def __init__(self):
        super().__init__()
        self.ids: list[str] = []
        self.images: list[str] = []                     # the figures (no class)
        self.grid: dict[str, list[tuple[str, str]]] = {}  # class -> [(alt, src)]: gen-image, best-so-far
        self.notes: list[str] = []                      # the grid's notes
        self.fetches: list[str] = []
        self.text: list[str] = []
        self._in_note = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            if a.get("class"):
                self.grid.setdefault(a["class"], []).append((a.get("alt", ""), a.get("src", "")))
            else:
                self.images.append(a.get("src", ""))
        self._in_note = "grid-note" in (a.get("class") or "").split()
        for key in ("src", "href"):
            if key in a and not (tag == "img" and a[key].startswith("data:image/png;base64,")):
                self.fetches.append(f"<{tag} {key}={a[key][:60]}>")
        if tag in ("link", "script", "iframe", "object"):
            self.fetches.append(f"<{tag}>")

    def handle_data(self, data):
        self.text.append(data)
        if self._in_note:
            self.notes.append(data)
            self._in_note = False


def _report(folder: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "xdream.cli", "report", str(folder), "--out", str(out), *extra],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_notebook_tables_equal_the_journal(session):
    from xdream import load_session

    s = load_session(session)
    recs = journal(session)
    sent = [p for r in recs if r["kind"] == "block" for p in r["presentations"]]
    scores = {(r["generation"], r["thread"]): r["scores"] for r in recs if r["kind"] == "scores"}
    pres, gens, threads = s.tables.presentations, s.tables.generations, s.tables.threads
    assert sorted(pres["pid"]) == sorted({p["pid"] for p in sent})
    aborted = {r["pid"] for r in recs if r["kind"] == "shown" and r["status"] == "aborted"}
    assert aborted, "the simulated eye broke no fixation: the test lost its aborts"
    assert set(pres.loc[pres["status"] == "aborted", "pid"]) == aborted
    assert len(gens) == len(scores) == 4
    for _, row in gens.iterrows():
        measured = [x for x in scores[(row["generation"], row["thread"])] if x is not None]
        assert row["mean"] == pytest.approx(np.mean(measured)) and row["max"] == max(measured)
    thread_of = {p["pid"]: p["thread"] for p in sent}
    assert list(threads["thread"]) == ["a"]
    assert threads.loc[0, "aborted"] == sum(1 for pid in aborted if thread_of[pid] == "a")
    refs = s.tables.references
    assert set(refs["image_id"]) == {p["image_id"] for p in sent if p["kind"] == "reference"}
    assert len(refs) == 4 * 2      # 4 generations x 2 references x 1 target channel
    assert s.best_image("a").shape == (64, 64, 3)
    assert sorted(s.best_images("a")) == [0, 1, 2, 3]
    assert len(s.reference_images()) == 2


def test_importing_xdream_does_not_import_the_notebook_or_pandas():
    code = "import sys, xdream.protocol; print('xdream.notebook' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_report_holds_its_sections_embedded_images_and_the_rig_health(session, tmp_path):
    out = tmp_path / "r" / "lab.html"
    _report(session, out, "--every", "2")
    page = Page()
    page.feed(out.read_text())
    assert SECTIONS <= set(page.ids), page.ids
    assert not page.fetches, page.fetches          # self-contained: nothing fetched when opened
    figures = sorted(p.name for p in out.parent.glob("*.png"))
    assert figures == ["lab-best-a.png", "lab-drift.png", "lab-trajectories.png"]
    assert len(page.images) == len(figures)
    assert len(page.grid["gen-image"]) == 6 and len(page.grid["best-so-far"]) == 1   # the latest generation
    embedded = sorted(base64.b64decode(src.split(",", 1)[1]) for src in page.images)
    assert embedded == sorted(p.read_bytes() for p in out.parent.glob("*.png"))
    for data in embedded:
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and im.width > 300
    recs = journal(session)
    text = " ".join(page.text)
    shown = sum(1 for r in recs if r["kind"] == "shown" and r["status"] == "shown")
    aborted = sum(1 for r in recs if r["kind"] == "shown" and r["status"] == "aborted")
    assert f"shown {shown} " in text and f"aborted {aborted} " in text
    assert "gen 0:" not in text       # captions are in the montage's pixels, not the page's text


def test_a_lost_best_image_is_made_again_from_the_codes(session, tmp_path):
    copy = tmp_path / session.name
    shutil.copytree(session, copy)
    lost = copy / "best" / "gen002_a.png"
    kept = np.asarray(Image.open(lost).convert("RGB"))
    lost.unlink()
    result = _report(copy, tmp_path / "out" / "report.html", "--every", "2")
    assert "generation 2, thread a: gen002_a.png is missing; made again from the codes" in result.stdout

    from server.regenerate import Regenerator
    from xdream import load_session

    s = load_session(copy)
    best = s.tables.generations.set_index("generation").loc[2, "best_image_id"]
    assert np.array_equal(Regenerator(s).images(2, ["a"])[best], kept)


def test_the_report_renders_in_headless_chromium(session, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (run.sh test does)", pytrace=False)
    from playwright import sync_api   # the test extra; its browser is Debian's, never a download

    out = tmp_path / "report.html"
    _report(session, out)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(out.as_uri())
            sizes = page.evaluate("Array.from(document.querySelectorAll('figure:not(.cell) img'))"
                                  ".map(i => [i.complete, i.naturalWidth])")
            assert len(sizes) == 3 and all(ok and width > 300 for ok, width in sizes), sizes
            grid = page.evaluate("Array.from(document.querySelectorAll('img.gen-image, img.best-so-far'))"
                                 ".map(i => [i.complete, i.naturalWidth])")
            assert grid == [[True, 64]] * 7, grid     # 6 images of the latest generation, the best so far
            assert page.locator("h1").inner_text().startswith("Session ")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def _png_pixels(src: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _latest(folder: Path) -> tuple[int, list[str], list[str]]:
    """Thread a's latest scored generation from the journal read on its own: (generation, its ids,
    its ids best first; unmeasured last, ties in journal order)."""
    rec = max((r for r in journal(folder) if r["kind"] == "scores" and r["thread"] == "a"),
              key=lambda r: r["generation"])
    ranked = sorted(range(len(rec["ids"])), key=lambda k: (rec["scores"][k] is None, -(rec["scores"][k] or 0)))
    return rec["generation"], rec["ids"], [rec["ids"][k] for k in ranked]


def test_the_report_shows_the_latest_generation_as_a_grid_and_the_best_so_far(session, tmp_path):
    """Issue 14: every image of the latest generation (population 6), best first, each the image
    the session's generator makes again from its journaled code (lossless PNG, and 64 px images are
    not shrunk: equal pixel for pixel), its score beside it; and the best image so far as the
    server saved it (best/best_a.png)."""
    from server.regenerate import Regenerator
    from xdream import load_session

    out = tmp_path / "report.html"
    _report(session, out)
    page = Page()
    page.feed(out.read_text())
    g, ids, ranked = _latest(session)
    grid = page.grid["gen-image"]
    assert [alt for alt, _ in grid] == ranked and len(grid) == len(ids) == 6
    made = Regenerator(load_session(session), device="cpu").of_thread(g, "a")
    for alt, src in grid:
        assert np.array_equal(_png_pixels(src), made[alt]), alt
    stored = np.asarray(Image.open(session / "best" / f"gen{g:03d}_a.png").convert("RGB"))
    assert np.array_equal(_png_pixels(grid[0][1]), stored)      # the session's own best of that generation
    [(_, best_src)] = page.grid["best-so-far"]
    assert np.array_equal(_png_pixels(best_src), np.asarray(Image.open(session / "best" / "best_a.png").convert("RGB")))
    text = " ".join(page.text)
    assert f"generation {g} (6 images)" in text and "best so far: " in text
    assert page.notes == []


def test_the_reports_grid_is_bounded(session, tmp_path):
    """--latest-images 4: the 4 best of the 6, and the page says so.  Made in a batch of 4, not of 6
    as the server made them: another batch size may take another float kernel, which can round a
    pixel the other way (one level of 255), never more; the margin is that one level."""
    from server.regenerate import Regenerator
    from xdream import load_session

    out = tmp_path / "report.html"
    _report(session, out, "--latest-images", "4")
    page = Page()
    page.feed(out.read_text())
    g, _, ranked = _latest(session)
    grid = page.grid["gen-image"]
    assert [alt for alt, _ in grid] == ranked[:4]
    made = Regenerator(load_session(session), device="cpu").of_thread(g, "a")
    for alt, src in grid:
        diff = np.abs(_png_pixels(src).astype(int) - made[alt].astype(int))
        assert diff.max() <= 1, (alt, diff.max())
    assert page.notes == ["the best 4 of 6 images"]


def test_a_grid_whose_best_differs_from_the_saved_one_says_so(session, tmp_path):
    """The grid is the generator's work, not the session's images: when its best image is not the
    one the server saved (another device, another CPU's float path; here a doctored best/ file),
    the page says so above the grid, which is still drawn."""
    copy = tmp_path / session.name
    shutil.copytree(session, copy)
    g, _, _ = _latest(copy)
    saved = copy / "best" / f"gen{g:03d}_a.png"
    Image.fromarray(255 - np.asarray(Image.open(saved).convert("RGB"))).save(saved)
    out = tmp_path / "report.html"
    _report(copy, out)
    page = Page()
    page.feed(out.read_text())
    assert len(page.grid["gen-image"]) == 6
    assert page.notes == [f"generation {g}, thread a: the regenerated best image differs from {saved.name} "
                          f"(another device or CPU's float path?)"]


def test_a_report_without_its_generator_says_why_its_grid_is_empty(session, tmp_path):
    """A weights file named in the config and gone since: the report is written all the same, its
    grid empty with one line saying why (on the page and on stdout)."""
    copy = tmp_path / session.name
    shutil.copytree(session, copy)
    cfg = json.loads((copy / "config.json").read_text())
    gone = tmp_path / "moved" / "fc6.pt"
    cfg["threads"][0]["generator"]["weights"] = str(gone)
    (copy / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "report.html"
    result = _report(copy, out)
    page = Page()
    page.feed(out.read_text())
    assert SECTIONS <= set(page.ids)
    assert "gen-image" not in page.grid and len(page.grid["best-so-far"]) == 1
    assert len(page.notes) == 1 and page.notes[0].startswith("no images: the session's generator could not be "
                                                             "built") and str(gone) in page.notes[0], page.notes
    assert f"note: latest generation of thread a: {page.notes[0]}" in result.stdout


PROGRESS = """
import sys
from xdream.progress import progress
for _ in progress(range(3), "work", total=3):
    pass
print("done", flush=True)
"""


def test_progress_bars_only_on_a_terminal():
    piped = subprocess.run([sys.executable, "-c", PROGRESS], capture_output=True, text=True, check=True)
    assert piped.stdout == "done\n" and piped.stderr == ""
    main, child = pty.openpty()
    # a terminal 100 columns wide (a fresh pty is 0 x 0, where tqdm draws an empty line)
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    try:
        proc = subprocess.run([sys.executable, "-c", PROGRESS], stdout=subprocess.PIPE, stderr=child, text=True,
                              timeout=60, cwd=os.getcwd())
        os.close(child)
        child = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(main)
        if child >= 0:
            os.close(child)
    assert proc.stdout == "done\n"
    assert b"work" in drawn and b"/3" in drawn, drawn


def test_default_every_keeps_the_montage_small():
    from server.report import default_every

    assert default_every(4) == 1 and default_every(16) == 1 and default_every(17) == 2
    assert math.ceil(500 / default_every(500)) <= 16
