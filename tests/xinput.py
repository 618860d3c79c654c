"""Input the way the X server gets it from hardware: XTEST fake key and pointer events.

XTEST (python-xlib's Xlib.ext.xtest, a PsychoPy dependency) injects events at the
X server's input layer, so every reader sees them as it sees a real keyboard or
mouse: pyglet's window (psychopy.event), ioHub's keyboard and mouse devices (which
listen through the RECORD extension, psychopy/iohub/devices/pyXHook.py), and so
ioHub's MouseGaze eye tracker, whose gaze is the pointer.  Xvfb has both
extensions.
"""

from __future__ import annotations

import os

X_KEYSYMS = {"escape": "Escape", "space": "space", "return": "Return"}  # PsychoPy name -> X keysym name


class XInput:
    def __init__(self, display: str | None = None):
        from Xlib import display as xdisplay
        from Xlib.ext import xtest
        self._xtest = xtest
        self.d = xdisplay.Display(display or os.environ["DISPLAY"])
        if self.d.query_extension("XTEST") is None:
            raise RuntimeError("the X server has no XTEST extension")

    def move(self, x: int, y: int) -> None:
        """The pointer to (x, y) on the root window (the desktop's pixels, y down)."""
        from Xlib import X
        self._xtest.fake_input(self.d, X.MotionNotify, x=int(x), y=int(y))
        self.d.sync()

    def press(self, name: str) -> None:
        """A key down and up; `name` as PsychoPy names keys ('p', 'escape', 'space')."""
        from Xlib import X, XK
        keysym = XK.string_to_keysym(X_KEYSYMS.get(name, name))
        code = self.d.keysym_to_keycode(keysym)
        if not code:
            raise ValueError(f"no key code for {name!r}")
        self._xtest.fake_input(self.d, X.KeyPress, code)
        self.d.sync()
        self._xtest.fake_input(self.d, X.KeyRelease, code)
        self.d.sync()

    def point_at_window(self, win) -> None:
        """The pointer over a PsychoPy window's centre: with no window manager (Xvfb) the
        keyboard focus follows the pointer."""
        x, y = win.winHandle.get_location()
        w, h = win.size
        self.move(x + w // 2, y + h // 2)

    def grab(self, x: int, y: int, w: int, h: int):
        """What the X server shows in that rectangle of the desktop, as an (h, w, 3) RGB uint8 array
        (the pixels a person, or a simulated subject, would see; a 24-bit TrueColor screen)."""
        import numpy as np
        from Xlib import X
        image = self.d.screen().root.get_image(int(x), int(y), int(w), int(h), X.ZPixmap, 0xFFFFFFFF)
        pixels = np.frombuffer(image.data, dtype=np.uint8).reshape(int(h), int(w), 4)   # B, G, R, pad
        return pixels[:, :, 2::-1].copy()

    def close(self) -> None:
        self.d.close()
