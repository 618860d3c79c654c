"""Shared helpers for the exact-edge tests: spikes on the ticks either side of every window edge,
and the counts they must give, computed in integer arithmetic only (no float, no Fraction, none
of the counter's code), so a counter or an adapter that rounds an edge disagrees with it.

For every presentation at onset tick n, with the default windows (response 50-200 ms, baseline
0-50 ms), one spike per channel:
    channel 0: n - 1          (before the baseline: in no window of this presentation)
    channel 1: n              (the baseline's first tick: in)
    channel 2: n + s - 1      (the baseline's last tick)
    channel 3: n + s          (the response window's first tick: in)
    channel 4: n + e - 1      (the response window's last tick: in)
    channel 5: n + e          (the response window's end: out)
where s = ceil(50 ms * rate), e = ceil(200 ms * rate).  Presentations are spaced so that one's
spikes never fall in another's windows; the truth is still computed over all spikes.
"""

from __future__ import annotations

import numpy as np

RATES = (20000, 25000, 30000, 40000)
WINDOW_MS = (50, 200)
BASELINE_MS = (0, 50)
CHANNELS = 6
# onsets that land an edge spike on the wrong side with float seconds at 30 kHz (0.9 s, 2.1 s), and
# sample numbers past 2^31 and 2^32
SPECIAL_ONSETS_S = (0.9, 2.1)
LARGE_TICKS = (2**31 - 3000, 2**31 + 17, 2**32 - 4000, 2**32 + 1, 2**33 + 12345)


def ceil_ticks(ms: int, rate: int) -> int:
    """ceil(ms / 1000 * rate) in integers."""
    return -(-ms * rate // 1000)


def edge_offsets(rate: int) -> list[int]:
    s, e = ceil_ticks(WINDOW_MS[0], rate), ceil_ticks(WINDOW_MS[1], rate)
    return [-1, 0, s - 1, s, e - 1, e]


def spacing(rate: int) -> int:
    """Ticks between onsets: past every window's end, and an odd number so that onsets fall on
    many residues (mod 3, 7, ...) where float seconds go wrong."""
    return ceil_ticks(WINDOW_MS[1], rate) * 2 + 7


def onsets_from(first: int, n: int, rate: int) -> list[int]:
    return [first + i * spacing(rate) for i in range(n)]


def edge_spikes(onsets: list[int], rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted spike ticks and their channels: one spike per channel at each edge offset."""
    offs = edge_offsets(rate)
    ticks = np.array([n + o for n in onsets for o in offs], dtype=np.int64)
    chans = np.array([c for _ in onsets for c in range(len(offs))], dtype=int)
    order = np.argsort(ticks, kind="stable")
    return ticks[order], chans[order]


def truth(onsets: list[int], ticks, chans, rate: int, window_ms=WINDOW_MS, n_channels: int = CHANNELS):
    """Counts per presentation and channel in [n + ceil(t0*rate), n + ceil(t1*rate)), integers only."""
    a, b = ceil_ticks(window_ms[0], rate), ceil_ticks(window_ms[1], rate)
    out = []
    for n in onsets:
        row = [0] * n_channels
        for t, c in zip(ticks.tolist(), chans.tolist()):
            if n + a <= t < n + b:
                row[c] += 1
        out.append(row)
    return out


def expected_edge_counts(n_onsets: int) -> tuple[list[list[int]], list[list[int]]]:
    """What truth() gives for edge_spikes with the default windows: a cross-check of the helper
    itself (channels 3, 4 in the response window; 1, 2 in the baseline)."""
    return [[0, 0, 0, 1, 1, 0]] * n_onsets, [[0, 1, 1, 0, 0, 0]] * n_onsets


def codes_for(n: int) -> list[int]:
    """Event codes 1..255, wrapping, one per presentation."""
    return [1 + i % 255 for i in range(n)]


def run_counter(counter, batches, pids: list[str]) -> dict:
    """Feed batches of RigEvents to a SpikeCounter; {pid: Counts} of what it reported."""
    out = {}
    for ev in batches:
        for c in counter.add(ev):
            out[c.pid] = c
    assert set(out) <= set(pids)
    return out


def check_counts(reported: dict, pids: list[str], onsets: list[int], ticks, chans, rate: int) -> None:
    """Every presentation counted, window and baseline equal to the integer truth."""
    want_w = truth(onsets, ticks, chans, rate, WINDOW_MS)
    want_b = truth(onsets, ticks, chans, rate, BASELINE_MS)
    missing = [p for p in pids if p not in reported or reported[p].status != "ok"]
    assert not missing, f"not counted: {missing[:5]} ({len(missing)} of {len(pids)})"
    for i, p in enumerate(pids):
        got_w = [int(x) for x in reported[p].counts]
        got_b = [int(x) for x in reported[p].baseline]
        assert got_w == want_w[i], f"{p} (onset tick {onsets[i]} at {rate} Hz): window {got_w} != {want_w[i]}"
        assert got_b == want_b[i], f"{p} (onset tick {onsets[i]} at {rate} Hz): baseline {got_b} != {want_b[i]}"
