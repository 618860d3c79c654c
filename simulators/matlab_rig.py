"""A simulated MATLAB/MonkeyLogic rig on XDream's file handshake.

It watches the handshake folder, and for each block whose images are all in
place (the block's manifest), it "shows" the images in its own shuffled order,
computes spike counts from ConvNet units, and writes the answer the way a
MATLAB rig would: block###.mat (-v7.3 HDF5 or v5) or block###.h5.

Written on its own from upstream willwx/XDream (xdream/Scorers.py, EPhysScorer;
xdream/utils.py, load_block_mat and load_h5_score_file), never with the
bridge's reader.  It writes the answer straight to its final name in chunks,
with pauses, so that a reader that does not check completeness would read a
half-written file (as MATLAB's save does over a network share).

    python -m simulators.matlab_rig --dir FOLDER --config CONFIG [--format mat73]
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from simulators.neuron import build_units

log = logging.getLogger(__name__)

FORMATS = ("mat73", "mat5", "h5", "h5-scores")
READY = "matlab rig watching "
_MANIFEST = re.compile(r"^block(\d{3})_images\.txt$")


class SimulatedMatlabRig:
    def __init__(self, cfg, folder, answer_format: str = "mat73", chunks: int = 4,
                 chunk_pause_s: float = 0.02, path_prefix: str = "C:\\rig\\stimuli\\", units=None):
        if answer_format not in FORMATS:
            raise ValueError(f"answer format {answer_format!r} is not one of {FORMATS}")
        self.cfg = cfg
        self.folder = Path(folder)
        self.format = answer_format
        self.chunks = max(1, chunks)
        self.chunk_pause_s = chunk_pause_s
        self.path_prefix = path_prefix
        self.units = units or build_units(cfg, cfg.device)
        self.channels = self.units.channels
        self.answered: set[int] = set()

    # ---------------------------------------------------------------- loop
    def run(self, stop=None, poll_s: float = 0.02) -> None:
        while stop is None or not stop.is_set():
            if not self.step():
                time.sleep(poll_s)  # a rig polling its folder; the reader side never sleeps

    def step(self) -> bool:
        """Answer the first block whose manifest is there and that has no answer yet."""
        for path in sorted(self.folder.glob("block*_images.txt")):
            m = _MANIFEST.match(path.name)
            if m and int(m.group(1)) not in self.answered:
                self.answer_block(int(m.group(1)))
                return True
        return False

    def answer_block(self, block: int) -> Path:
        names = (self.folder / f"block{block:03d}_images.txt").read_text().split()
        order = np.random.default_rng([self.cfg.seed, 4, block]).permutation(len(names))
        shown = [names[i] for i in order]
        responses = self.respond(block, [self._load(self.folder / n) for n in shown])
        path = self.folder / f"block{block:03d}.{'h5' if self.format.startswith('h5') else 'mat'}"
        self.write_in_chunks(path, self.encode(block, names, shown, responses))
        self.answered.add(block)
        log.info("answered block %d (%d images) in %s", block, len(shown), path.name)
        return path

    # ------------------------------------------------------------- neuron
    def respond(self, block: int, images: list[np.ndarray]) -> np.ndarray:
        """Spike counts in the response window, (images, channels)."""
        views = np.stack([self._receptive_field(im) for im in images])
        rates = self.units.rates(views) + self.cfg.baseline_hz
        rng = np.random.default_rng([self.cfg.seed, 5, block])
        return rng.poisson(rates * self.cfg.duration_ms / 1000.0).astype(float)

    def _receptive_field(self, image: np.ndarray) -> np.ndarray:
        h, w, _ = image.shape
        s = min(self.cfg.rf_size_px, h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return image[top:top + s, left:left + s]

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    # -------------------------------------------------------------- files
    def encode(self, block: int, names: list[str], shown: list[str], responses: np.ndarray) -> bytes:
        ids = [self.path_prefix + n for n in shown]
        if self.format == "mat5":
            return _mat5(ids, responses)
        if self.format == "mat73":
            return _mat73(ids, responses)
        if self.format == "h5":
            return _h5_plain(ids, responses)
        # XDream's own .h5: indices into the block's sorted image names
        ordered = sorted(names)
        return _h5_scores(np.array([ordered.index(n) for n in shown]), responses)

    def write_in_chunks(self, path: Path, data: bytes) -> None:
        step = -(-len(data) // self.chunks)
        with open(path, "wb") as f:
            for start in range(0, len(data), step):
                f.write(data[start:start + step])
                f.flush()
                if start + step < len(data):
                    time.sleep(self.chunk_pause_s)


def _mat5(ids: list[str], responses: np.ndarray) -> bytes:
    import scipy.io

    cell = np.empty((len(ids), 1), dtype=object)
    for i, s in enumerate(ids):
        cell[i, 0] = s
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"stimulusID": cell, "tEvokedResp": responses}, format="5")
    return buf.getvalue()


def _mat73(ids: list[str], responses: np.ndarray) -> bytes:
    """MATLAB -v7.3: HDF5 after a 512-byte MAT header; arrays stored transposed
    (a MATLAB n x 1 cell is a 1 x n dataset of references to uint16 char arrays)."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        ref_list = []
        for i, s in enumerate(ids):
            chars = np.frombuffer(s.encode("utf-16-le"), dtype=np.uint16).reshape(-1, 1)
            d = refs.create_dataset(f"s{i}", data=chars)
            d.attrs["MATLAB_class"] = np.bytes_(b"char")
            d.attrs["MATLAB_int_decode"] = np.int32(2)
            ref_list.append(d.ref)
        cell = f.create_dataset("stimulusID", data=np.array([ref_list], dtype=h5py.ref_dtype))
        cell.attrs["MATLAB_class"] = np.bytes_(b"cell")
        # MATLAB holds tEvokedResp as channels x images; HDF5 shows it images x channels
        resp = f.create_dataset("tEvokedResp", data=responses)
        resp.attrs["MATLAB_class"] = np.bytes_(b"double")
    data = bytearray(buf.getvalue())
    text = (f"MATLAB 7.3 MAT-file, Platform: PCWIN64, Created on: {time.strftime('%a %b %d %H:%M:%S %Y')} "
            "HDF5 schema 1.00 .").encode().ljust(116)
    data[:128] = text + b"\x00" * 8 + b"\x00\x02IM"  # subsystem offset, version 0x0200, endian
    return bytes(data)


def _h5_plain(ids: list[str], responses: np.ndarray) -> bytes:
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("stimulusID", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("tEvokedResp", data=responses)
    return buf.getvalue()


def _h5_scores(indices: np.ndarray, responses: np.ndarray) -> bytes:
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("scores", data=responses)
        f.create_dataset("indices", data=indices.astype(np.int64))
    return buf.getvalue()


def main(argv=None) -> int:
    from xdream import config as config_mod

    p = argparse.ArgumentParser(prog="python -m simulators.matlab_rig", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="the handshake folder the bridge writes images into")
    p.add_argument("--config", default="default", help="config file whose [simulator] defines the units")
    p.add_argument("--format", choices=FORMATS, default="mat73", help="how to write the answers")
    p.add_argument("--chunks", type=int, default=4, help="write each answer in this many pieces")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s matlab-rig %(levelname)s %(message)s",
                        stream=sys.stderr)
    cfg = config_mod.load(None if args.config == "default" else args.config)
    rig = SimulatedMatlabRig(cfg.simulator, args.dir, args.format, chunks=args.chunks)
    print(f"{READY}{args.dir}", flush=True)
    try:
        rig.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
