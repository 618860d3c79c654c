"""A small peri-stimulus time histogram for the status stream and the dashboard (issue 14).

Input: presentations' spike times on one channel, integer microseconds from onset
(recording_adapters/spike_times.py, the `counts` message's `spike_times`), all
within the session's span `response.spike_times_ms`.  Output: the mean rate in
spikes/s per BIN_MS bin over those presentations, rounded to 0.1 spikes/s, so a
generation's summary stays a few hundred bytes (50 bins for the default 500 ms span).
One `np.histogram` over the concatenated ints: microseconds per generation.
"""

from __future__ import annotations

import numpy as np

BIN_MS = 10.0
MAX_BINS = 200   # a wide span gets wider bins, never a large message


def bin_ms_for(span_ms) -> float:
    width = float(span_ms[1]) - float(span_ms[0])
    return max(BIN_MS, width / MAX_BINS)


def rates(trains: list[list[int]], span_ms, bin_ms: float | None = None) -> list[float]:
    """Mean spikes/s per bin over `trains` (one list of us offsets per presentation); [] for none."""
    if not trains:
        return []
    bin_ms = bin_ms_for(span_ms) if bin_ms is None else bin_ms
    lo_us, hi_us = float(span_ms[0]) * 1000, float(span_ms[1]) * 1000
    n_bins = max(1, int(round((hi_us - lo_us) / (bin_ms * 1000))))
    flat = np.fromiter((t for train in trains for t in train), dtype=np.int64)
    hist, _ = np.histogram(flat, bins=n_bins, range=(lo_us, lo_us + n_bins * bin_ms * 1000))
    return [round(float(x), 1) for x in hist / (len(trains) * bin_ms / 1000.0)]


def thread_psth(channel: int, images: list[list[list[int]]], refs: list[list[list[int]]], span_ms) -> dict:
    """The PSTH of one thread's target `channel`: over its images' presentations and over the
    references' (each presentation's per-channel spike times; a presentation whose recorder
    sent fewer channels counts as silent there).  The generation summary's `psth` field."""
    def on_channel(spikes: list[list[list[int]]]) -> list[list[int]]:
        return [s[channel] if channel < len(s) else [] for s in spikes]

    bin_ms = bin_ms_for(span_ms)
    return {"channel": channel, "start_ms": float(span_ms[0]), "bin_ms": bin_ms,
            "images": rates(on_channel(images), span_ms, bin_ms), "n_images": len(images),
            "refs": rates(on_channel(refs), span_ms, bin_ms), "n_refs": len(refs)}
