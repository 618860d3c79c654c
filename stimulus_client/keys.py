"""Key sources: the experimenter's keyboard, read between flips.

    KeySource      the interface: `poll()` returns the names of keys pressed since the last call
     +-- NoKeys    headless: no keyboard (Ctrl-C still quits cleanly)
     +-- PsychoPyKeys  psychopy.event.getKeys on the presenter's window

Tests drive the real PsychoPyKeys by dispatching pyglet key events on the
window (what a key press does), or hand the presenter their own KeySource.
"""

from __future__ import annotations


class KeySource:
    def poll(self) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NoKeys(KeySource):
    def poll(self) -> list[str]:
        return []


class PsychoPyKeys(KeySource):
    """Keys typed into the PsychoPy window (the stimulus PC's keyboard, window focused)."""

    def __init__(self, keys: list[str]):
        from psychopy import event
        self._event = event
        self.keys = list(keys)
        event.clearEvents(eventType="keyboard")

    def poll(self) -> list[str]:
        # getKeys also pumps the window's events, which keeps the OS from calling it unresponsive
        return self._event.getKeys(keyList=self.keys)
