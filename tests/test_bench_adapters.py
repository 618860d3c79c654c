"""The adapter throughput benchmark, as a smoke test: a tiny duration, and the
checks that make its figures mean something (every event counted).  No speed
is asserted here; figures go to docs/benchmarks.md."""

from __future__ import annotations

import numpy as np

from benchmarks.adapters import CHANNELS, CHUNK_S, SAMPLE_HZ, bench_rig, synthetic_rig


def test_the_synthetic_rig_is_384_channels_at_50_hz_with_a_code_every_100_ms():
    chunks = synthetic_rig(2.0, 3.0, tail_s=1.0)
    times = np.concatenate([c.spike_times for c in chunks])
    chans = np.concatenate([c.spike_channels for c in chunks])
    codes = [c for chunk in chunks for c in chunk.codes]
    assert [t for t, _ in codes] == [round(2.0 + 0.1 * k, 6) for k in range(30)]
    assert [c for _, c in codes] == list(range(1, 31))
    assert abs(len(times) / (4.0 * CHANNELS) - 50.0) < 2.0 and set(chans) == set(range(CHANNELS))
    samples = np.floor(times * SAMPLE_HZ).astype(np.int64)
    assert len(np.unique(samples * CHANNELS + chans)) == len(times)   # one spike per channel and sample
    assert all(np.all(np.diff(c.spike_times) >= 0) for c in chunks)
    assert [c.watermark for c in chunks[:2]] == [2.0 + CHUNK_S, 2.0 + 2 * CHUNK_S]


def test_bench_runs_a_rig_through_its_wire_format_and_counts_every_event():
    result = bench_rig("intan", 0.3)
    assert result["complete"], result
    assert result["spikes_decoded"] == result["spikes_sent"] > 0.9 * 1.3 * CHANNELS * 50
    assert result["codes_decoded"] == result["codes_sent"] == 3
    assert result["x_real_time"] > 0
