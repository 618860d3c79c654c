"""Eye-position sources for fixation control.

    EyeSource        the interface a tracker implements
     +-- NoEye       no fixation control: every trial starts at once, nothing aborts
     +-- SimulatedEye  a scripted eye for tests and dry runs
     +-- iohub_eye.IoHubEye  a real tracker (EyeLink, Tobii, GazePoint; MouseGaze) through PsychoPy's ioHub

The presenter asks for the gaze once per frame, before drawing it, with `t`:
the time that frame will appear on the presenter's frame clock (flips times
the nominal refresh period, in seconds).  A real tracker ignores `t` and
returns its newest sample, converted to degrees of visual angle (x right,
y up, 0 at the screen's centre); `None` means no valid sample (a blink, a lost
pupil) and counts as outside the fixation window.  To plug in another tracker
(an analog eye signal, ...), subclass EyeSource, implement `gaze` (and
`calibrate`, `validate`, `close`) and add it to eye_sources.make_eye.
"""

from __future__ import annotations

import numpy as np

from stimulus_client.config import EyeConfig

AWAY_DEG = (30.0, 0.0)  # where the simulated eye looks during a break: well outside any window


class EyeSource:
    enabled = True
    can_calibrate = False
    can_validate = False

    def describe(self) -> dict:
        return {"source": type(self).__name__}

    def calibrate(self) -> dict:
        """The tracker's setup (calibration / validation); blocks until it is done."""
        raise NotImplementedError(f"{type(self).__name__} has no calibration")

    def validate(self) -> dict:
        """A validation of the tracker (targets, errors in degrees); blocks until it is done."""
        raise NotImplementedError(f"{type(self).__name__} has no validation")

    def begin_trial(self, trial: int, t: float, duration_s: float) -> None:
        """A trial's first frame will appear at `t`; the trial lasts `duration_s` if not broken."""

    def end_trial(self) -> None:
        """The trial is over (completed or aborted)."""

    def gaze(self, t: float) -> tuple[float, float] | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NoEye(EyeSource):
    """No tracker: the presenter skips the fixation period and never aborts."""
    enabled = False

    def gaze(self, t: float) -> tuple[float, float] | None:
        return (0.0, 0.0)


class SimulatedEye(EyeSource):
    """Looks at the fixation point, except after a break, for `away_ms`.

    Breaks come from a script (trial number, ms after that trial's first
    onset) and, for other trials, with `break_probability` at a uniform time
    inside the trial, drawn from a generator seeded with `seed`: the same
    config gives the same breaks on every run."""

    def __init__(self, target_deg: tuple[float, float], *, seed: int = 0, break_probability: float = 0.0,
                 breaks: dict[int, float] | None = None, away_ms: float = 300.0):
        self.target = (float(target_deg[0]), float(target_deg[1]))
        self.rng = np.random.default_rng(seed)
        self.break_probability = break_probability
        self.breaks = dict(breaks or {})
        self.away_s = away_ms / 1000.0
        self._away_from: float | None = None  # the current or next break's start (frame clock)
        self._away_until = -np.inf

    def begin_trial(self, trial: int, t: float, duration_s: float) -> None:
        draw = self.rng.random()  # drawn for every trial, so scripted breaks do not shift the others
        at = self.rng.uniform(0.0, duration_s)
        if trial in self.breaks:
            self._away_from = t + self.breaks[trial] / 1000.0
        elif draw < self.break_probability:
            self._away_from = t + at
        else:
            self._away_from = None

    def end_trial(self) -> None:
        self._away_from = None  # a break scripted after the trial's end does not happen

    def gaze(self, t: float) -> tuple[float, float] | None:
        if self._away_from is not None and t >= self._away_from - 1e-9:
            # the first sample at or after the break sees it, however short away_ms is
            self._away_until = max(self._away_from + self.away_s, t + 1e-6)
            self._away_from = None
        if t < self._away_until - 1e-9:
            return AWAY_DEG
        return self.target


def make_scripted_eye(cfg: EyeConfig, fixation_deg: tuple[float, float]) -> EyeSource:
    if cfg.source == "simulated":
        return SimulatedEye(fixation_deg, seed=cfg.seed, break_probability=cfg.break_probability,
                            breaks={b.trial: b.at_ms for b in cfg.breaks}, away_ms=cfg.away_ms)
    return NoEye()
