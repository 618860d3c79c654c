"""xdream/psth.py: the status stream's small PSTH (issue 14)."""

from __future__ import annotations

from xdream import psth


def test_rates_are_mean_spikes_per_second_in_half_open_bins():
    # two presentations over [-100, 400) ms: 10 ms bins; -100 ms lands in the first bin, 399.999 ms in the last
    trains = [[-100_000, 0, 5_000, 399_999], [9_999, 10_000]]
    r = psth.rates(trains, [-100, 400])
    assert len(r) == 50
    assert r[0] == 50.0                      # 1 spike / 2 presentations / 10 ms
    assert r[10] == 150.0                    # [0, 10) ms: 0, 5000, 9999
    assert r[11] == 50.0 and r[49] == 50.0
    assert sum(r) * 0.010 * 2 == 6           # every spike counted once
    assert psth.rates([], [-100, 400]) == []


def test_a_thread_psth_reads_its_channel_and_a_wide_span_gets_wider_bins():
    images = [[[1_000], [2_000, 3_000]], [[1_500]]]     # the second recorder sent one channel only
    p = psth.thread_psth(1, images, [], [-100, 400])
    assert p["n_images"] == 2 and p["n_refs"] == 0 and p["refs"] == []
    assert p["images"][10] == 100.0                     # 2 spikes / 2 presentations / 10 ms
    wide = psth.thread_psth(0, images, images, [-1000, 4000])
    assert wide["bin_ms"] == 25.0 and len(wide["images"]) == psth.MAX_BINS
