"""The aligner's and counter's edge cases: each presentation ends counted
correctly or reported missing, and every anomaly is logged."""

import logging

import numpy as np
import pytest

from recording_adapters.counting import SpikeCounter
from recording_adapters.events import RigEvents


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def ev(codes=(), spikes=(), watermark=None, photodiode=()):
    return RigEvents(list(codes), np.array([t for t, _ in spikes], dtype=float),
                     np.array([c for _, c in spikes], dtype=int), watermark, list(photodiode))


def one_spike_per_window(onsets):
    """A spike 0.1 s after each onset (in the response window), one at +0.02 (baseline)."""
    return [(t + 0.1, 0) for t in onsets] + [(t + 0.02, 0) for t in onsets]


def run(counter, batches):
    out = []
    for b in batches:
        out += counter.add(b)
    return {c.pid: c for c in out}


@pytest.fixture
def clock():
    return FakeClock()


def counter(clock, **kw):
    c = SpikeCounter(1, clock=clock, **kw)
    c.expect(0, [("p0", 1), ("p1", 2), ("p2", 3), ("p3", 4)])
    return c


def test_all_codes_in_order_all_counted(clock):
    c = counter(clock)
    onsets = [1.0, 2.0, 3.0, 4.0]
    out = run(c, [ev([(t, k) for t, k in zip(onsets, [1, 2, 3, 4])], one_spike_per_window(onsets), 5.0)])
    assert {p: (o.status, o.counts, o.baseline, o.onset) for p, o in out.items()} == {
        f"p{i}": ("ok", [1.0], [1.0], t) for i, t in enumerate(onsets)}


def test_missing_code_is_reported_missing_and_the_rest_align(clock, caplog):
    c = counter(clock)
    onsets = {"p0": 1.0, "p2": 3.0, "p3": 4.0}     # p1's code (2) never recorded
    out = run(c, [ev([(1.0, 1), (3.0, 3), (4.0, 4)], one_spike_per_window(onsets.values()), 5.0)])
    assert out["p1"].status == "missing" and out["p1"].counts == []
    for pid, t in onsets.items():
        assert out[pid].status == "ok" and out[pid].onset == t and out[pid].counts == [1.0]
    assert c.aligner.stats["missing_code"] == 1
    assert "code 2 never arrived" in caplog.text


def test_extra_code_is_dropped_and_nothing_is_skipped(clock, caplog):
    c = counter(clock)
    onsets = [1.0, 2.0, 3.0, 4.0]
    # a spurious 3 (the code of p2, two places ahead) before p1's code
    codes = [(1.0, 1), (1.5, 3), (2.0, 2), (3.0, 3), (4.0, 4)]
    out = run(c, [ev(codes, one_spike_per_window(onsets), 5.0)])
    assert [out[f"p{i}"].onset for i in range(4)] == onsets
    assert all(o.status == "ok" and o.counts == [1.0] for o in out.values())
    assert c.aligner.stats["extra_code"] == 1 and c.aligner.stats["missing_code"] == 0
    assert "event code 3 at 1.5000 s dropped" in caplog.text


def test_unknown_extra_code_is_dropped_after_its_age(clock, caplog):
    c = counter(clock, early_code_max_age_s=2.0)
    onsets = [1.0, 2.0, 3.0, 4.0]
    codes = [(1.0, 1), (1.5, 77), (2.0, 2), (3.0, 3), (4.0, 4)]
    out = run(c, [ev(codes, one_spike_per_window(onsets), 5.0)])
    assert [out[f"p{i}"].onset for i in range(4)] == onsets
    assert c.unmatched_codes == 1 and "event code 77 at 1.5000 s dropped" in caplog.text


def test_code_arriving_twice_is_counted_once(clock, caplog):
    c = counter(clock)
    onsets = [1.0, 2.0, 3.0, 4.0]
    codes = [(1.0, 1), (1.004, 1), (2.0, 2), (3.0, 3), (4.0, 4)]
    out = run(c, [ev(codes, one_spike_per_window(onsets), 5.0)])
    assert [out[f"p{i}"].onset for i in range(4)] == onsets
    assert all(o.counts == [1.0] for o in out.values())
    assert c.aligner.stats["duplicate_code"] == 1 and "arrived twice" in caplog.text


def test_clock_jump_back_marks_open_windows_missing_and_goes_on(clock, caplog):
    c = counter(clock)
    # p0 counted; p1's code at 2.0, then the rig restarts (clock back to 0) before its window ends
    out = run(c, [ev([(1.0, 1)], one_spike_per_window([1.0]), 1.5),
                  ev([(2.0, 2)], [(2.02, 0)], 2.05),
                  ev([(0.5, 3), (1.5, 4)], one_spike_per_window([0.5, 1.5]), 2.5)])
    assert out["p0"].status == "ok" and out["p0"].counts == [1.0]
    assert out["p1"].status == "missing"
    assert out["p2"].status == "ok" and out["p2"].onset == 0.5 and out["p2"].counts == [1.0]
    assert out["p3"].status == "ok" and out["p3"].onset == 1.5 and out["p3"].counts == [1.0]
    assert c.aligner.stats["clock_jumps"] == 1 and "clock jumped back" in caplog.text


def test_watermark_trailing_a_delivered_code_is_no_clock_jump(clock, caplog):
    """A code may come before the watermark has caught up with it (Open Ephys hands on
    a code with its data message, the watermark trails the data by 20 ms)."""
    c = counter(clock)
    out = run(c, [ev([(1.0, 1)], [(1.02, 0)], 0.98),
                  ev([], [], 0.99),                          # still behind the code at 1.0
                  ev([], one_spike_per_window([1.0])[:1], 1.3),
                  ev([(2.0, 2)], one_spike_per_window([2.0]), 1.98),
                  ev([], [], 1.99),
                  ev([], [], 2.5)])
    assert {p: (o.status, o.counts) for p, o in out.items()} == {"p0": ("ok", [1.0]), "p1": ("ok", [1.0])}
    assert c.aligner.stats["clock_jumps"] == 0 and "clock jumped back" not in caplog.text


def test_code_that_never_arrives_goes_missing_after_the_timeout(clock, caplog):
    c = counter(clock, timeout_s=10.0)
    out = run(c, [ev([(1.0, 1), (2.0, 2)], one_spike_per_window([1.0, 2.0]), 3.0)])
    assert set(out) == {"p0", "p1"}
    clock.now = 9.0
    assert c.add(ev(watermark=4.0)) == []          # not yet: the presenter may be slow
    clock.now = 10.5
    out = run(c, [ev(watermark=5.0)])
    assert {p: o.status for p, o in out.items()} == {"p2": "missing", "p3": "missing"}
    assert c.aligner.stats["timed_out"] == 2 and "no event code within 10 s" in caplog.text


def test_stream_that_stops_leaves_open_windows_missing(clock, caplog):
    c = counter(clock, timeout_s=10.0)
    out = run(c, [ev([(1.0, 1)], [(1.1, 0)], 1.12)])   # p0's window (to 1.2) never completes
    assert out == {}
    clock.now = 11.0
    out = run(c, [ev()])
    assert out["p0"].status == "missing"
    assert "stream stopped" in caplog.text


def test_window_waits_for_the_watermark(clock):
    c = counter(clock)
    assert run(c, [ev([(1.0, 1)], [(1.1, 0)], 1.19)]) == {}
    out = run(c, [ev([], [(1.195, 0)], 1.2)])
    assert out["p0"].counts == [2.0]


def test_photodiode_refines_the_onset(clock):
    c = counter(clock, photodiode_max_lag_s=0.05)
    # code at 1.0, light at 1.03: the window is [1.08, 1.23)
    out = run(c, [ev([(1.0, 1)], [(1.06, 0), (1.1, 0), (1.22, 0)], 1.25, photodiode=[1.03])])
    assert out["p0"].onset == 1.03 and out["p0"].counts == [2.0] and out["p0"].baseline == [1.0]


def test_photodiode_outlier_is_missing_by_default(clock, caplog):
    c = counter(clock, photodiode_max_lag_s=0.05)
    out = run(c, [ev([(1.0, 1), (2.0, 2)], one_spike_per_window([1.0, 2.0]), 3.0, photodiode=[1.2, 2.01])])
    assert out["p0"].status == "missing"                          # light 200 ms late: an outlier
    assert out["p1"].status == "ok" and out["p1"].onset == 2.01
    assert c.aligner.stats["photodiode_outliers"] == 1 and "no photodiode crossing within 50 ms" in caplog.text


def test_photodiode_outlier_kept_at_code_time_when_asked(clock, caplog):
    c = counter(clock, photodiode_max_lag_s=0.05, photodiode_miss="code")
    out = run(c, [ev([(1.0, 1)], one_spike_per_window([1.0]), 2.0, photodiode=[])])
    assert out["p0"].status == "ok" and out["p0"].onset == 1.0 and out["p0"].counts == [1.0]
    assert "onset kept at the code time" in caplog.text


def test_photodiode_waits_for_its_lag(clock):
    c = counter(clock, photodiode_max_lag_s=0.05)
    assert run(c, [ev([(1.0, 1)], [], 1.04)]) == {}               # the light may still come
    out = run(c, [ev([], [(1.15, 0)], 1.3, photodiode=[1.045])])
    assert out["p0"].onset == 1.045 and out["p0"].counts == [1.0]


@pytest.fixture(autouse=True)
def _warnings(caplog):
    caplog.set_level(logging.WARNING)


def test_a_paused_session_lets_no_code_time_out_and_the_timeout_restarts_at_the_resume(clock):
    """The server's PAUSE (feature "pause"): no event code is due while the session is paused,
    however long; from the resume the codes have the whole timeout again."""
    c = counter(clock, timeout_s=10.0)
    out = run(c, [ev([(1.0, 1), (2.0, 2)], one_spike_per_window([1.0, 2.0]), 3.0)])
    assert set(out) == {"p0", "p1"}
    c.hold(True)
    clock.now = 300.0
    assert c.add(ev(watermark=300.0)) == []        # paused for minutes: nothing missing
    c.hold(False)
    clock.now = 309.0
    assert c.add(ev(watermark=309.0)) == []        # 9 s after the resume: not yet
    clock.now = 310.5
    out = run(c, [ev(watermark=310.0)])
    assert {p: o.status for p, o in out.items()} == {"p2": "missing", "p3": "missing"}
