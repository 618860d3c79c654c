"""Log lines for things that can happen thousands of times a second.

A rig that sends corrupt packets, a marker line that fails on every flip, a
stream stamped in the past: each is worth a log line, but not ten thousand.
`RateLimitedLog` logs the first `burst` of each key as they come, then at most
one line per `interval_s` per key, and that line says how many like it were
held back since the last one and how many there were in all, so a count is
never lost, only folded.  The clock is injected (tests step it by hand).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from collections.abc import Callable

INTERVAL_S = 10.0   # a flood costs one line per key per 10 s


@dataclass
class _Key:
    total: int = 0             # occurrences, logged or not
    held: int = 0              # not logged since the last line
    last_line: float = 0.0     # the clock when the last line was logged


class RateLimitedLog:
    """`log.warning(key, msg, *args)`: like logger.warning, rate-limited per key."""

    def __init__(self, logger: logging.Logger, interval_s: float = INTERVAL_S, burst: int = 1,
                 clock: Callable[[], float] = time.monotonic):
        if interval_s <= 0 or burst < 1:
            raise ValueError(f"interval_s must be > 0 and burst >= 1, got {interval_s} and {burst}")
        self.logger = logger
        self.interval_s = interval_s
        self.burst = burst
        self.clock = clock
        self._keys: dict[str, _Key] = {}
        self._lock = threading.Lock()   # sources log from their own threads

    def log(self, level: int, key: str, msg: str, *args) -> bool:
        """Log `msg % args` unless `key` was logged less than interval_s ago (after its
        first `burst`); True if a line was written."""
        now = self.clock()
        with self._lock:
            k = self._keys.setdefault(key, _Key())
            k.total += 1
            if k.total > self.burst and now - k.last_line < self.interval_s:
                k.held += 1
                return False
            held, since, k.held, k.last_line = k.held, now - k.last_line, 0, now
            total = k.total
        if held:
            msg += f" ({held} more like this in the last {since:.0f} s not logged; {total} in all)"
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args) -> bool:
        return self.log(logging.ERROR, key, msg, *args)

    def count(self, key: str) -> int:
        """How many times `key` came, logged or not."""
        k = self._keys.get(key)
        return k.total if k else 0

    def held_back(self, key: str) -> int:
        """How many of `key` were not logged since its last line."""
        k = self._keys.get(key)
        return k.held if k else 0
