"""Displays the presenter draws on: a PsychoPy window, or a headless stand-in.

Both count durations in frames, draw images centred at their own pixel size
on a gray background, and can read back what they drew on the back buffer
(for a simulated rig's 'eye').
"""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)

GRAY = 128


class HeadlessDisplay:
    """No window: 'flips' are timestamps, the canvas is composed in numpy."""

    def __init__(self, window_size: tuple[int, int], frame_rate_hz: float):
        self.width, self.height = window_size
        self.frame_period = 1.0 / frame_rate_hz
        self.frame_index = 0
        self._current: np.ndarray | None = None

    def prepare(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return images

    def draw(self, handle: np.ndarray | None) -> None:
        self._current = handle

    def capture(self) -> np.ndarray:
        canvas = np.full((self.height, self.width, 3), GRAY, dtype=np.uint8)
        if self._current is not None:
            h, w, _ = self._current.shape
            top, left = (self.height - h) // 2, (self.width - w) // 2
            canvas[top:top + h, left:left + w] = self._current
        return canvas

    def flip(self) -> float:
        self.frame_index += 1
        self._current = None
        return time.perf_counter()

    def dropped_frames(self) -> int:
        return 0

    def close(self) -> None:
        pass


class PsychoPyDisplay:
    """A real PsychoPy window (pyglet); units are pixels, the background gray."""

    def __init__(self, window_size: tuple[int, int], frame_rate_hz: float, fullscreen: bool = False):
        from psychopy import core, visual  # only the windowed presenter needs psychopy
        self._core = core
        self._visual = visual
        self.win = visual.Window(size=list(window_size), units="pix", color=[0, 0, 0], colorSpace="rgb",
                                 fullscr=fullscreen, allowGUI=False, winType="pyglet")
        self.frame_period = 1.0 / frame_rate_hz
        measured = self.win.getActualFrameRate(nIdentical=10, nMaxFrames=120, nWarmUpFrames=10)
        if measured is None or abs(measured - frame_rate_hz) > 0.1 * frame_rate_hz:
            log.warning("measured refresh %s Hz differs from the configured %.1f Hz; durations are "
                        "counted in frames of the configured rate", measured, frame_rate_hz)
        self.win.recordFrameIntervals = True
        self.frame_index = 0
        self._flip_time = 0.0
        self._intervals_seen = 0

    def prepare(self, images: list[np.ndarray]) -> list:
        from PIL import Image
        # one ImageStim per image, made before the block starts: nothing is created between flips
        return [self._visual.ImageStim(self.win, image=Image.fromarray(np.asarray(img)), units="pix",
                                       size=(img.shape[1], img.shape[0]), interpolate=False)
                for img in images]

    def draw(self, handle) -> None:
        if handle is not None:
            handle.draw()

    def capture(self) -> np.ndarray:
        # Under Xvfb only the back buffer can be read; read it before the flip.
        frame = self.win.getMovieFrame(buffer="back")
        self.win.movieFrames.clear()  # getMovieFrame keeps every frame for a movie otherwise
        return np.asarray(frame.convert("RGB"))

    def flip(self) -> float:
        self.win.callOnFlip(self._stamp)
        self.win.flip()
        self.frame_index += 1
        return self._flip_time

    def _stamp(self) -> None:
        self._flip_time = self._core.getTime()

    def dropped_frames(self) -> int:
        """Frames since the last call that took more than 1.5 refresh periods."""
        intervals = self.win.frameIntervals[self._intervals_seen:]
        self._intervals_seen = len(self.win.frameIntervals)
        return int(sum(1 for dt in intervals if dt > 1.5 * self.frame_period))

    def close(self) -> None:
        self.win.close()
