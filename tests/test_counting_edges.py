"""Window edges are counted on integer ticks: a spike on a window's first tick is in, one on its
end tick is out, at every onset, every sample rate and sample numbers past 2^31 and 2^32.

The float-seconds test is the defect as found (issue 13): the old counter compared
`times >= onset + 0.05` in float seconds, so at onset 0.9 s a spike exactly 1500 samples (50 ms
at 30 kHz) after onset fell in the baseline, and at 2.1 s a spike exactly at +200 ms was counted.
It fails on that code; the tick tests hold the counter to the integer truth of tests/edges.py.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recording_adapters.counting import SpikeCounter, count_in, offsets_in, window_ticks
from recording_adapters.events import RigEvents, round_ticks
from tests import edges


def batches_for(onsets, ticks, chans, rate, *, seconds=False, chunks=3):
    """The events in a few batches, each with the codes and spikes it covers and a watermark at its
    end, then a last watermark past every window (as ticks of `rate`, or float seconds)."""
    codes = list(zip(onsets, edges.codes_for(len(onsets))))
    end = onsets[-1] + 2 * edges.spacing(rate)
    cuts = np.linspace(onsets[0] - 10, end, chunks + 1).astype(np.int64)
    out = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        sel = (ticks >= lo) & (ticks < hi)
        ev = RigEvents([(t, c) for t, c in codes if lo <= t < hi], ticks[sel], chans[sel], int(hi), [],
                       Fraction(rate))
        out.append(ev.in_seconds() if seconds else ev)
    return out


def count(onsets, rate, *, seconds=False):
    ticks, chans = edges.edge_spikes(onsets, rate)
    pids = [f"p{i}" for i in range(len(onsets))]
    counter = SpikeCounter(edges.CHANNELS, (0.05, 0.2), (0.0, 0.05))
    counter.expect(0, list(zip(pids, edges.codes_for(len(onsets)))))
    reported = edges.run_counter(counter, batches_for(onsets, ticks, chans, rate, seconds=seconds), pids)
    edges.check_counts(reported, pids, onsets, ticks, chans, rate)


def test_the_helper_truth_puts_each_edge_spike_on_its_side():
    for rate in edges.RATES:
        onsets = edges.onsets_from(1000, 3, rate)
        ticks, chans = edges.edge_spikes(onsets, rate)
        w, b = edges.expected_edge_counts(3)
        assert edges.truth(onsets, ticks, chans, rate) == w
        assert edges.truth(onsets, ticks, chans, rate, edges.BASELINE_MS) == b


def test_float_seconds_from_sample_numbers_count_the_edges_right_at_0_9_and_2_1_s():
    """The issue's two onsets at 30 kHz, handed to the counter as float seconds (sample / rate),
    the form every adapter passed before: fails on the old counter."""
    count([27000, 63000], 30000, seconds=True)


@settings(max_examples=60, deadline=None, database=None)
@given(rate=st.sampled_from(edges.RATES), first=st.integers(1, 2**34), n=st.integers(1, 12))
def test_float_seconds_from_sample_numbers_count_the_edges_right(rate, first, n):
    count(edges.onsets_from(first, n, rate), rate, seconds=True)


@settings(max_examples=80, deadline=None, database=None)
@given(rate=st.sampled_from(edges.RATES), first=st.integers(1, 2**40), n=st.integers(1, 12))
def test_ticks_count_the_edges_right_at_any_onset_rate_and_sample_number(rate, first, n):
    count(edges.onsets_from(first, n, rate), rate)


def test_ticks_count_the_edges_right_past_2_31_and_2_32():
    for rate in edges.RATES:
        for first in edges.LARGE_TICKS:
            count(edges.onsets_from(first, 3, rate), rate)
        count([round(t * rate) for t in edges.SPECIAL_ONSETS_S], rate)


def test_window_ticks_are_exact_rationals():
    assert window_ticks((0.05, 0.2), Fraction(30000)) == (1500, 6000)
    assert window_ticks((0.05, 0.2), Fraction(25000)) == (1250, 5000)
    assert window_ticks(("0.0333", 0.1), Fraction(30000)) == (999, 3000)   # 999.0 exactly: not 1000
    assert window_ticks((0.00001, 0.2), Fraction(30000)) == (1, 6000)      # 0.3 of a tick: from tick 1


def test_count_in_and_offsets_in_are_half_open_on_ticks():
    ticks = np.array([99, 100, 101, 199, 200], dtype=np.int64)
    chans = np.array([0, 0, 1, 1, 0])
    assert count_in(ticks, chans, 2, 100, 200).tolist() == [1, 2]
    offs = offsets_in(ticks, chans, 2, 100, 100, 200)
    assert [o.tolist() for o in offs] == [[0], [1, 99]]


def test_round_ticks_gives_back_the_sample_past_2_32():
    for rate in edges.RATES:
        samples = np.array([0, 1, 2**31 + 1, 2**32 + 3, 2**40 + 7], dtype=np.int64)
        assert round_ticks(samples / rate, Fraction(rate)).tolist() == samples.tolist()


def test_a_change_of_tick_rate_restarts_the_clock_and_loses_no_count_silently():
    c = SpikeCounter(1)
    c.expect(0, [("p0", 1), ("p1", 2)])
    out = c.add(RigEvents([(30000, 1)], np.array([31500]), np.array([0]), 32000, [], Fraction(30000)))
    assert out == []
    out = c.add(RigEvents([(80000, 2)], np.array([82000]), np.array([0]), 100000, [], Fraction(40000)))
    assert {o.pid: o.status for o in out} == {"p0": "missing", "p1": "ok"}
