"""Screen geometry in degrees of visual angle, and the frame layout in pixels.

The windowed display draws through a PsychoPy Monitor in 'deg' units; the
headless display composes the same frame here, in numpy, so that a dry run
without a display shows a simulated neuron the same layout.  Pixels per degree
are computed exactly as psychopy.tools.monitorunittools.deg2pix does for
'deg' units (no flat-screen correction):

    px = deg * distance_cm * 0.017455 * resolution_w / width_cm

(0.017455 is PsychoPy's own rounding of pi/180; tests pin the two together).
This module imports neither psychopy nor torch: a server-only install can run
a headless dry run.

Pixel coordinates here are the window's: row 0 at the top, column 0 at the
left; a shape covers the pixels whose centres lie inside it, as OpenGL
rasterises it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stimulus_client.config import PresenterConfig

PSYCHOPY_DEG_TO_RAD = 0.017455   # monitorunittools.deg2cm, correctFlat=False
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


def deg2pix(deg, distance_cm: float, width_cm: float, width_px: int):
    """Degrees to pixels as PsychoPy's deg2pix(deg, monitor) for 'deg' units."""
    return np.asarray(deg, dtype=float) * distance_cm * PSYCHOPY_DEG_TO_RAD * width_px / float(width_cm)


@dataclass(frozen=True)
class Rect:
    """Edges in window pixels (floats): top < bottom, left < right."""
    top: float
    left: float
    bottom: float
    right: float

    def pixels(self) -> tuple[slice, slice]:
        """The rows and columns whose pixel centres lie inside (clipped by the caller)."""
        return (slice(_first_inside(self.top), _first_inside(self.bottom)),
                slice(_first_inside(self.left), _first_inside(self.right)))


def _first_inside(edge: float) -> int:
    return math.ceil(edge - 0.5 - 1e-9)


class Layout:
    """Where everything goes on a window of the configured monitor."""

    def __init__(self, cfg: PresenterConfig):
        m = cfg.monitor
        self.width, self.height = m.resolution
        self.px_per_deg = float(deg2pix(1.0, m.distance_cm, m.width_cm, self.width))
        self._deg2pix = lambda d: deg2pix(d, m.distance_cm, m.width_cm, self.width)
        self.background = cfg.stimulus.background
        self.size_deg = cfg.stimulus.size_deg
        self.position_deg = tuple(cfg.stimulus.position_deg)
        fp = cfg.fixation_point
        self.fixation_enabled = fp.enabled
        self.fixation_color = tuple(fp.color)
        self.fixation_position_deg = tuple(fp.position_deg)
        self.fixation_radius_deg = fp.size_deg / 2.0
        pd = cfg.photodiode
        self.photodiode_enabled = pd.enabled
        self.photodiode_corner = pd.corner
        self.photodiode_size = pd.size_px

    # --------------------------------------------------------- conversions
    def deg2pix(self, deg):
        return self._deg2pix(deg)

    def to_window(self, x_deg: float, y_deg: float) -> tuple[float, float]:
        """A point in degrees (x right, y up, 0 at the centre) -> (row, col) edge coordinates."""
        x, y = self._deg2pix([x_deg, y_deg])
        return self.height / 2.0 - y, self.width / 2.0 + x

    # -------------------------------------------------------------- shapes
    def image_size_px(self, height: int, width: int) -> tuple[float, float]:
        """(h, w) on screen in pixels: the configured width in degrees, or the image's own size."""
        if self.size_deg is None:
            return float(height), float(width)
        w = float(self._deg2pix(self.size_deg))
        return w * height / width, w

    def image_size_deg(self, height: int, width: int) -> tuple[float, float] | None:
        """(w, h) in degrees for PsychoPy, or None when drawn at the image's own pixel size."""
        if self.size_deg is None:
            return None
        return self.size_deg, self.size_deg * height / width

    def image_rect(self, height: int, width: int) -> Rect:
        h, w = self.image_size_px(height, width)
        row, col = self.to_window(*self.position_deg)
        return Rect(row - h / 2, col - w / 2, row + h / 2, col + w / 2)

    def photodiode_rect(self) -> Rect:
        s = self.photodiode_size
        top = 0 if self.photodiode_corner.startswith("top") else self.height - s
        left = 0 if self.photodiode_corner.endswith("left") else self.width - s
        return Rect(top, left, top + s, left + s)

    def photodiode_center_pix(self) -> tuple[float, float]:
        """The patch's centre in PsychoPy 'pix' units (0 at the centre, y up)."""
        r = self.photodiode_rect()
        return ((r.left + r.right) / 2 - self.width / 2, self.height / 2 - (r.top + r.bottom) / 2)

    def fixation_mask(self) -> np.ndarray:
        row, col = self.to_window(*self.fixation_position_deg)
        radius = float(self._deg2pix(self.fixation_radius_deg))
        rows = np.arange(self.height)[:, None] + 0.5
        cols = np.arange(self.width)[None, :] + 0.5
        return (rows - row) ** 2 + (cols - col) ** 2 <= radius ** 2

    # ------------------------------------------------------------- compose
    def compose(self, image: np.ndarray | None, fixation: bool, photodiode_white: bool,
                canvas: np.ndarray | None = None, fixation_mask: np.ndarray | None = None) -> np.ndarray:
        """The whole window as PsychoPy draws it: gray, image, fixation point, photodiode patch."""
        if canvas is None:
            canvas = np.empty((self.height, self.width, 3), dtype=np.uint8)
        canvas[...] = self.background
        if image is not None:
            self.paste(canvas, image)
        if fixation and self.fixation_enabled:
            mask = self.fixation_mask() if fixation_mask is None else fixation_mask
            canvas[mask] = self.fixation_color
        if self.photodiode_enabled:
            rows, cols = self.photodiode_rect().pixels()
            canvas[rows, cols] = WHITE if photodiode_white else BLACK
        return canvas

    def paste(self, canvas: np.ndarray, image: np.ndarray) -> None:
        """Draw `image` scaled to its rect, nearest-neighbour as an uninterpolated texture."""
        h, w = image.shape[:2]
        rect = self.image_rect(h, w)
        rows, cols = rect.pixels()
        r0, r1 = max(rows.start, 0), min(rows.stop, self.height)
        c0, c1 = max(cols.start, 0), min(cols.stop, self.width)
        if r0 >= r1 or c0 >= c1:
            return
        # the texel under each covered pixel's centre
        src_r = np.floor((np.arange(r0, r1) + 0.5 - rect.top) / (rect.bottom - rect.top) * h).astype(int)
        src_c = np.floor((np.arange(c0, c1) + 0.5 - rect.left) / (rect.right - rect.left) * w).astype(int)
        canvas[r0:r1, c0:c1] = image[np.clip(src_r, 0, h - 1)][:, np.clip(src_c, 0, w - 1)]

    def eye_inside(self, gaze_deg: tuple[float, float] | None, window_deg: float) -> bool:
        """Whether a gaze sample (degrees; None: no sample) is inside the fixation window."""
        if gaze_deg is None:
            return False
        fx, fy = self.fixation_position_deg
        return math.hypot(gaze_deg[0] - fx, gaze_deg[1] - fy) <= window_deg
