"""XDream's file handshake, the files themselves: block images out, the rig's
answer (block###.mat or block###.h5) in.

Read from upstream willwx/XDream:
- xdream/Scorers.py, BlockWriter.write_block: images are named
  f'block{iblock:03d}_{i:03d}_{imgid}.{fmt}' (fmt 'png' or 'bmp'), blocks
  count from 000, and images leave the folder once the block is scored.
- xdream/Scorers.py, EPhysScorer._with_io_get_scores: the answer is
  f'block{iblock:03d}.{mat|h5}' in the score folder; XDream polls for the
  file and then sleeps a fixed 0.5 s "to let it finish" (a race: this module
  checks completeness instead, see AnswerWatcher).
- xdream/utils.py, load_block_mat: a .mat is read with h5py (MATLAB -v7.3):
  'stimulusID' a cell array of char (object references, read as row 0 of the
  dataset), each name cut at its last backslash; 'tEvokedResp' read as
  (images, channels).  load_h5_score_file: an .h5 holds 'scores' and,
  optionally, 'indices' into the block's sorted image file names.

Beyond upstream: a MATLAB v5/v7 .mat (scipy.io) and an .h5 holding
stimulusID/tEvokedResp are read too, and once all of a block's images are in
place a manifest block###_images.txt lists them (a rig that ignores it loses
nothing; the simulated rig waits for it).  Every file is written under a
temporary name and renamed, so a rig never sees half an image.

numpy + zlib here; scipy and h5py are imported only when an answer is read.
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xdream.errors import XdreamError
from xdream.files import write_atomic

IMAGE_FORMATS = ("png", "bmp")
ANSWER_FORMATS = ("mat", "h5")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class AnswerUnreadable(XdreamError):
    """An answer file that does not parse (yet): still being written, or corrupt."""


class AnswerCorrupt(XdreamError):
    """An answer file that stayed unreadable and unchanged: the rig wrote something wrong."""


# --------------------------------------------------------------- names
def image_file_name(block: int, index: int, image_id: str, fmt: str) -> str:
    """XDream's name for the index-th image of a block; the id made safe for any file system."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", image_id).strip("-.") or "image"
    return f"block{block:03d}_{index:03d}_{safe}.{fmt}"


def manifest_name(block: int) -> str:
    return f"block{block:03d}_images.txt"


def answer_paths(folder: Path, block: int) -> list[Path]:
    return [folder / f"block{block:03d}.{fmt}" for fmt in ANSWER_FORMATS]


def leftovers(folder: Path) -> list[str]:
    """Files of an earlier run that this run could mistake for its own."""
    pattern = re.compile(r"^block\d{3}.*\.(png|bmp|mat|h5|txt)$")
    return sorted(p.name for p in folder.iterdir() if pattern.match(p.name))


# -------------------------------------------------------------- images
def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes (8-bit truecolour, filter 0 on every row)."""
    h, w, _ = image.shape
    rows = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    rows[:, 0] = 0
    rows[:, 1:] = np.ascontiguousarray(image).reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + chunk(b"IEND", b""))


def encode_bmp(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> 24-bit BMP (bottom-up rows, BGR, rows padded to 4 bytes)."""
    h, w, _ = image.shape
    stride = (3 * w + 3) & ~3
    pixels = np.zeros((h, stride), dtype=np.uint8)
    pixels[:, :3 * w] = image[::-1, :, ::-1].reshape(h, 3 * w)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, pixels.size, 2835, 2835, 0, 0)
    head = struct.pack("<2sIHHI", b"BM", 14 + len(info) + pixels.size, 0, 0, 14 + len(info))
    return head + info + pixels.tobytes()


def write_for_rig(path: Path, data: bytes) -> None:
    """Write under a name the rig ignores, then rename: the rig sees all of it or nothing
    (not fsynced: the rig needs all-or-nothing, and an fsync a file would cost the presenter's time)."""
    write_atomic(path, lambda f: f.write(data), durable=False)


def write_block_images(folder: Path, block: int, items: list[tuple[str, np.ndarray]], fmt: str) -> list[str]:
    """Write a block's images (image_id, pixels) and then its manifest; returns the file names."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt!r} is not one of {IMAGE_FORMATS}")
    encode = encode_png if fmt == "png" else encode_bmp
    names = []
    for i, (image_id, pixels) in enumerate(items):
        name = image_file_name(block, i, image_id, fmt)
        write_for_rig(folder / name, encode(pixels))
        names.append(name)
    write_for_rig(folder / manifest_name(block), ("\n".join(names) + "\n").encode())
    return names


# -------------------------------------------------------------- answers
@dataclass
class Answer:
    path: Path
    names: list[str]          # one per row: the stimulus's file name, folders cut off
    responses: np.ndarray     # (rows, channels) float


def read_answer(path: Path, block_names: list[str]) -> Answer:
    """Parse a whole answer file; AnswerUnreadable unless every variable is there and consistent.

    `block_names` are the block's image file names (XDream's .h5 'indices' point into
    their sorted list)."""
    try:
        with open(path, "rb") as f:
            head = f.read(520)
        if head[:8] == _HDF5_SIGNATURE or head[512:520] == _HDF5_SIGNATURE:
            names, responses = _read_hdf5(path, block_names)
        elif path.suffix == ".mat":
            names, responses = _read_mat5(path)
        else:
            raise AnswerUnreadable(f"{path.name} is not an HDF5 file")
    except AnswerUnreadable:
        raise
    except Exception as exc:  # scipy/h5py raise many unrelated types on a bad file
        raise AnswerUnreadable(f"{path.name} does not parse: {type(exc).__name__}: {exc}") from None
    return Answer(path, names, _orient(responses, len(names), path.name))


def _read_mat5(path: Path):
    import scipy.io

    data = scipy.io.loadmat(str(path), variable_names=["stimulusID", "tEvokedResp"])
    for key in ("stimulusID", "tEvokedResp"):
        if key not in data:
            raise AnswerUnreadable(f"{path.name} has no variable {key!r}")
    return _names_from_mat5(data["stimulusID"]), np.asarray(data["tEvokedResp"], dtype=float)


def _names_from_mat5(value) -> list[str]:
    value = np.asarray(value)
    if value.dtype.kind == "U":  # a char matrix: one padded name per row
        return [_base_name(str(v).rstrip()) for v in (value if value.ndim else [value])]
    if value.dtype != object:
        raise AnswerUnreadable(f"stimulusID must be a cell array of names, got {value.dtype}")
    names = []
    for item in value.ravel(order="F"):
        chars = np.asarray(item)
        if chars.dtype.kind != "U":
            raise AnswerUnreadable(f"stimulusID holds a {chars.dtype} where a name should be")
        names.append(_base_name("".join(chars.ravel().tolist())))
    return names


def _read_hdf5(path: Path, block_names: list[str]):
    import h5py

    with h5py.File(path, "r") as f:
        if "stimulusID" in f and "tEvokedResp" in f:
            names = [_base_name(n) for n in _names_from_hdf5(f, f["stimulusID"])]
            return names, np.asarray(f["tEvokedResp"][()], dtype=float)
        if "scores" in f:  # XDream's own .h5 layout (utils.load_h5_score_file)
            scores = np.asarray(f["scores"][()], dtype=float)
            ordered = sorted(block_names)
            if "indices" in f:
                indices = np.asarray(f["indices"][()]).ravel()
                if indices.dtype.kind not in "iu" or len(indices) != len(scores):
                    raise AnswerUnreadable(f"{path.name}: 'indices' must be {len(scores)} integers")
                if len(indices) and (indices.min() < 0 or indices.max() >= len(ordered)):
                    raise AnswerUnreadable(f"{path.name}: 'indices' point outside the block's "
                                           f"{len(ordered)} images")
                return [ordered[i] for i in indices], scores
            if len(scores) != len(ordered):
                raise AnswerUnreadable(f"{path.name}: {len(scores)} scores and no 'indices' "
                                       f"for a block of {len(ordered)} images")
            return ordered, scores
        raise AnswerUnreadable(f"{path.name} holds neither stimulusID and tEvokedResp nor scores")


def _names_from_hdf5(f, dataset) -> list[str]:
    import h5py

    raw = dataset[()]
    if h5py.check_dtype(ref=dataset.dtype) is not None:
        # MATLAB -v7.3 cell array: references to uint16 char arrays (XDream reads row 0)
        refs = raw[0] if raw.ndim == 2 else raw.ravel()
        return ["".join(np.asarray(f[ref][()]).astype(np.uint32).view("U1").ravel().tolist()) for ref in refs]
    names = []
    for item in np.asarray(raw).ravel():
        names.append(item.decode() if isinstance(item, bytes) else str(item))
    return names


def _base_name(name: str) -> str:
    """The file name without the rig's folders (Windows or POSIX)."""
    return re.split(r"[\\/]", name.strip())[-1]


def _orient(responses: np.ndarray, n: int, where: str) -> np.ndarray:
    """(images, channels): rows are images unless only the columns match the ids' count."""
    if responses.ndim == 0:
        responses = responses.reshape(1, 1)
    elif responses.ndim == 1:
        responses = responses.reshape(-1, 1) if len(responses) == n else responses.reshape(1, -1)
    if responses.ndim != 2:
        raise AnswerUnreadable(f"{where}: tEvokedResp must be a matrix, got shape {responses.shape}")
    if responses.shape[0] == n:
        return responses
    if responses.shape[1] == n:
        return responses.T
    raise AnswerUnreadable(f"{where}: tEvokedResp has shape {responses.shape}; "
                           f"neither side matches the {n} stimulus ids")


class AnswerWatcher:
    """Waits for one block's answer without ever reading a half-written file.

    A file counts only once two polls in a row see the same size and mtime, it
    parses completely with every variable and consistent shapes, and it is still
    unchanged after the read.  A file that stays unreadable and unchanged for
    `corrupt_after_s` raises AnswerCorrupt.  No sleeps: the caller polls."""

    def __init__(self, folder: Path, block: int, block_names: list[str], corrupt_after_s: float = 5.0,
                 clock=time.monotonic):
        self.paths = answer_paths(folder, block)
        self.block_names = block_names
        self.corrupt_after_s = corrupt_after_s
        self.clock = clock
        self.path: Path | None = None       # the answer file, once one exists
        self._seen: tuple | None = None     # (size, mtime_ns) at the last poll
        self._since = 0.0                   # when it last changed
        self._failed: tuple | None = None   # the signature that last failed to parse
        self.last_error = ""

    def check(self) -> Answer | None:
        if self.path is None:
            self.path = next((p for p in self.paths if p.exists()), None)
            if self.path is None:
                return None
        sig = _signature(self.path)
        now = self.clock()
        if sig is None:
            return None  # renamed away between polls: look again next time
        if sig != self._seen:
            self._seen, self._since = sig, now
            return None
        if sig != self._failed:
            try:
                answer = read_answer(self.path, self.block_names)
            except AnswerUnreadable as exc:
                self._failed, self.last_error = sig, str(exc)
            else:
                if _signature(self.path) == sig:
                    return answer
                return None  # it changed while we read it: wait for it to settle again
        if now - self._since >= self.corrupt_after_s:
            raise AnswerCorrupt(f"{self.path.name} stayed unreadable and unchanged for "
                                f"{self.corrupt_after_s:.1f} s: {self.last_error}")
        return None


def _signature(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns
