"""The server against hand-driven peers on real ZeroMQ sockets: bad input of
every kind gets an ERROR reply and a journal line, and the session goes on."""

import asyncio
import contextlib
import math

import pytest
import zmq
import zmq.asyncio

from server.app import EvolutionServer
from tests.conftest import small_config
from tests.dryrun_helpers import journal
from xdream import protocol
from xdream.protocol import MsgType


class FakePeer:
    def __init__(self, ctx, endpoint, role, name, channels=0):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.hello = protocol.Hello(role, name, channels)
        self.session = ""
        self.seq = 0
        self.inbox = []

    async def send(self, msg_type, body, images=()):
        self.seq += 1
        await self.sock.send_multipart(protocol.encode(msg_type, body, session=self.session, seq=self.seq,
                                                       images=images))
        return self.seq

    async def expect(self, msg_type, timeout=10.0):
        """Next message of this type; heartbeats and others are kept in the inbox."""
        async def wait():
            while True:
                msg = protocol.decode(await self.sock.recv_multipart())
                if msg.type == msg_type:
                    return msg
                self.inbox.append(msg)
        return await asyncio.wait_for(wait(), timeout)

    async def join(self):
        await self.send(MsgType.HELLO, self.hello)
        welcome = await self.expect(MsgType.WELCOME)
        self.session = welcome.session
        return welcome


async def keep_alive(peer, period=0.2):
    while True:
        await peer.send(MsgType.HEARTBEAT, protocol.Heartbeat())
        await asyncio.sleep(period)


@contextlib.asynccontextmanager
async def serving(cfg, folder):
    """The server running `cfg` on a free port, and a presenter and a two-channel recorder
    not yet joined: (the server's task, presenter, recorder); the task is cancelled after."""
    server = EvolutionServer(cfg, folder)
    endpoint = asyncio.get_running_loop().create_future()
    run = asyncio.create_task(server.run(on_endpoint=endpoint.set_result))
    ctx = zmq.asyncio.Context()
    try:
        ep = await asyncio.wait_for(endpoint, 10)
        yield run, FakePeer(ctx, ep, "presenter", "pres"), FakePeer(ctx, ep, "recorder", "rec", channels=2)
    finally:
        if not run.done():
            run.cancel()
        # awaited: the run's own cleanup (socket, status thread, executor, journal) must happen
        # here, not never (a cancelled, unawaited run left a server heartbeating into later tests)
        await asyncio.gather(run, return_exceptions=True)
        ctx.destroy(linger=0)


async def test_bad_input_is_rejected_and_a_vanished_presenter_does_not_stop_the_session(tmp_path):
    cfg = small_config(tmp_path, generations=1)
    cfg.network.peer_timeout_s = 2.0
    cfg.threads[0].channel = 1   # so that counts need two channels
    folder = tmp_path / "session"
    async with serving(cfg, folder) as (run, pres, rec):
        # garbage before any hello: an error reply, not a crash
        await pres.sock.send_multipart([b"\x00garbage"])
        assert "not valid msgpack" in (await pres.expect(MsgType.ERROR)).body.reason
        await pres.send(MsgType.HEARTBEAT, protocol.Heartbeat())
        assert "say hello first" in (await pres.expect(MsgType.ERROR)).body.reason

        welcome = await rec.join()
        assert welcome.body.settings["window_ms"] == [50.0, 200.0]
        alive = asyncio.create_task(keep_alive(rec))
        assert (await pres.join()).body.settings["on_ms"] == 100.0
        info = await rec.expect(MsgType.BLOCK_INFO)
        block = await pres.expect(MsgType.BLOCK)
        assert [p.pid for p in block.body.presentations] == [p.pid for p in info.body.presentations]
        assert len(block.images()) == 8 and block.images()[0].shape == (64, 64, 3)
        pids = [p.pid for p in block.body.presentations]
        withheld = [p.pid for p in block.body.presentations if p.image_id.startswith("a/")][-1]
        bid = block.body.block_id

        bad = [
            (pres, MsgType.SHOWN, protocol.Shown(bid, "b9999-000", "shown", 1.0, 6), "unknown presentation id"),
            (rec, MsgType.COUNTS, protocol.Counts(bid, pids[0], "ok", [math.nan, 1.0]), "not finite"),
            (rec, MsgType.COUNTS, protocol.Counts(bid, pids[0], "ok", [-1.0, 1.0]), "not finite"),
            (rec, MsgType.COUNTS, protocol.Counts(bid, pids[0], "ok", [1.0]), "the threads need"),
            (pres, MsgType.COUNTS, protocol.Counts(bid, pids[0], "ok", [1.0, 1.0]), "a presenter may not"),
        ]
        for peer, msg_type, body, reason in bad:
            seq = await peer.send(msg_type, body)
            err = await peer.expect(MsgType.ERROR)
            assert reason in err.body.reason and err.body.ref_seq == seq

        # a report for a block this session never sent: rejected (issue 12, defect 10)
        seq = await pres.send(MsgType.SHOWN, protocol.Shown(bid + 7, "b0007-000", "shown", 1.0, 6))
        assert "never sent" in (await pres.expect(MsgType.ERROR)).body.reason

        # good reports for all but one generated presentation, each acknowledged
        for i, pid in enumerate(p for p in pids if p != withheld):
            seq = await pres.send(MsgType.SHOWN, protocol.Shown(bid, pid, "shown", float(i), 6))
            assert (await pres.expect(MsgType.ACK)).body.ref_seq == seq
            seq = await rec.send(MsgType.COUNTS, protocol.Counts(bid, pid, "ok", [float(i), 1.0], [0.0, 0.0]))
            assert (await rec.expect(MsgType.ACK)).body.ref_seq == seq
        # an identical resend (after a reconnect, say) is acknowledged again, not double-counted
        seq = await pres.send(MsgType.SHOWN, protocol.Shown(bid, pids[0], "shown", 0.0, 6))
        assert (await pres.expect(MsgType.ACK)).body.ref_seq == seq

        # the presenter vanishes mid-block: the server declares it lost and closes the block
        pres.sock.close()
        summary = await asyncio.wait_for(run, 20)
        alive.cancel()

    assert summary[0]["n_missing"] == 1
    records = journal(folder)
    kinds = [r["kind"] for r in records]
    # rejected: the garbage, the five bad reports, the report for a block never sent; the heartbeat
    # before hello carries no data and gets only a log line (a resumed server gets many from peers of its predecessor)
    assert kinds.count("rejected") == 7 and kinds.count("orphan_shown") == 0
    assert kinds.count("shown") == len(pids) - 1 and kinds.count("counts") == len(pids) - 1
    lost = [r for r in records if r["kind"] == "peer_lost"]
    assert lost and lost[0]["peer"] == "pres" and "silent" in lost[0]["why"]
    missing = [r for r in records if r["kind"] == "missing"]
    assert missing[0]["pids"] == [withheld]
    scores = [r for r in records if r["kind"] == "scores"][0]
    assert sum(s is None for s in scores["scores"]) == 1   # NaN journaled as null, never 0
    assert kinds[-1] == "session_end"


async def test_no_peers_is_a_clear_session_error(tmp_path):
    from xdream.errors import SessionError
    cfg = small_config(tmp_path, generations=1, wait_for_peers_s=0.5)
    server = EvolutionServer(cfg, tmp_path / "s")
    with pytest.raises(SessionError, match="no presenter and recorder connected"):
        await asyncio.wait_for(server.run(), 10)
    assert journal(tmp_path / "s")[-1]["kind"] == "session_end"


def test_session_folder_is_never_overwritten(tmp_path):
    from xdream.errors import SessionError
    cfg = small_config(tmp_path)
    (tmp_path / "s").mkdir()
    with pytest.raises(SessionError, match="exists already"):
        EvolutionServer(cfg, tmp_path / "s")


async def _one_block_session(tmp_path, policy, script):
    """Run a 1-generation session; `script(pres, rec, block, info)` drives the peers."""
    cfg = small_config(tmp_path, generations=1)
    cfg.session.abort_policy = policy
    folder = tmp_path / policy
    async with serving(cfg, folder) as (run, pres, rec):
        await rec.join()
        await pres.join()
        alive = [asyncio.create_task(keep_alive(p)) for p in (pres, rec)]
        block = await pres.expect(MsgType.BLOCK)
        info = await rec.expect(MsgType.BLOCK_INFO)
        await script(pres, rec, block, info)
        summary = await asyncio.wait_for(run, 20)
        for task in alive:
            task.cancel()
    return summary, journal(folder)


async def report(pres, rec, bid, pid, status="shown", count=5.0):
    onset = 1.0 if status == "shown" else None
    await pres.send(MsgType.SHOWN, protocol.Shown(bid, pid, status, onset, 6 if onset else 0))
    if status == "shown":
        await rec.send(MsgType.COUNTS, protocol.Counts(bid, pid, "ok", [count, 0.0], [0.0, 0.0]))


async def abort_one_report_the_rest(pres, rec, block):
    """The block's first presentation of thread a aborted, the others shown and counted; returns the aborted one."""
    specs = block.body.presentations
    target = next(p for p in specs if p.image_id.startswith("a/"))
    for p in specs:
        await report(pres, rec, block.body.block_id, p.pid, "aborted" if p is target else "shown")
    return target


async def test_aborted_presentations_are_requeued_then_scored_nan(tmp_path):
    seen = {}

    async def script(pres, rec, block, info):
        bid = block.body.block_id
        specs = block.body.presentations
        target = await abort_one_report_the_rest(pres, rec, block)
        # re-queued twice (max_requeues = 2), each a new BLOCK of one presentation, same image
        for attempt in (1, 2):
            extra = await pres.expect(MsgType.BLOCK)
            extra_info = await rec.expect(MsgType.BLOCK_INFO)
            (spec,) = extra.body.presentations
            assert spec.pid == f"{target.pid}r{attempt}" and spec.image_id == target.image_id
            assert extra_info.body.presentations == extra.body.presentations
            assert spec.code not in {p.code for p in specs}
            np.testing.assert_array_equal(extra.images()[0], block.images()[specs.index(target)])
            seen[attempt] = spec.pid
            await report(pres, rec, bid, spec.pid, "aborted" if attempt == 1 else "shown", count=9.0)

    import numpy as np
    summary, records = await _one_block_session(tmp_path, "requeue", script)
    assert summary[0]["n_missing"] == 0            # the second re-queue was shown and counted
    requeued = [p for r in records if r["kind"] == "block" for p in r["presentations"] if p["requeue_of"]]
    assert [p["pid"] for p in requeued] == [seen[1], seen[2]]
    scores = [r for r in records if r["kind"] == "scores"][0]
    assert 9.0 in scores["scores"]


async def test_abort_policy_nan_scores_without_showing_again(tmp_path):
    async def script(pres, rec, block, info):
        await abort_one_report_the_rest(pres, rec, block)

    summary, records = await _one_block_session(tmp_path, "nan", script)
    assert summary[0]["n_missing"] == 1
    assert [r["kind"] for r in records].count("abort_scored_nan") == 1
    assert sum(len(r["presentations"]) for r in records if r["kind"] == "block") == 8
