"""The adapter throughput benchmark, as a smoke test: a tiny duration, and the
checks that make its figures mean something (every event counted).  No speed
is asserted here; figures go to docs/benchmarks.md."""

from __future__ import annotations

import numpy as np

from benchmarks.adapters import CHANNELS, CHUNK_S, SAMPLE_HZ, bench_rig, synthetic_rig


def test_the_synthetic_rig_is_384_channels_at_50_hz_with_a_code_every_100_ms():
    """On the rig's sample clock, as a real rig's events are: every time an integer sample number."""
    chunks = synthetic_rig(2 * SAMPLE_HZ, 3.0, tail_s=1.0)
    assert all(c.rate == SAMPLE_HZ for c in chunks)
    times = np.concatenate([c.spike_times for c in chunks])
    chans = np.concatenate([c.spike_channels for c in chunks])
    codes = [c for chunk in chunks for c in chunk.codes]
    assert times.dtype == np.int64 and all(isinstance(t, int) for t, _ in codes)
    assert [t for t, _ in codes] == [2 * SAMPLE_HZ + 3000 * k for k in range(30)]
    assert [c for _, c in codes] == list(range(1, 31))
    assert abs(len(times) / (4.0 * CHANNELS) - 50.0) < 2.0 and set(chans) == set(range(CHANNELS))
    assert len(np.unique(times * CHANNELS + chans)) == len(times)   # one spike per channel and sample
    assert all(np.all(np.diff(c.spike_times) >= 0) for c in chunks)
    assert [c.watermark for c in chunks[:2]] == [2 * SAMPLE_HZ + round(CHUNK_S * SAMPLE_HZ),
                                                 2 * SAMPLE_HZ + 2 * round(CHUNK_S * SAMPLE_HZ)]
    assert times.min() >= 2 * SAMPLE_HZ and times.max() < chunks[-1].watermark


def test_bench_runs_a_rig_through_its_wire_format_and_counts_every_event():
    result = bench_rig("intan", 0.3)
    assert result["complete"], result
    assert result["spikes_decoded"] == result["spikes_sent"] > 0.9 * 1.3 * CHANNELS * 50
    assert result["codes_decoded"] == result["codes_sent"] == 3
    assert result["x_real_time"] > 0
