"""The simulated rigs' clock (simulators/rig.py, simulators/replay_rig.py): the presenter's
frame count times the nominal frame period, so that an unpaced headless presenter still
gives a display's timeline, shifted so that it never goes back."""

from __future__ import annotations

import math

from xdream import protocol

IDLE_GAP_S = 0.5   # rig time that passes when the screen goes idle between blocks
RATE_HZ = 30000    # the simulated rigs' sample clock: events go out as its sample numbers, as a real rig's do


class RigClock:
    def __init__(self):
        self.offset = 0.0         # added to presenter frame time: keeps rig time monotonic
        self.last_t = -math.inf   # a rig may move it on (an idle screen: the clock runs on)

    def time_of(self, body: protocol.ScreenFrame) -> float:
        t = body.frame_index * body.frame_period + self.offset
        if t < self.last_t - 1e-9:  # a restarted presenter or an idle gap: shift, never go back
            self.offset += self.last_t - t
            t = self.last_t
        self.last_t = t
        return t
