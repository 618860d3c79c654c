import numpy as np

from recording_adapters.counting import SpikeCounter
from recording_adapters.events import RigEvents


def events(codes=(), spikes=(), watermark=None):
    times = np.array([t for t, _ in spikes], dtype=float)
    chans = np.array([c for _, c in spikes], dtype=int)
    return RigEvents(list(codes), times, chans, watermark)


def test_counts_spikes_in_window_and_baseline_per_channel():
    c = SpikeCounter(2, window_s=(0.05, 0.2), baseline_s=(0.0, 0.05))
    c.expect(0, [("p0", 1), ("p1", 2)])
    spikes = [(10.01, 0), (10.04, 1),                 # baseline of p0
              (10.05, 0), (10.10, 0), (10.199, 1),    # window of p0 (start inclusive, end exclusive)
              (10.20, 0), (10.3, 1)]                  # window of p1 (onset 10.2)
    out = c.add(events([(10.0, 1), (10.2, 2)], spikes, watermark=10.25))
    assert [o.pid for o in out] == ["p0"]
    assert out[0].counts == [2.0, 1.0] and out[0].baseline == [1.0, 1.0] and out[0].onset == 10.0
    out = c.add(events(watermark=10.4))
    assert [o.pid for o in out] == ["p1"] and out[0].counts == [0.0, 1.0] and out[0].baseline == [1.0, 0.0]


def test_waits_for_the_watermark():
    c = SpikeCounter(1)
    c.expect(0, [("p0", 5)])
    assert c.add(events([(1.0, 5)], watermark=1.19)) == []
    assert [o.pid for o in c.add(events(watermark=1.2))] == ["p0"]


def test_code_before_its_block_info_is_kept():
    c = SpikeCounter(1)
    assert c.add(events([(1.0, 5)], [(1.1, 0)], watermark=1.05)) == []
    c.expect(0, [("p0", 5)])
    out = c.add(events(watermark=1.3))
    assert [o.pid for o in out] == ["p0"] and out[0].counts == [1.0]


def test_repeated_codes_map_in_order_and_resent_info_is_ignored():
    c = SpikeCounter(1)
    c.expect(0, [("p0", 1)])
    c.expect(1, [("p1", 1)])
    c.expect(0, [("p0", 1)])   # resent after a reconnect
    out = c.add(events([(1.0, 1), (2.0, 1)], watermark=3.0))
    assert [(o.pid, o.onset) for o in out] == [("p0", 1.0), ("p1", 2.0)]


def test_stale_unknown_code_is_dropped_and_counted():
    c = SpikeCounter(1)
    c.add(events([(1.0, 9)], watermark=1.0))
    c.add(events(watermark=100.0))
    assert c.unmatched_codes == 1


def test_spikes_on_unknown_channels_are_dropped():
    c = SpikeCounter(1)
    c.expect(0, [("p0", 1)])
    out = c.add(events([(0.0, 1)], [(0.1, 0), (0.1, 3), (0.1, -1)], watermark=1.0))
    assert out[0].counts == [1.0]
