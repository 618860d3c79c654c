"""A finished session's latest generation, its images made again: for the dashboard's grid
(`xdream dashboard SESSION_DIR`) and the report's (`xdream report`).

The journal keeps codes, not images (server/regenerate.py).  Bounded: only the latest scored
generation of each thread, at most `limit` images of it (the best-scored), the generators built
once, on the CPU (a dashboard beside a running server leaves its GPU alone).  Whatever fails
(weights that moved, a lost codes file) leaves that thread without images and with one line
saying why; the page and the report still render.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from server.status import THUMB_PX, thumbnail
from xdream.session_reader import SessionRecord

log = logging.getLogger(__name__)

LATEST_IMAGES = 40   # default bound per thread: a Ponce-lab generation (XDream's is 20)


@dataclass
class Latest:
    """One thread's latest scored generation: `size` images, of which `ids` (best first, at most
    the limit) were made again, with their scores and pixels; `note` says why some or all are not."""
    thread: str
    generation: int
    size: int
    ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)
    note: str = ""


def latest_generations(session: SessionRecord, limit: int = LATEST_IMAGES, device: str = "cpu") -> dict[str, Latest]:
    """thread -> its latest scored generation, the best `limit` images made again (see module doc)."""
    out: dict[str, Latest] = {}
    for t in session.cfg.threads:
        gens = [g for g, name in session.scores if name == t.name]
        if gens:
            g = max(gens)
            out[t.name] = Latest(t.name, g, len(session.scores[(g, t.name)].ids))
    if not out:
        return out
    if limit < 1:
        for lat in out.values():
            lat.note = "no images: not asked for (--latest-images 0)"
        return out
    from server.regenerate import Regenerator, best_differs

    try:
        regenerator = Regenerator(session, device=device)
    except Exception as exc:   # weights missing or moved, a generator this version lacks: say so, go on
        why = _line(exc)
        log.warning("latest generation: the generator could not be built: %s", why)
        for lat in out.values():
            lat.note = f"no images: the session's generator could not be built ({why})"
        return out
    for name, lat in out.items():
        rec = session.scores[(lat.generation, name)]
        scores = [float(x) for x in rec.scores]
        # best first, unmeasured (NaN) last; ties keep the generation's order (as np.nanargmax)
        order = sorted(range(len(scores)), key=lambda k: (True, 0.0) if math.isnan(scores[k]) else (False, -scores[k]))
        keep = [rec.ids[k] for k in order[:limit]]
        try:
            made = regenerator.of_thread(lat.generation, name, keep)
        except Exception as exc:   # a lost or unreadable codes file: this thread only
            why = _line(exc)
            log.warning("latest generation of thread %s: %s", name, why)
            lat.note = f"no images: {why}"
            continue
        lat.ids, lat.scores, lat.pixels = keep, [scores[k] for k in order[:limit]], [made[i] for i in keep]
        notes = [f"the best {len(keep)} of {lat.size} images"] if len(keep) < lat.size else []
        if (differs := best_differs(session, lat.generation, name, made)) is not None:
            notes.append(differs + " (another device or CPU's float path?)")
        lat.note = "; ".join(notes)
    return out


def thumbnail_png(image: np.ndarray, size: int = THUMB_PX) -> bytes:
    """A small lossless PNG of one HxWx3 uint8 image (no larger than `size`, aspect kept)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(image))
    im.thumbnail((size, size))
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def for_dashboard(latest: dict[str, Latest]) -> dict[str, dict]:
    """What xdream/dashboard/journal_events.py folds in: thread -> {generation, images: {id: JPEG
    thumbnail, as the live stream sends them}, note}."""
    return {name: {"generation": lat.generation, "note": lat.note,
                   "images": {i: thumbnail(p) for i, p in zip(lat.ids, lat.pixels)}}
            for name, lat in latest.items()}


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
