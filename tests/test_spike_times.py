"""Spike times per presentation (recording_adapters/spike_times.py), on the wire (the
`spike_times`, `rig_clock` and `trial` features) and against servers and recorders of
either age: a newer server takes an older recorder's counts, a newer recorder sends an
older server nothing it would refuse."""

import asyncio
import math
import threading

import msgspec
import numpy as np
import pytest
import zmq

from recording_adapters.counting import SpikeCounter
from recording_adapters.events import RigEvents
from recording_adapters.recorder import Recorder
from recording_adapters.spike_times import count_in, offsets_us
from tests.conftest import small_config
from tests.dryrun_helpers import journal
from tests.test_server import keep_alive, serving
from xdream import protocol
from xdream.errors import ProtocolError
from xdream.peer import PeerConnection
from xdream.protocol import MsgType


def events(codes=(), spikes=(), watermark=None):
    times = np.array([t for t, _ in spikes], dtype=float)
    chans = np.array([c for _, c in spikes], dtype=int)
    return RigEvents(list(codes), times, chans, watermark)


# ------------------------------------------------------------------- extraction
def test_offsets_are_integer_microseconds_per_channel_in_a_half_open_span():
    """Times that floats hold exactly (sums of powers of 2), so that the offsets read as written;
    9.875 - 2**-20 s and 10.5 s lie outside [-125, 500) ms around 10 s."""
    times = np.array([9.875 - 2**-20, 9.875, 10.0, 10.0625, 10.5 - 2**-20, 10.5, 10.25, 10.125])
    chans = np.array([0, 0, 1, 0, 0, 0, 2, 0])
    out = offsets_us(times, chans, 10.0, (-0.125, 0.5), 3)
    assert out == [[-125000, 62500, 125000, 499999], [0], [250000]]   # 499999.05 us, rounded down
    assert all(type(o) is int for ch in out for o in ch)


def test_sample_numbers_stay_integers_until_the_offset():
    """At 30 kHz an edge sample is in or out by integer comparison, then converted."""
    rate = 30000
    onset = 300_000                      # sample 300000 = 10 s
    samples = np.array([onset - 3000, onset - 3001, onset + 1500, onset + 11999, onset + 12000])
    out = offsets_us(samples, np.zeros(5, int), onset, (-3000, 12000), 1, per_second=rate)
    assert out == [[-100000, 50000, 399966]]   # 11999 samples: 399966.67 us, rounded down


def test_counts_in_the_window_equal_the_counters_counts():
    """Random spikes on 384 channels: the counter's counts and baseline equal the spike times
    that fall in their windows, for many onsets (the counter's own code counts them)."""
    rng = np.random.default_rng(0)
    c = SpikeCounter(384, (0.05, 0.2), (0.0, 0.05), spike_span_s=(-0.1, 0.4))
    onsets = 1.0 + 0.2 * np.arange(20)
    c.expect(0, [(f"p{i}", i + 1) for i in range(20)])
    n = 200_000
    spikes = list(zip(np.sort(rng.uniform(0, 6, n)), rng.integers(0, 384, n)))
    out = c.add(events([(t, i + 1) for i, t in enumerate(onsets)], spikes, watermark=6.0))
    assert [o.pid for o in out] == [f"p{i}" for i in range(20)]
    for o in out:
        assert len(o.spike_times) == 384
        assert count_in(o.spike_times, (50_000, 200_000)) == o.counts
        assert count_in(o.spike_times, (0, 50_000)) == o.baseline
        assert sum(map(len, o.spike_times)) > 10_000   # about 200000 / 6 s * 0.5 s


def test_the_counter_waits_for_the_spans_end_and_keeps_spikes_before_the_onset():
    """Binary fractions of a second (exact in floats): a span of [-125, 375) ms around 1 s."""
    c = SpikeCounter(1, (0.0625, 0.25), (0.0, 0.0625), spike_span_s=(-0.125, 0.375))
    c.expect(0, [("p0", 1)])
    assert c.add(events([], [(0.9375, 0)], watermark=0.96875)) == []   # before the code: kept for the span
    assert c.add(events([(1.0, 1)], [(1.125, 0), (1.3125, 0)], watermark=1.3125)) == []   # window done, span not
    out = c.add(events([], [(1.375 - 2**-10, 0), (1.375, 0)], watermark=1.4375))
    assert [o.pid for o in out] == ["p0"] and out[0].counts == [1.0]
    assert out[0].spike_times == [[-62500, 125000, 312500, 374023]]


def test_no_span_no_spike_times_and_counts_as_before():
    c = SpikeCounter(1)
    c.expect(0, [("p0", 1)])
    out = c.add(events([(1.0, 1)], [(1.1, 0)], watermark=1.2))
    assert out[0].spike_times == [] and out[0].counts == [1.0]


# ----------------------------------------------------------------------- wire
V1_COUNTS_FIELDS = {"block_id", "pid", "status", "counts", "baseline", "onset"}
V1_SHOWN_FIELDS = {"block_id", "pid", "status", "onset", "frames", "dropped"}


def body_keys(frames):
    return set(msgspec.msgpack.decode(bytes(frames[0]))["body"])


def test_unused_additions_stay_off_the_wire():
    """Without spike times or a trial number, COUNTS and SHOWN carry exactly the fields of
    before: what an older server's decode (no unknown fields) accepts."""
    assert body_keys(protocol.encode(MsgType.COUNTS, protocol.Counts(0, "p", "ok", [1.0]))) == V1_COUNTS_FIELDS
    assert body_keys(protocol.encode(MsgType.SHOWN, protocol.Shown(0, "p", "shown", 1.0, 6))) == V1_SHOWN_FIELDS
    timed = protocol.encode(MsgType.COUNTS, protocol.Counts(0, "p", "ok", [1.0], [], 2.0, [[-5, 7]]))
    assert protocol.decode(timed).body.spike_times == [[-5, 7]]
    shown = protocol.encode(MsgType.SHOWN, protocol.Shown(0, "p", "shown", 1.0, 6, 0, 3))
    assert protocol.decode(shown).body.trial == 3


def test_an_older_recorders_counts_decode():
    """A counts body as a version-1 recorder packs it (no spike_times key)."""
    header = {"v": 1, "type": "counts", "session": "s", "seq": 1, "t": 0.0,
              "body": {"block_id": 0, "pid": "p", "status": "ok", "counts": [1.0], "baseline": [], "onset": 1.0}}
    msg = protocol.decode([msgspec.msgpack.encode(header)])
    assert msg.body.spike_times == [] and msg.body.counts == [1.0]


@pytest.mark.parametrize("body, reason", [
    (protocol.RigClock(math.nan, 1.0), "not finite"),
    (protocol.Counts(0, "p", "missing", [], [], None, [[1]]), "carry spike times"),
])
def test_bad_additions_are_refused(body, reason):
    msg_type = MsgType.RIG_CLOCK if isinstance(body, protocol.RigClock) else MsgType.COUNTS
    with pytest.raises(ProtocolError, match=reason):
        protocol.decode(protocol.encode(msg_type, body))


# --------------------------------------------------------------------- server
async def test_the_server_takes_old_and_new_recorders_and_checks_spike_times(tmp_path):
    """Real sockets: the welcome lists the features and the span; counts without spike times (an
    older recorder) and with them are journaled; spike times outside the span, for more channels
    than the hello said, or in a session that asked for none are refused; a rig_clock pair is
    journaled and acknowledged, and a presenter may not send one."""
    cfg = small_config(tmp_path, generations=1)
    folder = tmp_path / "session"
    async with serving(cfg, folder) as (run, pres, rec):
        welcome = await rec.join()
        assert welcome.body.settings["spike_times_ms"] == [-100.0, 400.0]
        assert set(welcome.body.settings["features"]) == {"spike_times", "rig_clock", "pause"}
        assert (await pres.join()).body.settings["features"] == ["trial", "pause"]
        alive = [asyncio.create_task(keep_alive(p)) for p in (pres, rec)]
        block = await pres.expect(MsgType.BLOCK)
        await rec.expect(MsgType.BLOCK_INFO)
        bid, pids = block.body.block_id, [p.pid for p in block.body.presentations]

        seq = await rec.send(MsgType.RIG_CLOCK, protocol.RigClock(1.7e9, 12.5))
        assert (await rec.expect(MsgType.ACK)).body.ref_seq == seq
        await pres.send(MsgType.RIG_CLOCK, protocol.RigClock(1.7e9, 12.5))
        assert "a presenter may not send rig_clock" in (await pres.expect(MsgType.ERROR)).body.reason
        bad = [([[-100002], []], "not ascending within the span"),
               ([[10, 5], []], "not ascending"),
               ([[], [], []], "said hello with 2")]
        for spikes, reason in bad:
            await rec.send(MsgType.COUNTS, protocol.Counts(bid, pids[0], "ok", [1.0, 1.0], [], 1.0, spikes))
            assert reason in (await rec.expect(MsgType.ERROR)).body.reason
        for i, pid in enumerate(pids):
            await pres.send(MsgType.SHOWN, protocol.Shown(bid, pid, "shown", float(i), 6, 0, i // 4))
            await pres.expect(MsgType.ACK)
            spikes = [[-100000, 60000, 400000], []] if i % 2 else []   # odd ones: a new recorder
            await rec.send(MsgType.COUNTS, protocol.Counts(bid, pid, "ok", [1.0, 0.0], [0.0, 0.0], 1.0 + i, spikes))
            await rec.expect(MsgType.ACK)
        await asyncio.wait_for(run, 20)
        for task in alive:
            task.cancel()
    records = journal(folder)
    counts = [r for r in records if r["kind"] == "counts"]
    assert len(counts) == len(pids) and [bool(r["spike_times"]) for r in counts] == [
        bool(i % 2) for i in range(len(pids))]
    assert [r["trial"] for r in records if r["kind"] == "shown"] == [i // 4 for i in range(len(pids))]
    clock = [r for r in records if r["kind"] == "rig_clock"]
    assert len(clock) == 1 and (clock[0]["wall"], clock[0]["rig"], clock[0]["peer"]) == (1.7e9, 12.5, "rec")
    assert sum(r["kind"] == "rejected" for r in records) == 4


async def test_spike_times_are_refused_when_the_session_asked_for_none(tmp_path):
    cfg = small_config(tmp_path, generations=1)
    cfg.response.spike_times_ms = []
    async with serving(cfg, tmp_path / "session") as (run, pres, rec):
        welcome = await rec.join()
        assert welcome.body.settings["features"] == ["rig_clock", "pause"]
        await pres.join()
        alive = [asyncio.create_task(keep_alive(p)) for p in (pres, rec)]
        block = await rec.expect(MsgType.BLOCK_INFO, timeout=15)
        pid = block.body.presentations[0].pid
        await rec.send(MsgType.COUNTS, protocol.Counts(block.body.block_id, pid, "ok", [1.0, 1.0], [], 1.0, [[1]]))
        assert "did not ask for" in (await rec.expect(MsgType.ERROR)).body.reason
        for task in alive:
            task.cancel()


# ------------------------------------------------------------------- recorder
class ScriptedRig:
    """A rig stream that yields one code and a few spikes (at binary fractions of a second, exact
    in floats), then an advancing watermark."""
    channels = 2

    def __init__(self):
        self.t = 0.0

    def poll(self, timeout_s):
        self.t += 0.1
        if abs(self.t - 0.2) < 1e-9:   # the second poll
            return events([(0.25, 1)], [(0.1875, 0), (0.375, 0), (0.40625, 1)], watermark=0.25)
        return events(watermark=self.t)

    def close(self):
        pass


def run_recorder_against(settings, zmq_ctx):
    """A Recorder against a bare ROUTER that welcomes it with `settings` (an older server's has
    no `features`), sends one block_info, acks everything; what the recorder sent, by type."""
    router = zmq_ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    conn = PeerConnection(f"tcp://127.0.0.1:{port}", "recorder", "rec", channels=2)
    recorder = Recorder(conn, ScriptedRig())
    thread = threading.Thread(target=recorder.run, daemon=True)
    thread.start()
    got: dict[str, list] = {}
    seq = 0
    try:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while "counts" not in got:
            assert poller.poll(10_000), f"the recorder sent no counts (got {sorted(got)})"
            rid, *frames = router.recv_multipart()
            msg = protocol.decode(frames)
            got.setdefault(msg.type.value, []).append(msg)
            reply = []
            if msg.type == MsgType.HELLO:
                reply.append((MsgType.WELCOME, protocol.Welcome("recorder-1", 1.0, 10.0, settings)))
                reply.append((MsgType.BLOCK_INFO, protocol.BlockInfo(0, 0, [
                    protocol.PresentationSpec("b0000-000", 1, "a/x", 8, 8)])))
            elif msg.type in (MsgType.COUNTS, MsgType.RIG_CLOCK):
                reply.append((MsgType.ACK, protocol.Ack(msg.seq)))
            for msg_type, body in reply:
                seq += 1
                router.send_multipart([rid, *protocol.encode(msg_type, body, session="s", seq=seq)])
            if msg.type == MsgType.COUNTS:   # the raw body as an older server's decode would see it
                got["counts_keys"] = [body_keys(frames)]
        return got
    finally:
        recorder.halt.set()
        thread.join(5)
        router.close(0)


OLD_SETTINGS = {"window_ms": [50.0, 200.0], "baseline_ms": [0.0, 50.0], "subtract_baseline": False}


def test_a_recorder_sends_an_older_server_only_what_it_knows(zmq_ctx):
    got = run_recorder_against(OLD_SETTINGS, zmq_ctx)
    assert got["counts_keys"] == [V1_COUNTS_FIELDS] and "rig_clock" not in got and "features" not in got
    assert got["counts"][0].body.counts == [1.0, 1.0]


def test_a_recorder_sends_spike_times_and_its_clock_when_asked(zmq_ctx):
    settings = OLD_SETTINGS | {"spike_times_ms": [-100.0, 400.0], "features": ["spike_times", "rig_clock"]}
    got = run_recorder_against(settings, zmq_ctx)
    counts = got["counts"][0].body
    assert counts.counts == [1.0, 1.0] and counts.spike_times == [[-62500, 125000], [156250]]
    clock = got["rig_clock"][0].body
    assert clock.rig >= 0.1 and abs(clock.wall - got["rig_clock"][0].sent_at) < 5
