"""Key sources: the experimenter's keyboard, read between flips.

    KeySource      the interface: `poll()` returns the names of keys pressed since the last call
     +-- NoKeys    headless: no keyboard (Ctrl-C still quits cleanly)
     +-- KeyboardKeys  psychopy.hardware.keyboard.Keyboard

psychopy.hardware.keyboard picks a backend once per process (`keys.backend`,
"auto" leaves the choice to PsychoPy: ioHub's keyboard when an ioHub server
runs, as it does for an ioHub eye tracker; else psychtoolbox's when it loads;
else psychopy.event on the window).  The backends disagree on two things that
this module evens out (psychopy/hardware/keyboard.py, PsychoPy 2026.2.5):
- `getKeys(waitRelease=False)` leaves out a press whose release came in the same
  dispatch (ioHub, ptb), and `waitRelease=True` never returns a press from the
  event backend, which has no releases: both are asked, and a press that was
  already reported is not reported again when its release arrives;
- the event backend names a key `[name, time]` (it asks event.getKeys with
  timeStamped=True and keeps the whole item as the name).

Tests press keys through the X server's XTEST extension (tests/xinput.py), which
every backend sees as it sees a real keyboard.
"""

from __future__ import annotations

import collections


class KeySource:
    def poll(self) -> list[str]:
        raise NotImplementedError

    def clear(self) -> None:
        """Forget keys pressed so far (after a tracker's setup, whose keys are its own)."""
        self.poll()

    def close(self) -> None:
        pass


class NoKeys(KeySource):
    def poll(self) -> list[str]:
        return []


class KeyboardKeys(KeySource):
    """Keys from psychopy.hardware.keyboard (the stimulus PC's keyboard)."""

    def __init__(self, keys: list[str], backend: str = "auto"):
        from psychopy.hardware import keyboard
        self.keys = list(keys)
        self.kb = keyboard.Keyboard(backend="" if backend == "auto" else backend)
        self.backend = self.kb.getBackend()
        self._reported: collections.deque = collections.deque(maxlen=64)  # presses already returned
        self.kb.clearEvents()

    def poll(self) -> list[str]:
        # getKeys also pumps the window's events (event backend), which keeps the OS from
        # calling the window unresponsive
        presses = list(self.kb.getKeys(waitRelease=False, clear=True))
        presses += self.kb.getKeys(waitRelease=True, clear=True)
        names = []
        for press in presses:
            if any(press is seen for seen in self._reported):
                continue
            self._reported.append(press)
            name = press.name[0] if isinstance(press.name, (list, tuple)) else press.name
            if name in self.keys:
                names.append(name)
        return names

    def clear(self) -> None:
        self.kb.clearEvents()
        self.poll()
