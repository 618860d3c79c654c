"""`xdream report` and `from xdream import load_session`, on a small dry run whose simulated eye
breaks fixation (aborts, re-queues): the notebook tables equal the journal (read here on its
own), the report page holds its sections and only embedded images, its PNGs exist, a best image
whose PNG was lost is made again from the codes, and the page renders in headless Chromium
(Debian's /usr/bin/chromium through Playwright; the screenshot is saved in the test's tmp folder)."""

from __future__ import annotations

import base64
import fcntl
import io
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
SECTIONS = {"threads", "trajectories", "drift", "best-images", "rig-health", "config"}


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    cfg = small_config(tmp, generations=4, max_requeues=1)
    config_mod.save_json(cfg, tmp / "small.json")
    (tmp / "eye.toml").write_text(EYE_PRESENTER)
    _, folder = dry_run([str(tmp / "small.json"), "--presenter-config", str(tmp / "eye.toml")], tmp / "sessions")
    return folder


class Page(HTMLParser):
    """Section ids, images and every address the page would fetch."""

    def __init__(self):
        super().__init__()
        self.ids: list[str] = []
        self.images: list[str] = []
        self.fetches: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.images.append(a.get("src", ""))
        for key in ("src", "href"):
            if key in a and not (tag == "img" and a[key].startswith("data:image/png;base64,")):
                self.fetches.append(f"<{tag} {key}={a[key][:60]}>")
        if tag in ("link", "script", "iframe", "object"):
            self.fetches.append(f"<{tag}>")

    def handle_data(self, data):
        self.text.append(data)


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
            sizes = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
            assert len(sizes) == 3 and all(ok and width > 300 for ok, width in sizes), sizes
            assert page.locator("h1").inner_text().startswith("Session ")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000


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
