"""Displays the presenter draws on: a PsychoPy window, or a headless stand-in.

Both draw the same frame (gray background, the image at its size and position
in degrees, the fixation point, the photodiode patch) from one Layout, count
durations in frames, run callbacks right after a flip (PsychoPy's
`win.callOnFlip`), and can read back what they drew on the back buffer (for a
simulated rig's 'eye').

    display.draw(handle, fixation=True, photodiode_white=True)
    display.call_on_flip(markers.send, code)
    flip = display.flip()          # FlipInfo(index, time, interval)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stimulus_client.config import PresenterConfig
from stimulus_client.geometry import Layout
from stimulus_client.keys import KeyboardKeys, KeySource, NoKeys
from xdream.errors import ConfigError

log = logging.getLogger(__name__)

GRAY = 128  # the default background


@dataclass(frozen=True)
class FlipInfo:
    index: int              # flips since the display opened, this one included
    time: float             # when it happened, on the presenter's clock (s)
    interval: float         # since the previous flip (s): how long the previous frame was on screen


class _Display:
    layout: Layout
    frame_period: float
    frame_index: int = 0
    measured_hz: float | None = None

    def __init__(self) -> None:
        self._on_flip: list[tuple[Callable[..., object], tuple]] = []

    def call_on_flip(self, fn, *args) -> None:
        """Run fn(*args) right after the next flip (the marker of an onset frame)."""
        self._on_flip.append((fn, args))

    def _run_on_flip(self) -> None:
        calls, self._on_flip = self._on_flip, []
        for fn, args in calls:
            fn(*args)

    def keys(self, names: list[str], backend: str = "auto") -> KeySource:
        return NoKeys()

    def now(self) -> float:
        """The presenter's clock (s): the one flip times are stamped with."""
        return time.perf_counter()

    def close(self) -> None:
        raise NotImplementedError


class HeadlessDisplay(_Display):
    """No window: frames are composed in numpy only when captured; flips are not paced.

    Its clock is the flip count times the nominal refresh period, so onsets,
    intervals and the simulated eye's times are those of an ideal display."""

    def __init__(self, cfg: PresenterConfig):
        super().__init__()
        self.layout = Layout(cfg)
        self.frame_period = 1.0 / cfg.monitor.refresh_hz
        self._t0 = time.perf_counter()
        self._drawn: tuple = (None, False, False)
        self._fixation_mask = self.layout.fixation_mask() if self.layout.fixation_enabled else None
        self._canvas = np.empty((self.layout.height, self.layout.width, 3), dtype=np.uint8)

    def prepare(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [np.ascontiguousarray(img) for img in images]

    def release(self, handles) -> None:
        pass

    def draw(self, handle: np.ndarray | None, fixation: bool = True, photodiode_white: bool = False) -> None:
        self._drawn = (handle, fixation, photodiode_white)

    def capture(self) -> np.ndarray:
        image, fixation, white = self._drawn
        return self.layout.compose(image, fixation, white, canvas=self._canvas.copy(),
                                   fixation_mask=self._fixation_mask)

    def flip(self) -> FlipInfo:
        self.frame_index += 1
        self._drawn = (None, False, False)
        self._run_on_flip()
        return FlipInfo(self.frame_index, self._t0 + self.frame_index * self.frame_period, self.frame_period)

    def close(self) -> None:
        pass


class PsychoPyDisplay(_Display):
    """A PsychoPy window (pyglet) on a Monitor built from the config; units 'deg'."""

    def __init__(self, cfg: PresenterConfig):
        super().__init__()
        from psychopy import core, monitors, visual  # only the windowed presenter needs psychopy
        self._core, self._visual = core, visual
        m = cfg.monitor
        self.layout = layout = Layout(cfg)
        self.frame_period = 1.0 / m.refresh_hz
        if m.calibration:
            # the saved Monitor Center calibration: its gamma goes to the window's lookup table
            # (its width, distance and size are already in cfg.monitor: monitor_center.apply_saved)
            self.monitor = monitors.Monitor(m.calibration, verbose=False, autoLog=False)
        else:
            # a temporary Monitor (not saved): the rig's geometry lives in the presenter config
            self.monitor = monitors.Monitor(m.name, width=m.width_cm, distance=m.distance_cm,
                                            verbose=False, autoLog=False)
            self.monitor.setSizePix(list(m.resolution))
        bg = [layout.background] * 3
        before = _pyglet_windows()
        try:
            self.win = visual.Window(size=list(m.resolution), fullscr=m.fullscreen, screen=m.screen,
                                     monitor=self.monitor, units="deg", color=bg, colorSpace="rgb255",
                                     allowGUI=not m.fullscreen, winType="pyglet", waitBlanking=True,
                                     checkTiming=False, autoLog=False)
        except OSError as exc:
            for half_made in _pyglet_windows() - before:  # left open, it kills the process at exit
                half_made.close()
            if m.calibration and "gamma" in str(exc).lower():
                raise ConfigError(f"the gamma of the saved monitor {m.calibration!r} could not be set on this "
                                  f"display's hardware lookup table ({exc}); calibrate on a display whose "
                                  f"driver allows it, or name no calibration") from None
            raise
        self.win.mouseVisible = not m.fullscreen
        # the fixed stimuli are made once; each frame only draws them
        self.fixation = None
        if layout.fixation_enabled:
            self.fixation = visual.Circle(self.win, radius=layout.fixation_radius_deg, units="deg",
                                          pos=layout.fixation_position_deg, fillColor=layout.fixation_color,
                                          lineColor=None, colorSpace="rgb255", edges=64, interpolate=False,
                                          autoLog=False)
        self.photodiode = None
        if layout.photodiode_enabled:
            s = layout.photodiode_size
            pos = layout.photodiode_center_pix()
            self.photodiode = {white: visual.Rect(self.win, width=s, height=s, units="pix", pos=pos,
                                                  fillColor=[255 * white] * 3, lineColor=None,
                                                  colorSpace="rgb255", interpolate=False, autoLog=False)
                               for white in (False, True)}
        self.measured_hz = self.measure_refresh()
        self.win.recordFrameIntervals = True
        self.frame_index = 0
        self._last_flip = self._core.getTime()
        self._flip_time = 0.0

    def measure_refresh(self) -> float | None:
        return self.win.getActualFrameRate(nIdentical=10, nMaxFrames=120, nWarmUpFrames=10, threshold=1)

    def keys(self, names: list[str], backend: str = "auto") -> KeySource:
        return KeyboardKeys(names, backend)

    def now(self) -> float:
        return self._core.getTime()

    def prepare(self, images: list[np.ndarray]) -> list:
        """One ImageStim per image, made before the block starts: nothing is created between flips."""
        from PIL import Image
        stims = []
        for img in images:
            h, w = img.shape[:2]
            size_deg = self.layout.image_size_deg(h, w)
            if size_deg is None:  # the image's own pixel size, at the configured position
                x, y = self.layout.deg2pix(list(self.layout.position_deg))
                kwargs = dict(units="pix", size=(w, h), pos=(float(x), float(y)))
            else:
                kwargs = dict(units="deg", size=size_deg, pos=self.layout.position_deg)
            stims.append(self._visual.ImageStim(self.win, image=Image.fromarray(np.asarray(img)),
                                                interpolate=False, autoLog=False, **kwargs))
        return stims

    def release(self, handles) -> None:
        handles.clear()  # drops the textures; PsychoPy frees them with the stims
        del self.win.frameIntervals[:]  # keeps a long session's memory flat

    def draw(self, handle, fixation: bool = True, photodiode_white: bool = False) -> None:
        if handle is not None:
            handle.draw()
        if fixation and self.fixation is not None:
            self.fixation.draw()
        if self.photodiode is not None:
            self.photodiode[bool(photodiode_white)].draw()

    def capture(self) -> np.ndarray:
        # Under Xvfb only the back buffer can be read; read it before the flip.
        frame = self.win.getMovieFrame(buffer="back")
        self.win.movieFrames.clear()  # getMovieFrame keeps every frame for a movie otherwise
        return np.asarray(frame.convert("RGB"))

    def flip(self) -> FlipInfo:
        n_intervals = len(self.win.frameIntervals)
        self.win.callOnFlip(self._after_flip)
        self.win.flip()
        t = self._flip_time
        if len(self.win.frameIntervals) > n_intervals:
            interval = self.win.frameIntervals[-1]
        else:  # PsychoPy skips the first interval after recording is turned on
            interval = t - self._last_flip
        self._last_flip = t
        return FlipInfo(self.frame_index, t, interval)

    def _after_flip(self) -> None:
        self._flip_time = self._core.getTime()  # the onset stamp, right after the buffer swap
        self.frame_index += 1
        self._run_on_flip()

    def close(self) -> None:
        self.win.close()


def _pyglet_windows() -> set:
    """The pyglet windows open in this process (pyglet as PsychoPy's window backend loaded it)."""
    app = sys.modules.get("pyglet.app")
    return set(getattr(app, "windows", ()))


def open_display(cfg: PresenterConfig, headless: bool) -> _Display:
    return HeadlessDisplay(cfg) if headless else PsychoPyDisplay(cfg)
