"""simulators/scripted_spikes.py: a spike train given as sample ticks, handed out by watermark."""

from __future__ import annotations

import numpy as np
import pytest

from simulators.scripted_spikes import ScriptedSpikes


def test_spikes_go_out_once_each_in_tick_order_before_the_watermark():
    s = ScriptedSpikes([30, 10, 20, 20, 40], [1, 0, 2, 0, 1], 25000)
    assert s.channels == 3 and s.rate == 25000 and s.left == 5
    t, c = s.take(20)                     # half-open: a spike on the watermark's tick waits
    assert t.tolist() == [10] and c.tolist() == [0] and t.dtype == np.int64
    t, c = s.take(31)
    assert t.tolist() == [20, 20, 30] and c.tolist() == [2, 0, 1]
    assert s.take(31)[0].tolist() == [] and s.take(5)[0].tolist() == []   # never twice, never back
    assert s.take(2**40)[0].tolist() == [40] and s.left == 0


def test_a_script_that_is_not_integer_ticks_is_refused():
    with pytest.raises(ValueError, match="must be integers"):
        ScriptedSpikes([0.5, 1.0], [0, 0], 30000)
    with pytest.raises(ValueError, match=">= 0"):
        ScriptedSpikes([-1, 3], [0, 0], 30000)
    with pytest.raises(ValueError, match="channel 6, but 6 channels"):
        ScriptedSpikes([1, 2], [0, 6], 30000, n_channels=6)
    with pytest.raises(ValueError, match="one length"):
        ScriptedSpikes([1, 2], [0], 30000)
    with pytest.raises(ValueError, match="positive"):
        ScriptedSpikes([1], [0], 0)


def test_a_recorded_train_loads_from_npz(tmp_path):
    path = tmp_path / "train.npz"
    np.savez(path, ticks=np.array([2**33 + 5, 7], np.int64), channels=np.array([3, 1]), rate=40000)
    s = ScriptedSpikes.load(path, n_channels=8)
    assert s.channels == 8 and s.rate == 40000
    assert s.take(2**34)[0].tolist() == [7, 2**33 + 5]
