"""A recorded session's images, made again from its stored codes.

The server keeps the latent codes of every generation (codes/genNNN_T.npz), not
the images: a generator is deterministic given its config, weights and
precision on one kind of device, so the session's own generators (rebuilt by
`build_threads` from config.json) make the same images again.  The export
(server/export.py, NWB stimulus images) and the real-time replay
(server/replay_realtime.py, re-sent blocks) both get them here.  References
come from references/*.png, as they were shown.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from server.threads import build_threads
from xdream.session_reader import SessionRecord, codes_path


class Regenerator:
    """The session's generators, one per thread; builds them once (seconds for DeePSiM)."""

    def __init__(self, session: SessionRecord):
        self.session = session
        threads, _ = build_threads(session.cfg)
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
            ids, codes = self.session.codes(generation, name)
            out.update(zip(ids, self.generators[name].generate(codes)))
        return out


def stored_references(session: SessionRecord) -> dict[str, np.ndarray]:
    """ref/NAME -> RGB uint8 pixels, as the session stored them in references/."""
    return {f"ref/{path.stem}": np.asarray(Image.open(path).convert("RGB"))
            for path in sorted((session.folder / "references").glob("*.png"))}
