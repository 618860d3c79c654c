"""Exact window edges through every adapter's real input: spikes on the ticks either side of each
window edge (tests/edges.py) for every presentation, sent through the simulated peer's wire format
(Open Ephys ZMQ Interface, Intan RHX TCP, LSL outlets) or the client-API fake (Plexon's pyopxclient,
Blackrock's pycbsdk), or fired by the in-process simulated rig (simulators/rig.py, its spikes scripted
by simulators/scripted_spikes.py, its onsets from the presenter's frames on its screen tap), counted
by the real SpikeCounter; the counts must equal the integer truth.

The onsets include 0.9 s and 2.1 s at 30 kHz (where float seconds put an edge spike on the wrong
side, issue 13) and sample numbers past 2^31 and 2^32 (Intan's timestamps are uint32: below 2^32).
On the code before integer counting these fail at those onsets.
"""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pytest
import zmq

import tests.test_plexon_blackrock as tpb
from recording_adapters.counting import SpikeCounter
from recording_adapters.events import RigEvents
from recording_adapters.sources import build_source
from simulators.rig import SimulatedRig
from simulators.scripted_spikes import ScriptedSpikes
from simulators.wire_peers import start_peer
from tests import edges
from xdream import config as config_mod
from xdream import protocol
from xdream.protocol import MsgType


def onset_sets(rate: int, *, below_2_32: bool = False) -> list[list[int]]:
    """The issue's onsets, a stretch of onsets on many residues, and onsets past 2^31 (and 2^32)."""
    out = [[round(t * rate) for t in edges.SPECIAL_ONSETS_S], edges.onsets_from(rate // 3 + 1, 4, rate),
           edges.onsets_from(2**31 + 17, 2, rate)]
    if not below_2_32:
        out.append(edges.onsets_from(2**32 + 1, 2, rate))
    else:
        out.append(edges.onsets_from(2**32 - 5 * edges.spacing(rate), 2, rate))
    return out


def counter_for(pids):
    c = SpikeCounter(edges.CHANNELS, (0.05, 0.2), (0.0, 0.05), timeout_s=60.0)
    c.expect(0, list(zip(pids, edges.codes_for(len(pids)))))
    return c


def drive(source, counter, pids, limit_s=30.0) -> dict:
    """Poll the adapter into the counter until every presentation is reported (or the limit)."""
    got: dict = {}
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and len(got) < len(pids):
        for c in counter.add(source.poll(0.02)):
            got[c.pid] = c
    return got


def events_for(onsets, rate, tail_s: float = 1.0) -> tuple[RigEvents, RigEvents, np.ndarray, np.ndarray]:
    """What the rig recorded (ticks of `rate`), and a later watermark that closes every window."""
    ticks, chans = edges.edge_spikes(onsets, rate)
    codes = list(zip(onsets, edges.codes_for(len(onsets))))
    end = onsets[-1] + edges.spacing(rate)
    ev = RigEvents(codes, ticks, chans, end, [], Fraction(rate))
    tail = RigEvents(watermark=end + int(tail_s * rate), rate=Fraction(rate))
    return ev, tail, ticks, chans


def check(got, pids, onsets, ticks, chans, rate):
    edges.check_counts(got, pids, onsets, ticks, chans, rate)


# --------------------------------------------------------------------------- Open Ephys
@pytest.mark.parametrize("rate", edges.RATES)
def test_openephys_zmq_interface_counts_every_edge_exactly(rate):
    for onsets in onset_sets(rate):
        peer = start_peer("openephys", edges.CHANNELS, sample_rate=float(rate))
        source = build_source("openephys", {**peer.adapter_options(), "lag_ms": "0"})
        try:
            peer.skip_to(max(0, onsets[0] - edges.spacing(rate)))
            ev, tail, ticks, chans = events_for(onsets, rate)
            peer.send(ev)
            peer.send(tail)
            pids = [f"p{i}" for i in range(len(onsets))]
            check(drive(source, counter_for(pids), pids), pids, onsets, ticks, chans, rate)
        finally:
            source.close()
            peer.close()


# --------------------------------------------------------------------------- Intan RHX
@pytest.mark.parametrize("rate", edges.RATES)
def test_intan_counts_every_edge_exactly(rate):
    for onsets in onset_sets(rate, below_2_32=True):
        peer = start_peer("intan", edges.CHANNELS, sample_rate=str(rate))
        source = build_source("intan", {**peer.adapter_options(), "stall_s": "60"})
        try:
            deadline = time.monotonic() + 10
            while not (peer.running and peer.waveform.client and peer.spike.client):
                assert time.monotonic() < deadline, "the simulated RHX never got both data clients"
                time.sleep(0.005)
            peer.skip_to(max(0, onsets[0] - edges.spacing(rate)))
            ev, tail, ticks, chans = events_for(onsets, rate)
            peer.send(ev)
            peer.send(tail)
            pids = [f"p{i}" for i in range(len(onsets))]
            check(drive(source, counter_for(pids), pids), pids, onsets, ticks, chans, rate)
        finally:
            source.close()
            peer.close()


# --------------------------------------------------------------------------- LSL
@pytest.mark.parametrize("rate", edges.RATES)
def test_lsl_counts_every_edge_exactly_on_its_declared_tick(rate):
    """LSL stamps are float seconds; the adapter rounds them to `tick_hz`.  liblsl's clock-offset
    estimate moves one inlet's stamps by tens of microseconds against the other's even on one
    machine, so this runs with clock_sync off: it proves the rounding rule, not liblsl's estimate."""
    for onsets in onset_sets(rate)[:2] + [onset_sets(rate)[3]]:
        peer = start_peer("lsl", edges.CHANNELS)
        source = build_source("lsl", {**peer.adapter_options(), "tick_hz": str(rate), "clock_sync": "false",
                                      "latency_s": "0.1", "hold_s": "0.3", "resolve_timeout_s": "5"})
        try:
            ev, _, ticks, chans = events_for(onsets, rate)
            peer.send(ev)
            pids = [f"p{i}" for i in range(len(onsets))]
            check(drive(source, counter_for(pids), pids), pids, onsets, ticks, chans, rate)
        finally:
            source.close()
            peer.close()


# --------------------------------------------------------------------------- Plexon
@pytest.mark.parametrize("rate", edges.RATES)
def test_plexon_counts_every_edge_exactly_on_its_timestamp_clock(monkeypatch, rate):
    """pyopxclient gives seconds (ticks / the timestamp frequency, as doubles): the adapter rounds
    them back to ticks.  OmniPlex's clock is 40 kHz; the other rates through `timestamp_hz`."""
    for onsets in onset_sets(rate):
        ticks, chans = edges.edge_spikes(onsets, rate)
        rows = [(t / rate, tpb.SPK, c + 1, 1) for t, c in zip(ticks.tolist(), chans.tolist())]
        rows += [(t / rate, tpb.DI, 1, code) for t, code in zip(onsets, edges.codes_for(len(onsets)))]
        rows.append(((onsets[-1] + 2 * rate) / rate, tpb.SPK, 8, 1))   # the clock runs on past the windows
        rows.sort()
        source, _ = tpb.plexon(monkeypatch, [rows] + [[]] * 5, channels="6",
                               **({} if rate == 40000 else {"timestamp_hz": str(rate)}))
        try:
            pids = [f"p{i}" for i in range(len(onsets))]
            got = drive(source, counter_for(pids), pids, limit_s=5.0)
            check(got, pids, onsets, ticks, chans, rate)
        finally:
            source.close()


# --------------------------------------------------------------------------- Blackrock
@pytest.mark.parametrize("rate", edges.RATES)
def test_blackrock_counts_every_edge_exactly_on_the_nsp_ticks(monkeypatch, rate):
    monkeypatch.setattr(tpb, "FS", rate)      # the fake NSP's sysfreq
    for onsets in onset_sets(rate):
        source, cbsdk = tpb.blackrock(monkeypatch)
        try:
            ticks, chans = edges.edge_spikes(onsets, rate)
            packets = [(t, tpb.spike(t, c + 1, 1)) for t, c in zip(ticks.tolist(), chans.tolist())]
            packets += [(t, tpb.din(t, code)) for t, code in zip(onsets, edges.codes_for(len(onsets)))]
            end = onsets[-1] + 2 * rate
            packets += [(t, tpb.beat(t)) for t in range(onsets[0] - rate, end, rate // 100)]  # every 10 ms
            packets.sort(key=lambda p: p[0])
            cbsdk.device.send([p for _, p in packets])
            pids = [f"p{i}" for i in range(len(onsets))]
            check(drive(source, counter_for(pids), pids, limit_s=5.0), pids, onsets, ticks, chans, rate)
        finally:
            source.close()


# --------------------------------------------------------------------------- the simulated rig
FRAME_PERIOD = 1 / 60          # the presenter's nominal frame period, as its screen tap sends it


def rig_frame_sets(rate: int) -> list[list[int]]:
    """Presenter frame indices of onsets.  Multiples of 3, so that each onset is a whole tick at
    every rate (i * rate / 60): frames 54 and 126 are 0.9 s and 2.1 s; a stretch 0.45 s apart; two
    past 2^31 ticks and two past 2^32."""
    per_3 = rate // 20            # ticks in 3 frames
    return [[54, 126], [3 * k for k in range(7, 43, 9)],
            [3 * (2**31 // per_3 + 1) + 27 * k for k in range(2)],
            [3 * (2**32 // per_3 + 1) + 27 * k for k in range(2)]]


@pytest.mark.parametrize("rate", edges.RATES)
def test_simulated_rig_counts_every_edge_exactly(rate):
    """The in-process rig with scripted spikes: onsets come from the frames on its screen tap
    (frame index x nominal period, to the nearest tick of `rate`), the spikes are the edge cases
    as integer ticks, and what it hands the counter gives the integer truth at every onset."""
    sim_cfg = config_mod.load(None).simulator
    ctx = zmq.Context()
    try:
        for frames in rig_frame_sets(rate):
            onsets = [i * rate // 60 for i in frames]
            ticks, chans = edges.edge_spikes(onsets, rate)
            rig = SimulatedRig(sim_cfg, context=ctx, spikes=ScriptedSpikes(ticks, chans, rate, edges.CHANNELS))
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 1000)
            try:
                push.connect(rig.endpoint)
                image = np.full((4, 4, 3), 128, np.uint8)
                codes = edges.codes_for(len(frames))
                for i, code in zip(frames, codes):
                    body = protocol.ScreenFrame(code, i, FRAME_PERIOD, 0.0, 4, 4)
                    push.send_multipart(protocol.encode(MsgType.SCREEN_FRAME, body, images=[image]))
                # the screen goes idle after the last: the rig's clock runs on past every window
                idle = protocol.ScreenFrame(0, frames[-1] + 30, FRAME_PERIOD, 0.0, 0, 0)
                push.send_multipart(protocol.encode(MsgType.SCREEN_FRAME, idle))
                pids = [f"p{i}" for i in range(len(frames))]
                counter, got, seen = counter_for(pids), {}, []
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and len(got) < len(pids):
                    ev = rig.poll(0.02)
                    assert ev.rate == rate and np.asarray(ev.spike_times).dtype.kind == "i"
                    seen += ev.codes
                    for c in counter.add(ev):
                        got[c.pid] = c
                assert seen == list(zip(onsets, codes)), "the rig put an onset on another tick"
                check(got, pids, onsets, ticks, chans, rate)
                assert rig.script is not None and rig.script.left == 0
            finally:
                push.close()
                rig.close()
    finally:
        ctx.destroy(linger=0)
