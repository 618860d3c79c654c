"""Reference (natural) images shown in every block, so that drift of the
neuron can be told apart from progress of the evolution.

They come from a folder named in the config, or, for dry runs and tests, from
a built-in set drawn by code (nothing to download, the same pixels everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from xdream.errors import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ReferenceImage:
    name: str
    pixels: np.ndarray  # (size, size, 3) uint8 RGB


def load_references(folder: str, count: int, size: int) -> list[ReferenceImage]:
    if count == 0:
        return []
    if not folder:
        return builtin_references(count, size)
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
        if Path(folder).is_dir() else []
    if len(paths) < count:
        raise ConfigError(f"reference.folder {folder!r} holds {len(paths)} images, the config asks for {count}")
    return [ReferenceImage(p.stem, _fit(Image.open(p).convert("RGB"), size)) for p in paths[:count]]


def _fit(img: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize: references keep their aspect ratio."""
    w, h = img.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return np.asarray(img.crop(box).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def builtin_references(count: int, size: int) -> list[ReferenceImage]:
    """Gratings, a checkerboard, rings, colour blobs and a dark/bright disc pair."""
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    r = np.hypot(x, y)
    bar = (np.abs(x) < 0.08).astype(float)
    makers = [
        ("grating_0deg", lambda: _gray(np.sin(2 * np.pi * 6 * x))),
        ("grating_45deg", lambda: _gray(np.sin(2 * np.pi * 6 * (x + y) / np.sqrt(2)))),
        ("grating_90deg_coarse", lambda: _gray(np.sin(2 * np.pi * 3 * y))),
        ("checkerboard", lambda: _gray(np.sign(np.sin(2 * np.pi * 4 * x) * np.sin(2 * np.pi * 4 * y)))),
        ("rings", lambda: _gray(np.cos(2 * np.pi * 8 * r))),
        ("red_green_blobs", lambda: _rgb(np.exp(-((x - 0.2) ** 2 + y ** 2) / 0.02),
                                         np.exp(-((x + 0.2) ** 2 + y ** 2) / 0.02), 0 * x)),
        ("blue_disc", lambda: _rgb(0 * x, 0 * x, (r < 0.25).astype(float))),
        ("dark_disc", lambda: _gray(np.where(r < 0.3, -1.0, 0.0))),
        ("bright_disc", lambda: _gray(np.where(r < 0.3, 1.0, 0.0))),
        ("yellow_bar", lambda: _rgb(bar, bar, 0 * x)),
    ]
    if count > len(makers):
        raise ConfigError(f"the built-in reference set has {len(makers)} images; "
                          f"reference.count is {count}: name a reference.folder")
    return [ReferenceImage(name, make()) for name, make in makers[:count]]


def _gray(v: np.ndarray) -> np.ndarray:
    """v in [-1, 1] -> gray uint8 RGB around mid-gray."""
    g = np.clip(127.5 + 127.5 * v, 0, 255).round().astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _rgb(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Channels in [0, 1] added onto a dark gray background."""
    img = 40 + 215 * np.stack([r, g, b], axis=2)
    return np.clip(img, 0, 255).round().astype(np.uint8)
