"""The one scoring rule (xdream.scoring), and the two places that apply it: the
server's BlockProgress (live) and the session reader's Presentation (from the
journal) must give the same numbers, bit for bit, for every kind of report."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest

from server.references import builtin_references
from server.scheduler import BlockProgress, Scheduler
from xdream import protocol, scoring
from xdream.session_reader import Presentation as ReadPresentation


def test_status_needs_a_shown_report_and_ok_counts():
    assert scoring.status(None, None) == "missing"
    assert scoring.status(None, "ok") == "missing"          # counted but never reported shown
    assert scoring.status("aborted", "ok") == "aborted"     # an abort wins over counts
    assert scoring.status("shown", None) == "missing"
    assert scoring.status("shown", "missing") == "missing"
    assert scoring.status("shown", "ok") == "shown"


def test_a_response_is_nan_unless_measured_never_zero():
    assert scoring.response("shown", [3, 1], [1, 0], 0, False) == 3.0
    assert scoring.response("shown", [3, 1], [1, 0], 0, True) == 2.0
    assert scoring.response("shown", [3, 1], [], 0, True) == 3.0      # no baseline counted: the count
    assert math.isnan(scoring.response("shown", [3, 1], [1, 0], 2, False))   # no such channel
    assert math.isnan(scoring.response("aborted", [3, 1], [1, 0], 0, False))
    assert math.isnan(scoring.response("missing", None, None, 0, False))


def test_an_image_scores_the_mean_of_its_measured_repeats_in_order():
    responses = scoring.by_image([("a", 1.0), ("ref/x", 4.0), ("a", math.nan), ("a", 2.0), ("b", math.nan),
                                  ("ref/y", 8.0)])
    a = responses["a"]
    assert len(a) == 3 and a[0] == 1.0 and math.isnan(a[1]) and a[2] == 2.0   # every repeat, in order
    scores = scoring.image_scores(responses, ["a", "b", "c"])
    assert scores[0] == 1.5 and math.isnan(scores[1]) and math.isnan(scores[2])
    assert scoring.reference_mean(responses) == 6.0
    assert math.isnan(scoring.reference_mean({"a": [1.0]}))
    # the plain float mean: what the journal holds and replay compares bit for bit
    values = [0.1, 0.2, 0.7]
    assert scoring.mean_measured(values + [math.nan]) == float(np.mean(values))


def test_generation_stats():
    stats = scoring.GenerationStats.of(np.array([1.0, math.nan, 3.0, 2.0]))
    assert (stats.mean, stats.max, stats.n_missing, stats.best) == (2.0, 3.0, 1, 2)
    none = scoring.GenerationStats.of(np.array([math.nan, math.nan]))
    assert math.isnan(none.mean) and math.isnan(none.max) and none.n_missing == 2 and none.best == -1


CASES = [   # (shown status or None, counts status or None, counts, baseline)
    ("shown", "ok", [3.0, 1.5], [1.0, 0.25]),
    ("shown", "ok", [7, 2], []),
    ("shown", "ok", [0.1], [0.3]),          # one channel only: channel 1 is NaN
    ("aborted", "ok", [3.0, 1.0], [1.0, 0.0]),
    ("aborted", None, [], []),
    ("shown", None, [], []),
    (None, "ok", [4.0, 4.0], [0.0, 0.0]),
    ("shown", "missing", [], []),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("subtract", [False, True])
def test_the_server_and_the_session_reader_score_alike(case, subtract):
    shown_status, counts_status, values, baseline = case
    block = Scheduler(builtin_references(1, 8), np.random.default_rng(0)).build_block(
        0, {"a": (["a/0"], np.zeros((1, 8, 8, 3), np.uint8))})
    progress, pid = BlockProgress(block), block.presentations[0].pid
    shown = counts = None
    if shown_status is not None:
        shown = protocol.Shown(0, pid, shown_status, 1.0 if shown_status == "shown" else None, 6)
        progress.record_shown(shown)
    if counts_status is not None:
        counts = protocol.Counts(0, pid, counts_status, list(values), list(baseline), 2.0)
        progress.record_counts(counts)
    read = ReadPresentation(pid, 0, 0, 1, "generated", "a", "a/0", "", 0.0,
                            shown=asdict(shown) if shown else None, counts=asdict(counts) if counts else None)
    assert progress.status(pid) == read.status
    for channel in (0, 1):
        live, again = progress.response(pid, channel, subtract), read.response(channel, subtract)
        assert (math.isnan(live) and math.isnan(again)) or live == again
