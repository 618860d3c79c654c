"""The Lab Streaming Layer adapter against simulated pylsl outlets, on this machine only
(tests/conftest.py points LSLAPICFG at tests/lsl_api.cfg before liblsl is loaded)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from recording_adapters.events import RigEvents
from tests.dryrun_helpers import (assert_every_presentation_counted, assert_responses_rise, dry_run,
                                  embedded_config, journal)
from xdream.errors import SessionError

assert os.environ.get("LSLAPICFG") == str(Path(__file__).with_name("lsl_api.cfg"))
import pylsl  # noqa: E402  (the test command installs it: a missing pylsl is a failure, not a skip)

from recording_adapters.lsl import LslSource  # noqa: E402
from simulators.lsl_peer import LslPeer  # noqa: E402

FAST = {"latency_s": "0.2", "hold_s": "0.3", "reconnect_s": "0.1", "resolve_timeout_s": "5"}


@pytest.fixture
def peer():
    p = LslPeer(3)
    yield p
    p.close()


def source_for(peer, **options):
    return LslSource.from_strings({**peer.adapter_options(), **FAST, **options})


def collect(source, until_lsl: float, limit_s: float = 15.0):
    """Poll until the watermark passes `until_lsl` (LSL time)."""
    codes, times, chans, marks = [], [], [], []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        ev = source.poll(0.02).in_seconds()
        assert all(t >= max(marks, default=-np.inf) for t, _ in ev.codes)   # codes before the watermark
        codes += ev.codes
        times.append(ev.spike_times)
        chans.append(np.asarray(ev.spike_channels, int))
        if ev.watermark is not None:
            marks.append(ev.watermark)
            if ev.watermark >= until_lsl:
                break
    return codes, np.concatenate(times), np.concatenate(chans), marks


def test_markers_and_spikes_share_one_clock(peer):
    src = source_for(peer)
    try:
        spikes = [(0.12, 0), (0.15, 2), (0.31, 1), (0.55, 2)]
        peer.send(RigEvents([(0.1, 5), (0.5, 7)], np.array([s[0] for s in spikes]),
                            np.array([s[1] for s in spikes]), 0.6))
        codes, t, c, marks = collect(src, peer.lsl_time(0.6) + 0.3)
        assert [code for _, code in codes] == [5, 7]
        onset = codes[0][0]
        # rig-time differences survive the trip (one offset per batch, clocks synchronised)
        assert codes[1][0] - onset == pytest.approx(0.4, abs=1e-4)
        assert np.allclose(np.sort(t) - onset, [0.02, 0.05, 0.21, 0.45], atol=1e-4)
        assert sorted(c.tolist()) == [0, 1, 2, 2]
        assert all(b >= a for a, b in zip(marks, marks[1:]))
    finally:
        src.close()


def test_string_markers_like_the_presenter_sends(tmp_path):
    peer = LslPeer(2, marker_format="string")
    src = source_for(peer)
    try:
        peer.send(RigEvents([(0.0, 12), (0.2, 250)], np.empty(0), np.empty(0, int), 0.3))
        codes, _, _, _ = collect(src, peer.lsl_time(0.2) + 0.35)
        assert [code for _, code in codes] == [12, 250]
    finally:
        src.close()
        peer.close()


def test_a_marker_that_is_not_a_code_is_ignored_with_a_warning(caplog):
    peer = LslPeer(2, marker_format="string")
    src = source_for(peer)
    try:
        now = pylsl.local_clock()
        with caplog.at_level(logging.WARNING):
            for bad in ("hello", "3.5", "0", "-4"):
                peer.push_marker(bad, now)
            peer.push_marker(" 42 ", now + 0.01)
            codes, _, _, _ = collect(src, now + 0.4)
        assert [code for _, code in codes] == [42]
        assert "'hello' is not an event code" in caplog.text and "'3.5'" in caplog.text
        assert src.rejected_markers == 4
    finally:
        src.close()
        peer.close()


def test_timestamps_going_back_are_dropped(peer, caplog):
    src = source_for(peer)
    try:
        now = pylsl.local_clock()
        with caplog.at_level(logging.WARNING):
            peer.push_marker(3, now + 0.05)
            peer.push_marker(4, now + 0.02)            # stamped before the marker sent before it
            peer.push_spikes([1], [0], [now + 0.06])
            codes, _, _, marks = collect(src, now + 0.4)
            assert [code for _, code in codes] == [3]
            assert "timestamps going back" in caplog.text
            # a spike stamped before the time already declared whole: dropped, never counted
            peer.push_marker(6, now + 0.5)
            peer.push_spikes([0], [0], [marks[-1] - 0.1])
            peer.push_spikes([2], [0], [now + 0.55])
            more, t, c, _ = collect(src, now + 1.0)
        assert [code for _, code in more] == [6]
        assert c.tolist() == [2] and "came stamped" in caplog.text and src.late_samples == 1
    finally:
        src.close()


def test_a_stream_that_disappears_drops_what_it_cut_and_comes_back(peer, caplog):
    src = source_for(peer)
    try:
        peer.send(RigEvents([(0.0, 1)], np.array([0.05]), np.array([0]), 0.1))
        codes, _, _, _ = collect(src, peer.lsl_time(0.0) + 0.31)
        assert [code for _, code in codes] == [1]
        with caplog.at_level(logging.WARNING):
            peer.close_spikes()
            peer.push_marker(2, pylsl.local_clock())   # its spikes would have been on the lost stream
            deadline = time.monotonic() + 10
            while src.spikes.inlet is not None and time.monotonic() < deadline:
                src.poll(0.02)
            assert "the spike stream" in caplog.text and "is gone" in caplog.text
            peer.reopen_spikes()
            deadline = time.monotonic() + 15
            while src.spikes.inlet is None and time.monotonic() < deadline:
                src.poll(0.02)
            assert src.spikes.inlet is not None, "the adapter did not find the stream again"
            later = pylsl.local_clock() + 0.1
            peer.push_marker(9, later)
            peer.push_spikes([2], [0], [later + 0.05])
            more, t, c, _ = collect(src, later + 0.4)
        assert [code for _, code in more] == [9]                 # 2 went missing, never counted
        assert "event code 2" in caplog.text and c.tolist() == [2]
    finally:
        src.close()


def test_no_stream_says_what_to_check():
    with pytest.raises(SessionError, match="no marker stream matches name='nobody-here'"):
        LslSource(marker_name="nobody-here", spike_name="nobody-either", resolve_timeout_s=0.5)


def test_dry_run_through_lsl_rises(tmp_path):
    """`xdream dry-run --rig lsl`: the embedded config, 10 generations, markers and spikes
    through pylsl outlets and inlets; the responses rise and every presentation is counted.

    Why the margin holds on any CPU: generation 0 against the last 5 generations, both
    threads pooled (40 images against 200), t over 3 and x1.25 asked; seen here (LSL's
    counts vary a little from run to run): t 9.4 and 10.1 (x2.16, x2.25) on AVX2 (kernel path
    left alone, or forced with ATEN_CPU_CAPABILITY=avx2), t 14.7 and 17.1 (x2.52, x2.96) on the
    portable kernels (ATEN_CPU_CAPABILITY=default, ONEDNN_MAX_CPU_ISA=SSE41). Thread b alone
    rises little in 10 generations of these seeds (t 2.8 on AVX2), hence the pooling; other
    courses at 8 generations (three rigs, six other seeds) gave t 6.0 to 13.1."""
    result, folder = dry_run([embedded_config(tmp_path), "--rig", "lsl", "--generations", "10"],
                             tmp_path / "out")   # LSLAPICFG: asserted above
    records = journal(folder)
    assert_responses_rise(records, generations=10, note=f"; recorder said: {result.stderr[-4000:]}")
    assert_every_presentation_counted(records)
