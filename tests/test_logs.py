"""The rate-limited log (xdream.logs): per key, the first `burst` lines as they come,
then at most one per interval, each saying how many it folded; the clock is injected."""

from __future__ import annotations

import logging

import pytest

from xdream.logs import RateLimitedLog


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock():
    return Clock()


def lines(caplog):
    return [r.getMessage() for r in caplog.records]


def test_a_flood_is_one_line_per_interval_and_the_count_is_kept(caplog, clock):
    rl = RateLimitedLog(logging.getLogger("t.flood"), interval_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING):
        logged = [rl.warning("bad", "bad packet #%d", i) for i in range(1, 1001)]   # all at one instant
        assert logged == [True] + [False] * 999 and lines(caplog) == ["bad packet #1"]
        assert rl.count("bad") == 1000 and rl.held_back("bad") == 999
        clock.t += 9.9
        assert not rl.warning("bad", "bad packet #%d", 1001)
        clock.t += 0.1                                   # 10 s after the last line
        assert rl.warning("bad", "bad packet #%d", 1002)
    assert lines(caplog)[-1] == "bad packet #1002 (1000 more like this in the last 10 s not logged; 1002 in all)"
    assert rl.held_back("bad") == 0 and rl.count("bad") == 1002


def test_keys_are_limited_apart_and_the_level_is_kept(caplog, clock):
    rl = RateLimitedLog(logging.getLogger("t.keys"), clock=clock)
    with caplog.at_level(logging.WARNING):
        assert rl.error("a", "a %s", 1) and rl.warning("b", "b %s", 1)
        assert not rl.error("a", "a %s", 2)
    assert lines(caplog) == ["a 1", "b 1"]
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.WARNING]


def test_a_burst_is_logged_whole_before_the_limit(caplog, clock):
    rl = RateLimitedLog(logging.getLogger("t.burst"), interval_s=5.0, burst=3, clock=clock)
    with caplog.at_level(logging.WARNING):
        got = [rl.warning("k", "n=%d", i) for i in range(5)]
    assert got == [True, True, True, False, False] and lines(caplog) == ["n=0", "n=1", "n=2"]


def test_a_rare_event_is_never_held_back(caplog, clock):
    rl = RateLimitedLog(logging.getLogger("t.rare"), interval_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING):
        for i in range(3):
            assert rl.warning("k", "event %d", i)
            clock.t += 30.0
    assert lines(caplog) == ["event 0", "event 1", "event 2"]      # nothing folded: no suffix


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="interval_s"):
        RateLimitedLog(logging.getLogger("t"), interval_s=0)
    with pytest.raises(ValueError, match="burst"):
        RateLimitedLog(logging.getLogger("t"), burst=0)
