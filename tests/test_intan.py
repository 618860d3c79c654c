"""The Intan RHX adapter against a simulated RHX speaking its TCP formats on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import struct
import time

import numpy as np
import pytest

from recording_adapters.events import RigEvents
from recording_adapters.intan import IntanSource
from simulators.intan_peer import IntanPeer
from tests.dryrun_helpers import (assert_every_presentation_counted, assert_responses_rise,
                                  assert_wire_counts_like_in_process, dry_run_journal,
                                  embedded_config)
from xdream.errors import ConfigError, SessionError

FS = 30000


@pytest.fixture
def rhx():
    peer = IntanPeer(4)
    yield peer
    peer.close()


def source_for(peer, **options):
    source = IntanSource.from_strings({**peer.adapter_options(), "stall_s": "60", **options})
    # `set runmode run` goes out unanswered (RHX answers nothing behind it)
    wait_for(lambda: peer.running and peer.waveform.client and peer.spike.client)
    return source


def wait_for(condition, limit_s: float = 10.0) -> None:
    """The simulated RHX accepts and runs commands on its own threads, as RHX does: data
    written before it has accepted a client or started running is never sent."""
    deadline = time.monotonic() + limit_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def collect(source, until: float, limit_s: float = 20.0):
    """Poll until the watermark reaches `until`; everything that came, merged."""
    codes, times, chans, marks = [], [], [], []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        ev = source.poll(0.05).in_seconds()
        # a code comes before the watermark passes it: the counter still holds its spikes
        assert all(t >= max(marks, default=-1.0) for t, _ in ev.codes)
        codes += ev.codes
        times.append(ev.spike_times)
        chans.append(ev.spike_channels)
        if ev.watermark is not None:
            marks.append(ev.watermark)
            if ev.watermark >= until:
                break
    return codes, np.concatenate(times), np.concatenate(chans).astype(int), marks


def events(codes=(), spikes=(), watermark=None):
    t = np.array([s[0] for s in spikes], float)
    c = np.array([s[1] for s in spikes], int)
    return RigEvents(list(codes), t, c, watermark)


def sample(t):
    return np.floor(np.asarray(t) * FS) / FS


def test_setup_commands_and_events_round_trip(rhx):
    src = source_for(rhx)
    try:
        assert src.channels == 4 and src.fs == FS
        assert "execute clearalldataoutputs" in rhx.commands
        assert rhx.spike_enabled == {"A-000", "A-001", "A-002", "A-003"}
        assert rhx.digital_in_enabled == {"DIGITAL-IN-01"} and not rhx.wide_enabled
        assert rhx.commands[-1] == "set runmode run" and rhx.running
        rng = np.random.default_rng(0)
        spikes = sorted(zip(rng.uniform(0, 1.9, 300), rng.integers(0, 4, 300)))
        rhx.send(events([(0.1, 5), (0.5, 200), (1.2, 7)], spikes, watermark=2.0))
        codes, t, c, marks = collect(src, until=1.9)
        assert [code for _, code in codes] == [5, 200, 7]
        assert np.allclose([tc for tc, _ in codes], sample([0.1, 0.5, 1.2]))
        sent_t = sample([s[0] for s in spikes])
        keep = sent_t < marks[-1]
        order = np.lexsort((c, t))
        assert np.allclose(t[order], sent_t[keep]) and (c[order] == np.array([s[1] for s in spikes])[keep]).all()
        assert all(b >= a for a, b in zip(marks, marks[1:]))
    finally:
        src.close()
    wait_for(lambda: not rhx.running)
    assert rhx.commands[-1] == "set runmode stop"


def test_rhx_takes_one_client_per_port_and_does_not_listen_again(rhx):
    src = source_for(rhx)
    try:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", rhx.spike.port), timeout=1).close()
    finally:
        src.close()


def test_command_port_unreachable_says_how_to_connect():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(SessionError, match="one client per TCP port"):
        IntanSource(command_port=port, connect_timeout_s=0.3)


def test_rhx_refusal_is_reported(rhx):
    with pytest.raises(SessionError, match="Unrecognized parameter"):
        source_for(rhx, channels="A-000,H-127")


def test_wrong_magic_on_spike_port_drops_the_cut_presentation_and_goes_on(rhx, caplog):
    src = source_for(rhx)
    try:
        rhx.send(events([(0.1, 3)], [(0.15, 0), (0.2, 1)], watermark=0.5))
        rhx.flush()
        codes, t, _, _ = collect(src, until=0.2)
        rhx.send_raw("spike", struct.pack("<I5sIB", 0xDEADBEEF, b"A-001", 16000, 1))
        rhx.send(events([(0.6, 4), (1.5, 6)], [(0.62, 2), (1.55, 3), (1.6, 3)], watermark=2.5))
        with caplog.at_level(logging.WARNING):
            more, t2, c2, marks = collect(src, until=2.0)
        codes += more
        assert "magic 0xdeadbeef" in caplog.text
        assert "event code 4 at rig time 0.6000 s dropped" in caplog.text
        assert [code for _, code in codes] == [3, 6]      # 4's window overlapped the corrupt bytes
        assert np.allclose(sample([1.55, 1.6]), t2[-2:]) and (c2[-2:] == 3).all()
    finally:
        src.close()


def test_truncated_and_corrupt_waveform_blocks_are_skipped_with_a_gap(rhx, caplog):
    src = source_for(rhx)
    try:
        rhx.send(events([(0.05, 1)], watermark=0.5))
        rhx.flush()
        collect(src, until=0.3)
        rhx.send_raw("waveform", struct.pack("<I", 0x2EF07A08) + b"\x01\x02\x03")   # stray bytes
        rhx.lose_bytes("waveform", 100, 900)        # the first block of the next write is cut short
        rhx.send(events([(0.5, 2), (1.2, 8)], watermark=2.0))
        with caplog.at_level(logging.WARNING):
            codes, _, _, marks = collect(src, until=1.6)
        assert "waveform port" in caplog.text and "resynchronising" in caplog.text
        assert "data lost between rig times" in caplog.text
        assert [code for _, code in codes] == [8]         # 2 came in the block the bad bytes broke
    finally:
        src.close()


def test_a_stream_that_stops_warns_and_holds_the_watermark(rhx, caplog):
    src = source_for(rhx, stall_s="0.3")
    try:
        rhx.send(events([(0.1, 9)], watermark=0.25))
        rhx.flush()
        with caplog.at_level(logging.WARNING):
            codes, _, _, marks = collect(src, until=10.0, limit_s=1.0)
        assert "no data from RHX's waveform port" in caplog.text
        assert codes == []                              # 9's window never completed: it waits
        assert max(marks) <= 0.1 + 1e-9
    finally:
        src.close()


def test_clock_going_back_closes_the_old_clock_first(rhx, caplog):
    src = source_for(rhx)
    try:
        rhx.send(events([(0.1, 1), (0.9, 2)], [(0.95, 0)], watermark=1.0))
        rhx.flush()
        collect(src, until=0.4)
        rhx.restart_acquisition()                       # RHX stopped and ran again: timestamps from 0
        rhx.send(events([(1.3, 3)], [(1.32, 1)], watermark=2.0))
        restart = 29952 / FS                            # the last whole 128-sample block before 1.0 s
        codes, marks = [], []
        deadline = time.monotonic() + 10
        with caplog.at_level(logging.WARNING):
            while "clock went back" not in caplog.text and time.monotonic() < deadline:
                ev = src.poll(0.05).in_seconds()
                codes += ev.codes
                marks += [ev.watermark] if ev.watermark is not None else []
        assert "clock went back" in caplog.text
        assert [code for _, code in codes] == []        # 2's window was cut by the restart
        assert "event code 2" in caplog.text
        assert marks[-1] == pytest.approx(restart)      # the old clock's end, before the jump
        codes, t, c, marks = collect(src, until=0.5)
        assert [code for _, code in codes] == [3]
        assert codes[0][0] == pytest.approx(sample(1.3) - restart)
        assert np.allclose(t, sample(1.32) - restart) and list(c) == [1]
    finally:
        src.close()


def test_a_dropped_spike_port_is_reconnected_and_cut_presentations_go_missing(rhx, caplog):
    src = source_for(rhx, reconnect_s="0.1")
    try:
        rhx.send(events([(0.1, 1)], [(0.2, 0)], watermark=0.5))
        rhx.flush()
        codes, _, _, _ = collect(src, until=0.4)
        with caplog.at_level(logging.WARNING):
            rhx.spike.drop()                            # the network hiccups; RHX does not listen again
            deadline = time.monotonic() + 10
            while src.socks["spike"] is not None and time.monotonic() < deadline:
                src.poll(0.05)
            rhx.send(events([(0.6, 2)], [(0.65, 1)], watermark=1.0))
            deadline = time.monotonic() + 10
            while src.socks["spike"] is None and time.monotonic() < deadline:
                src.poll(0.05)
            assert "one client per TCP port" in caplog.text
            assert "execute connecttcpspikedataoutput" in rhx.commands
            wait_for(lambda: rhx.spike.client)
            rhx.send(events([(2.0, 4)], [(2.05, 2)], watermark=3.0))
            more, t, c, marks = collect(src, until=2.5)
        codes += more
        assert [code for _, code in codes] == [1, 4]
        assert "event code 2" in caplog.text
        assert list(c[-1:]) == [2]
    finally:
        src.close()


def test_configure_false_reads_what_the_lab_set_up(rhx):
    rhx.spike_enabled.update({"A-000", "A-001"})
    rhx.digital_in_enabled.add("DIGITAL-IN-01")
    rhx.running = True
    rhx.command.close()
    src = IntanSource.from_strings({**rhx.adapter_options(), "configure": "false", "sample_rate": str(FS),
                                    "channels": "A-000,A-001", "code_lines": "1-8"})
    wait_for(lambda: rhx.waveform.client and rhx.spike.client)
    try:
        rhx.send(events([(0.1, 0x1FF)], [(0.2, 1), (0.3, 3)], watermark=1.0))
        codes, t, c, _ = collect(src, until=0.5)
        assert codes == [(pytest.approx(sample(0.1)), 0xFF)]    # lines 1-8 only
        assert list(c) == [1] and np.allclose(t, sample(0.2))   # A-003 was not enabled
    finally:
        src.close()


# --- the closed loop through RHX's wire format ----------------------------------------------------

def test_dry_run_through_intan_rises(tmp_path):
    """`xdream dry-run --rig intan`: the embedded config, 10 generations; the neuron's
    responses rise and every presentation is counted.

    Why the margin holds on any CPU: generation 0 against the last 5 generations, both
    threads pooled (40 images against 200), t over 3 and x1.25 asked; seen here: t 9.9 (x2.20)
    on AVX2 (kernel path left alone, or forced with ATEN_CPU_CAPABILITY=avx2), t 15.8 (x2.65) on the
    portable kernels (ATEN_CPU_CAPABILITY=default, ONEDNN_MAX_CPU_ISA=SSE41). Thread b alone
    rises little in 10 generations of these seeds (t 2.8 on AVX2), hence the pooling; other
    courses at 8 generations (three rigs, six other seeds) gave t 6.0 to 13.1."""
    records = dry_run_journal([embedded_config(tmp_path), "--rig", "intan", "--generations", "10"],
                              tmp_path / "out")
    assert_responses_rise(records, generations=10)
    assert_every_presentation_counted(records)


def test_dry_run_through_intan_counts_like_the_in_process_rig(tmp_path):
    """The same seeded session through RHX's TCP ports and in-process: the counts agree
    (up to a spike within one 1/30 kHz sample of a window edge)."""
    assert_wire_counts_like_in_process("intan", tmp_path)


def test_outputs_the_adapter_did_not_set_up_are_reported_not_misread(rhx, caplog):
    """Someone enables a wideband output in RHX behind the adapter's back: the frame
    grows by a word, every block fails its checks, nothing is decoded as a code."""
    src = source_for(rhx)
    try:
        rhx.wide_enabled.add("A-001")
        rhx.send(events([(0.1, 5), (0.6, 9)], [(0.2, 1)], watermark=2.0))
        with caplog.at_level(logging.WARNING):
            codes, _, _, marks = collect(src, until=0.1, limit_s=1.0)
        assert codes == [] and not marks
        assert "RHX streams other outputs than this adapter set up" in caplog.text
    finally:
        src.close()


def test_photodiode_line_gives_crossing_times():
    rhx = IntanPeer(2, photodiode_line="12")
    src = source_for(rhx)
    try:
        assert src.fs == FS
        rhx.send(RigEvents([(0.1, 200), (0.5, 7)], np.empty(0), np.empty(0, int), 1.0, photodiode=[0.117, 0.52]))
        photodiode, codes = [], []
        deadline = time.monotonic() + 10
        while len(codes) < 2 and time.monotonic() < deadline:
            ev = src.poll(0.05).in_seconds()
            photodiode += ev.photodiode
            codes += ev.codes
        assert [c for _, c in codes] == [200, 7]          # the photodiode line is not part of the code
        assert np.allclose(photodiode, sample([0.117, 0.52]))
    finally:
        src.close()
        rhx.close()
    with pytest.raises(ConfigError, match="outside code_lines"):
        IntanSource(photodiode_line=3, code_lines=range(1, 9))
