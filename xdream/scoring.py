"""The scoring rule: what a presentation's counts are worth, and an image's score.

One rule, used where a score is made (server/app.py, live, each generation)
and where it is made again (xdream/session_reader.py, from the journal, for
replay and export).  Replay compares the two bit for bit, so both call these
functions and nothing else does the arithmetic.

- A presentation's status: 'aborted' if the presenter said so; 'shown' if it
  was shown and the recorder counted it 'ok'; otherwise 'missing'.
- Its response on a channel: the spike count in the response window, minus the
  baseline window's count if `response.subtract_baseline`; NaN unless shown,
  or when the counts do not reach that channel.  Never 0 for a missing one.
  A thread's objective (xdream/objective.py) combines such per-channel responses
  (mean, difference, distance to a pattern); NaN if any of them is NaN.
- An image's score: the mean of its measured (non-NaN) responses over its
  repeats (re-queues show an image again), in presentation order; NaN if none
  was measured.  The reference mean: the mean of the reference images' scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from xdream.objective import Objective

REFERENCE_PREFIX = "ref/"   # image ids of reference images: ref/NAME


def status(shown_status: str | None, counts_status: str | None) -> str:
    """shown_status: the presenter's report ('shown' | 'aborted'), None if none came;
    counts_status: the recorder's ('ok' | ...), None if none came."""
    if shown_status is None:
        return "missing"
    if shown_status == "aborted":
        return "aborted"
    return "shown" if counts_status == "ok" else "missing"


def response(status: str, counts: Sequence[float] | None, baseline: Sequence[float] | None,
             channel: int | Objective, subtract_baseline: bool) -> float:
    """The count on one channel (minus its baseline if asked); NaN if not measured.
    Given a thread's Objective (xdream/objective.py), its expression over those counts."""
    if isinstance(channel, Objective):
        return channel.combine([response(status, counts, baseline, c, subtract_baseline)
                                for c in channel.channels])
    if status != "shown" or counts is None or channel >= len(counts):
        return math.nan
    value = counts[channel]
    baseline = baseline or ()
    if subtract_baseline and channel < len(baseline):
        value -= baseline[channel]
    return float(value)


def by_image(responses: Iterable[tuple[str, float]]) -> dict[str, list[float]]:
    """(image_id, response) of each presentation, in order -> image_id -> its responses."""
    out: dict[str, list[float]] = {}
    for image_id, value in responses:
        out.setdefault(image_id, []).append(value)
    return out


def mean_measured(values: Iterable[float]) -> float:
    """The plain mean of the non-NaN values, in order; NaN if there are none."""
    measured = [v for v in values if not math.isnan(v)]
    return float(np.mean(measured)) if measured else math.nan


def image_scores(responses: dict[str, list[float]], ids: Sequence[str]) -> np.ndarray:
    """The score of each of `ids` (NaN for an image never measured)."""
    return np.array([mean_measured(responses.get(i, [])) for i in ids])


def reference_mean(responses: dict[str, list[float]]) -> float:
    """The mean of the reference images' scores (NaN if none was measured)."""
    return mean_measured([mean_measured(v) for k, v in responses.items() if k.startswith(REFERENCE_PREFIX)])


@dataclass(frozen=True)
class GenerationStats:
    """A generation's scores summed up, as summary.json and the export have them."""
    mean: float          # of the measured scores; NaN if none
    max: float
    n_missing: int       # images with no measured repeat
    best: int            # index of the best score; -1 if none was measured

    @classmethod
    def of(cls, scores: np.ndarray) -> GenerationStats:
        measured = scores[~np.isnan(scores)]
        if not len(measured):
            return cls(math.nan, math.nan, int(np.isnan(scores).sum()), -1)
        return cls(float(measured.mean()), float(measured.max()), int(np.isnan(scores).sum()),
                   int(np.nanargmax(scores)))
