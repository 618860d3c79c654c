"""A recorded session's images, made again from its stored codes.

The server keeps the latent codes of every generation (codes/genNNN_T.npz), not
the images: a generator is deterministic given its config, weights and
precision on one kind of device, so the session's own generators (rebuilt by
`build_threads` from config.json) make the same images again.  The export
(server/export.py, NWB stimulus images), the real-time replay
(server/replay_realtime.py, re-sent blocks) and the finished session's latest
generation (server/latest.py: dashboard and report) all get them here.
References come from references/*.png, as they were shown.
"""

from __future__ import annotations

import copy

import numpy as np
from PIL import Image

from server.threads import build_threads
from xdream.errors import SessionError
from xdream.session_reader import SessionRecord, codes_path


class Regenerator:
    """The session's generators, one per thread; builds them once (seconds for DeePSiM).

    `device`: where the generators run ('cpu', 'cuda'); None: as the session's config says."""

    def __init__(self, session: SessionRecord, device: str | None = None):
        self.session = session
        cfg = session.cfg
        if device is not None:
            cfg = copy.deepcopy(cfg)
            for t in cfg.threads:
                t.generator.device = device
        threads, _ = build_threads(cfg)
        self.generators = {t.name: t.generator for t in threads}

    def images(self, generation: int, threads: list[str] | None = None) -> dict[str, np.ndarray]:
        """image_id -> RGB uint8 pixels of one generation's generated images.

        `threads`: these threads, whose codes must be stored (SessionError if not);
        None: every thread that has codes for the generation (a session stopped in
        the middle of a generation may lack some)."""
        if threads is None:
            threads = [name for name in self.generators
                       if codes_path(self.session.folder, generation, name).is_file()]
        out: dict[str, np.ndarray] = {}
        for name in threads:
            out.update(self.of_thread(generation, name))
        return out

    def of_thread(self, generation: int, thread: str, only: list[str] | None = None) -> dict[str, np.ndarray]:
        """image_id -> pixels of one thread's generation; `only` these ids (SessionError if one
        has no stored code).  All of them are made in one batch, as the server made them; a subset
        is a smaller batch, whose float kernels may round the last bit of a pixel otherwise."""
        ids, codes = self.session.codes(generation, thread)
        if only is not None and set(only) != set(ids):
            row = {i: k for k, i in enumerate(ids)}
            absent = [i for i in only if i not in row]
            if absent:
                raise SessionError(f"generation {generation}, thread {thread}: no stored code for {absent[:3]}")
            ids, codes = list(only), codes[[row[i] for i in only]]
        return dict(zip(ids, self.generators[thread].generate(codes)))


def best_differs(session: SessionRecord, generation: int, thread: str, pixels: dict[str, np.ndarray]) -> str | None:
    """A note if the generation's best image, made again (in `pixels`), differs from the one the
    server saved (best/genNNN_THREAD.png); None if equal, or if there is nothing to compare."""
    rec = session.scores.get((generation, thread))
    if rec is None or np.isnan(rec.scores).all():
        return None
    best = rec.ids[int(np.nanargmax(rec.scores))]
    stored = session.folder / "best" / f"gen{generation:03d}_{thread}.png"
    if best not in pixels or not stored.is_file():
        return None
    with Image.open(stored) as im:
        if np.array_equal(np.asarray(im.convert("RGB")), pixels[best]):
            return None
    return f"generation {generation}, thread {thread}: the regenerated best image differs from {stored.name}"


def stored_references(session: SessionRecord) -> dict[str, np.ndarray]:
    """ref/NAME -> RGB uint8 pixels, as the session stored them in references/."""
    return {f"ref/{path.stem}": np.asarray(Image.open(path).convert("RGB"))
            for path in sorted((session.folder / "references").glob("*.png"))}
