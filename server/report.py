"""`xdream report SESSION`: one self-contained HTML page of a session for a lab notebook,
with its figures as PNG files beside it.

What it holds: per thread the score trajectory (generated images' mean ± s.d. and max, the
reference images' mean), the latest generation's images as a grid with their scores beside the
best image so far (made again from the codes, server/latest.py), each thread's best image every N
generations as a montage, the reference images' responses over time (drift), a rig-health
summary and the config.  Figures
are drawn with matplotlib (server/report_figures.py) and embedded as base64 PNG: the page
fetches nothing, so it opens offline and survives being mailed or archived.

Sources: the tables of xdream/session_tables.py (the numbers the export writes), the
dashboard's fold of the journal (xdream/dashboard/journal_events.py: presentation fates,
dropped frames, abort reasons), and the journal's peer records.  The best image of a
generation is best/genNNN_THREAD.png when the server saved it; a missing one (PNGs are
written off the hot path, a crash can lose the last) is made again from the codes by the
session's generator (server/regenerate.py), which is why this module sits in the server layer.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from server import report_figures as figures
from server.latest import LATEST_IMAGES, Latest, latest_generations, thumbnail_png
from xdream.dashboard.journal_events import state_of
from xdream.notebook import Session, load_session
from xdream.progress import progress

log = logging.getLogger(__name__)

MONTAGE_TILES = 16     # default N makes at most this many tiles per thread
BEST_PX = 128          # the best image so far, beside the latest generation's thumbnails


@dataclass
class Report:
    html: Path
    figures: list[Path]
    notes: list[str] = field(default_factory=list)


def default_every(generations: int, tiles: int = MONTAGE_TILES) -> int:
    return max(1, math.ceil(generations / tiles))


def write_report(folder, out: Path | None = None, every: int | None = None,
                 latest_images: int = LATEST_IMAGES) -> Report:
    """Write OUT (default SESSION/report/report.html) and its PNGs (OUT's stem + '-NAME.png');
    `latest_images`: at most this many of each thread's latest generation (0: none)."""
    session = load_session(folder)
    out = Path(out) if out else session.folder / "report" / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    notes = [f"journal: {p}" for p in session.problems]
    rows = session.rows
    gens = sorted({g["generation"] for g in rows.generations})
    every = every or default_every(len(gens))

    def fig_path(name: str) -> Path:
        return out.with_name(f"{out.stem}-{name}.png")

    made: list[tuple[str, Path]] = []
    if rows.generations:
        made.append(("Score trajectories", figures.trajectories(_series(session), fig_path("trajectories"))))
    if rows.references:
        targets = {t.channel: [u.name for u in session.cfg.threads if u.channel == t.channel]
                   for t in session.cfg.threads}
        made.append(("Reference responses over time",
                     figures.drift(_drift(rows.references), targets, fig_path("drift"))))
    montages, montage_notes = _montages(session, gens, every, fig_path)
    notes += montage_notes
    latest = latest_generations(session, latest_images)
    page = _html(session, made, montages, every, notes, latest)
    out.write_text(page, encoding="utf-8")
    # printed by the CLI; the page shows them above each thread's grid
    notes += [f"latest generation of thread {name}: {lat.note}" for name, lat in latest.items() if lat.note]
    return Report(out, [p for _, p in made] + [p for _, p in montages], notes)


# ---------------------------------------------------------------------------- data for the figures
def _series(session: Session) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for t in session.cfg.threads:
        rows = [g for g in session.rows.generations if g["thread"] == t.name]
        if not rows:
            continue
        sd = []
        for g in rows:
            s = session.scores[(g["generation"], t.name)].scores
            s = s[np.isfinite(s)]
            sd.append(float(s.std()) if len(s) else math.nan)
        out[t.name] = {"generation": np.array([g["generation"] for g in rows]),
                       "mean": np.array([g["mean"] for g in rows], dtype=float),
                       "max": np.array([g["max"] for g in rows], dtype=float),
                       "sd": np.array(sd), "ref_mean": np.array([g["ref_mean"] for g in rows], dtype=float)}
    return out


def _drift(references: list[dict]) -> dict[int, dict[str, tuple[np.ndarray, np.ndarray]]]:
    out: dict[int, dict[str, tuple[list, list]]] = {}
    for r in references:
        x, y = out.setdefault(r["channel"], {}).setdefault(r["image_id"].removeprefix("ref/"), ([], []))
        x.append(r["generation"])
        y.append(r["response"])
    return {ch: {name: (np.array(x), np.array(y, dtype=float)) for name, (x, y) in refs.items()}
            for ch, refs in out.items()}


def _montages(session: Session, gens: list[int], every: int, fig_path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Per thread, the best image of every `every`-th generation (and of the last)."""
    picked = sorted(set(gens[::every]) | ({gens[-1]} if gens else set()))
    best = {(g["generation"], g["thread"]): g for g in session.rows.generations}
    regenerator = None
    notes: list[str] = []
    out = []
    todo = [(t.name, g) for t in session.cfg.threads for g in picked if (g, t.name) in best]
    tiles: dict[str, list[tuple[str, np.ndarray | None]]] = {}
    for thread, g in progress(todo, "report: best images", total=len(todo), unit="image"):
        row = best[(g, thread)]
        image = None
        path = session.folder / "best" / f"gen{g:03d}_{thread}.png"
        if path.is_file():
            image = _png(path)
        elif row["best_image_id"]:
            try:
                if regenerator is None:
                    from server.regenerate import Regenerator
                    regenerator = Regenerator(session)
                image = regenerator.images(g, [thread])[row["best_image_id"]]
                notes.append(f"generation {g}, thread {thread}: {path.name} is missing; made again from the codes")
            except Exception as exc:   # a missing codes file, weights that moved: the report goes on without it
                log.warning("report: no best image for generation %d of thread %s: %s", g, thread, exc)
                notes.append(f"generation {g}, thread {thread}: no best image ({exc})")
        score = row["best_score"]
        caption = f"gen {g}: {score:.1f}" if math.isfinite(score) else f"gen {g}: not measured"
        tiles.setdefault(thread, []).append((caption, image))
    for thread, items in tiles.items():
        title = f"thread {thread}: best image every {every} generations (score)" if every > 1 else \
            f"thread {thread}: best image of each generation (score)"
        out.append((f"Best images, thread {thread}", figures.montage(items, title, fig_path(f"best-{thread}"))))
    return out, notes


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------------------- rig health
def rig_health(session: Session) -> dict:
    """Presentation fates and dropped frames (the dashboard's fold of the journal), peers' joins,
    losses and reconnects, resumes."""
    rig = dict(state_of(session).rig)
    joined = Counter(str(r.get("peer", "")) for r in session.records if r["kind"] == "peer_joined")
    lost = Counter(str(r.get("peer", "")) for r in session.records if r["kind"] == "peer_lost")
    peers = [{"peer": name, "role": next((r.get("role", "") for r in session.records
                                          if r["kind"] == "peer_joined" and r.get("peer") == name), ""),
              "joined": n, "lost": lost[name], "reconnects": n - 1} for name, n in sorted(joined.items())]
    end = [r for r in session.records if r["kind"] == "session_end"]
    return {**rig, "peers": peers,
            "resumes": sum(1 for r in session.records if r["kind"] == "session_resumed"),
            "rejected": sum(1 for r in session.records if r["kind"] == "rejected"),
            "end": end[-1].get("reason", "") if end else "(no session_end: the server did not end it)"}


# ---------------------------------------------------------------------------- the page
CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
th { background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } pre { background: #f7f7f7; padding: 1em; overflow: auto; font-size: 12px; }
.note { color: #8a5a00; } .wide { overflow-x: auto; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-end; }
.cell { margin: 0; text-align: center; font-size: 12px; } .cell img { display: block; }
.best { margin-left: 1em; }
"""


def _img(path: Path, alt: str) -> str:
    return _png_tag(path.read_bytes(), alt)


def _png_tag(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _score(x: float | None) -> str:
    return "not measured" if x is None or not math.isfinite(x) else f"{x:.1f}"


def _latest_html(session: Session, latest: dict[str, Latest]) -> list[str]:
    """Per thread: the latest generation's images (best first) with their scores, and the best
    image so far (best/best_THREAD.png, as the server saved it)."""
    if not latest:
        return ["<p>(no scored generation)</p>"]
    best = {t["thread"]: t for t in session.rows.threads}
    parts = []
    for name, lat in latest.items():
        parts.append(f"<h3>Thread {html.escape(name)}: generation {lat.generation} ({lat.size} images)</h3>")
        if lat.note:
            parts.append(f"<p class='note grid-note'>{html.escape(lat.note)}</p>")
        cells = [f"<figure class='cell'>{_png_tag(thumbnail_png(p), i, 'gen-image')}"
                 f"<figcaption>{_score(x)}</figcaption></figure>" for i, p, x in zip(lat.ids, lat.pixels, lat.scores)]
        row = best.get(name, {})
        path = session.folder / "best" / f"best_{name}.png"
        if path.is_file():
            tag = _png_tag(thumbnail_png(_png(path), BEST_PX), f"best of {name}", "best-so-far")
            cells.append(f"<figure class='cell best'>{tag}<figcaption>best so far: {_score(row.get('best_score'))} "
                         f"(gen {row.get('best_generation', '?')})</figcaption></figure>")
        else:
            parts.append(f"<p class='note'>best so far: {html.escape(path.name)} is missing</p>")
        parts.append(f"<div class='grid'>{''.join(cells)}</div>")
    return parts


def _cell(v) -> str:
    if isinstance(v, float):
        return '<td class="n">' + ("–" if not math.isfinite(v) else f"{v:.3g}") + "</td>"
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="n">{v}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p>(none)</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c, "")) for c in columns) + "</tr>" for r in rows)
    return f"<div class='wide'><table><tr>{head}</tr>{body}</table></div>"


def _html(session: Session, made, montages, every: int, notes: list[str], latest: dict[str, Latest]) -> str:
    start = session.first("session_start") or {}
    when = dt.datetime.fromtimestamp(float(start["t"]), tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC") \
        if isinstance(start.get("t"), (int, float)) else "?"
    health = rig_health(session)
    fates = [{"presentations": k, "count": health[k]}
             for k in ("blocks", "shown", "aborted", "counted", "missing", "late", "dropped_frames", "rejected",
                       "resumes")]
    rate = health.get("session_presentations_per_s")
    parts = [f"<h1>Session {html.escape(session.session_id)}</h1>",
             f"<p>Started {when}; {len(session.cfg.threads)} thread(s), {len(session.generations)} generation(s); "
             f"ended: {html.escape(str(health['end']))}. Written by <code>xdream report</code>.</p>",
             "<h2 id='threads'>Threads</h2>",
             _table(session.rows.threads, ["thread", "channel", "generator", "optimizer", "population",
                                           "generations", "best_score", "best_generation", "best_image_id",
                                           "last_mean", "shown", "aborted", "missing"])]
    for title, path in made:
        anchor = "trajectories" if "trajector" in path.name else "drift"
        parts += [f"<h2 id='{anchor}'>{html.escape(title)}</h2>", f"<figure>{_img(path, title)}</figure>"]
    parts.append("<h2 id='latest-generation'>Latest generation</h2>")
    parts.append("<p>Each thread's latest generation, best first, with its scores, made again from its codes by "
                 "the session's generator; beside it the best image so far.</p>")
    parts += _latest_html(session, latest)
    parts.append("<h2 id='best-images'>Best images</h2>")
    parts.append(f"<p>Each thread's best image every {every} generations (and of the last), with its score.</p>"
                 if every > 1 else "<p>The best image of each generation of each thread, with its score.</p>")
    parts += [f"<figure>{_img(path, title)}</figure>" for title, path in montages] or ["<p>(none)</p>"]
    parts += ["<h2 id='rig-health'>Rig health</h2>",
              _table(fates) + (f"<p>{rate:.2f} presentations per second over the session.</p>" if rate else "")
              + "<p>shown and aborted: the presenter's reports; counted: the recorder's (it counts aborted "
                "presentations too); missing: never reported, or not counted; late: reported after their block "
                "closed (kept, not scored).</p>",
              "<h3>Abort reasons</h3>",
              _table([{"reason": k, "count": v} for k, v in sorted(health["abort_reasons"].items())]),
              "<h3>Peers</h3>", _table(health["peers"])]
    if notes:
        parts += ["<h2 id='notes'>Notes</h2>",
                  "<ul>" + "".join(f"<li class='note'>{html.escape(n)}</li>" for n in notes) + "</ul>"]
    config = json.loads((session.folder / "config.json").read_text())
    parts += ["<h2 id='config'>Config</h2>",
              f"<pre>{html.escape(json.dumps(config, indent=1))}</pre>",
              "<h3>Machine</h3>", f"<pre>{html.escape(json.dumps(start.get('machine', {}), indent=1))}</pre>"]
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>xdream report: {html.escape(session.session_id)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")
