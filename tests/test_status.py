"""The status stream and the controls, against the real server and hand-driven peers on
real sockets (server/status.py, server/control.py, docs/protocol.md "Status stream")."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
import zmq
from PIL import Image

from server.status import StatusPublisher
from tests.conftest import small_config
from tests.dryrun_helpers import journal
from tests.test_server import keep_alive, report, serving
from xdream import protocol, status_client
from xdream.errors import ProtocolError
from xdream.protocol import MsgType
from xdream.status_state import StatusState
from xdream.status_wire import decode_event


async def _status_endpoint(run_task_server, timeout=10.0) -> str:
    deadline = time.monotonic() + timeout
    while not run_task_server.status.endpoint:
        assert time.monotonic() < deadline, "the status socket was never bound"
        await asyncio.sleep(0.02)
    return run_task_server.status.endpoint


async def _request(ctx, endpoint, op, **kw):
    return await asyncio.to_thread(status_client.request, ctx, endpoint, op, **kw)


def _drain(sub) -> list[dict]:
    events = []
    while True:
        try:
            events.append(decode_event(sub.recv_multipart(zmq.NOBLOCK)))
        except zmq.Again:
            return events


async def _report_block(pres, rec, block, abort_first=False):
    specs = block.body.presentations
    for i, p in enumerate(specs):
        await report(pres, rec, block.body.block_id, p.pid, "aborted" if abort_first and i == 0 else "shown")


async def test_the_stream_tells_every_fate_each_generation_and_a_late_joiner_gets_a_snapshot(tmp_path, zmq_ctx):
    cfg = small_config(tmp_path, generations=2, abort_policy="nan")
    async with serving(cfg, tmp_path / "s") as (run, pres, rec):
        server = _server_of(run)
        endpoint = await _status_endpoint(server)
        first = await _request(zmq_ctx, endpoint, "snapshot")
        while first["snapshot"]["session"] is None:   # (the socket is bound just before the session starts)
            await asyncio.sleep(0.05)
            first = await _request(zmq_ctx, endpoint, "snapshot")
        sub = status_client.subscriber(zmq_ctx, status_client.pub_endpoint(endpoint, first))
        await asyncio.sleep(0.3)   # the subscription reaches the PUB
        await rec.join()
        await pres.join()
        alive = [asyncio.create_task(keep_alive(p)) for p in (pres, rec)]
        block = await pres.expect(MsgType.BLOCK)
        await _report_block(pres, rec, block, abort_first=True)
        # a subscriber that joins now: the snapshot holds generation 0, then the stream goes on
        deadline = time.monotonic() + 20
        while True:
            snap = (await _request(zmq_ctx, endpoint, "snapshot"))["snapshot"]
            if snap["generations"]:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        block = await pres.expect(MsgType.BLOCK)
        await _report_block(pres, rec, block)
        await asyncio.wait_for(run, 20)
        for t in alive:
            t.cancel()
    await asyncio.sleep(0.2)
    events = _drain(sub)
    kinds = [e["kind"] for e in events]
    assert kinds[-1] == "end", kinds
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    session = first["snapshot"]["session"]   # published before this subscriber joined: in the snapshot
    assert session is not None and session["kind"] == "session" and first["snapshot"]["seq"] >= session["seq"]
    assert [t["name"] for t in session["threads"]] == ["a"] and session["generations"] == 2
    fates = [e["fate"] for e in events if e["kind"] == "presentation"]
    n = len(block.body.presentations)
    assert fates.count("aborted") == 1 and fates.count("shown") == 2 * n - 1 and fates.count("counted") == 2 * n - 1
    gens = [e for e in events if e["kind"] == "generation"]
    assert [g["generation"] for g in gens] == [0, 1]
    (th,) = gens[0]["threads"]
    assert th["thread"] == "a" and len(th["scores"]) == len(th["images"]) == 6
    assert th["best_image"] is not None and th["best_score"] == max(s for s in th["scores"] if s == s)
    thumb = Image.open(io.BytesIO(th["images"][0]))
    assert thumb.format == "JPEG" and max(thumb.size) <= 96
    assert set(th["refs"]) == {"ref/" + r for r in session["references"]}
    assert {"generate", "send", "present", "counts", "tell", "total"} <= set(gens[0]["timing"])
    assert len(gens[0]["channels"]) == 2 and gens[0]["channels"][0] == pytest.approx(5.0)
    assert any(e["kind"] == "peers" and {p["role"] for p in e["peers"]} == {"presenter", "recorder"} for e in events)
    # the late snapshot plus the events after it give what the stream gave from the start
    late = StatusState.from_snapshot(snap)
    for e in events:
        if e["seq"] > snap["seq"]:
            late.apply(e)
    full = StatusState.from_snapshot(first["snapshot"])
    for e in events:
        if e["seq"] > first["snapshot"]["seq"]:
            full.apply(e)
    assert [g["generation"] for g in late.generations] == [0, 1]
    assert late.generations == full.generations and late.rig == full.rig and late.ended == full.ended


def _server_of(run_task):
    """The EvolutionServer a `serving` task runs (its coroutine's `self`)."""
    return run_task.get_coro().cr_frame.f_locals["self"]


async def test_pause_holds_the_next_block_and_the_timer_resume_sends_it_stop_ends_resumable(tmp_path, zmq_ctx):
    cfg = small_config(tmp_path, generations=5, block_timeout_s=1.5)
    folder = tmp_path / "s"
    async with serving(cfg, folder) as (run, pres, rec):
        server = _server_of(run)
        endpoint = await _status_endpoint(server)
        await rec.join()
        await pres.join()
        alive = [asyncio.create_task(keep_alive(p)) for p in (pres, rec)]
        block = await pres.expect(MsgType.BLOCK)
        # paused mid-block for longer than the block timeout: nothing goes missing
        await _request(zmq_ctx, endpoint, "pause", by="test")
        await asyncio.sleep(2.5)
        await _report_block(pres, rec, block)
        with pytest.raises(TimeoutError):   # paused: no next block
            await pres.expect(MsgType.BLOCK, timeout=2.0)
        await _request(zmq_ctx, endpoint, "resume", by="test")
        block = await pres.expect(MsgType.BLOCK, timeout=10)
        assert block.body.generation == 1
        await _request(zmq_ctx, endpoint, "stop", by="test")
        await _report_block(pres, rec, block)
        summary = await asyncio.wait_for(run, 20)
        for t in alive:
            t.cancel()
    records = journal(folder)
    kinds = [r["kind"] for r in records]
    assert "missing" not in kinds
    assert [r["by"] for r in records if r["kind"] in ("paused", "resumed", "stop_requested")] == ["test"] * 3
    assert [r["generation"] for r in summary] == [0, 1]
    end = records[-1]
    assert end["kind"] == "session_end" and end["reason"].startswith("stopped: by test after generation 1")


def test_controls_beyond_loopback_need_the_token_and_bad_requests_get_a_clear_error(zmq_ctx):
    pub = StatusPublisher("tcp://127.0.0.1:0")
    pub.token = "secret"   # as if bound beyond loopback
    calls = []

    async def main():
        endpoint = pub.start(lambda op, who: calls.append((op, who)))
        try:
            with pytest.raises(ProtocolError, match="needs the control token"):
                await _request(zmq_ctx, endpoint, "pause")
            with pytest.raises(ProtocolError, match="unknown op"):
                await _request(zmq_ctx, endpoint, "explode")
            raw = zmq_ctx.socket(zmq.REQ)
            raw.connect(endpoint)
            raw.send(b"\xc1 not msgpack")
            reply = await asyncio.to_thread(raw.recv)
            raw.close(0)
            assert b"not msgpack" in reply
            assert (await _request(zmq_ctx, endpoint, "pause", token="secret", by="me"))["ok"]
            assert (await _request(zmq_ctx, endpoint, "snapshot"))["snapshot"]["seq"] == 0
            await asyncio.sleep(0.1)
        finally:
            pub.close()

    asyncio.run(main())
    assert calls == [("pause", "me")]


async def test_the_presenters_pause_key_stops_the_block_timer_and_is_journaled(tmp_path):
    """PAUSED / RESUMED from the presenter (its pause key): a pause longer than the block timeout
    loses nothing; a recorder may not send them."""
    cfg = small_config(tmp_path, generations=1, block_timeout_s=1.5)
    folder = tmp_path / "s"
    async with serving(cfg, folder) as (run, pres, rec):
        await rec.join()
        await pres.join()
        alive = [asyncio.create_task(keep_alive(p)) for p in (pres, rec)]
        block = await pres.expect(MsgType.BLOCK)
        seq = await pres.send(MsgType.PAUSED, protocol.Paused("pause key"))
        assert (await pres.expect(MsgType.ACK)).body.ref_seq == seq
        await rec.send(MsgType.PAUSED, protocol.Paused("not mine"))
        assert "may not send paused" in (await rec.expect(MsgType.ERROR)).body.reason
        await asyncio.sleep(2.5)
        await pres.send(MsgType.RESUMED, protocol.Resumed("pause key"))
        await _report_block(pres, rec, block)
        summary = await asyncio.wait_for(run, 20)
        for t in alive:
            t.cancel()
    records = journal(folder)
    assert "missing" not in [r["kind"] for r in records] and summary[0]["n_missing"] == 0
    held = [(r["kind"], r["source"]) for r in records if r["kind"] in ("paused", "resumed")]
    assert held == [("paused", "presenter pres"), ("resumed", "presenter pres")]


async def test_a_dashboard_that_missed_events_takes_a_fresh_snapshot_and_misses_nothing(monkeypatch, caplog):
    """libzmq's PUB drops, silently, what a slow subscriber's queue cannot take: the next event's
    seq skips.  The dashboard's follower notices the skip and resyncs from a snapshot, so its view
    ends with every event, the lost ones included, and the newest state."""
    from xdream.dashboard.live import follow
    from xdream.dashboard.web import Hub

    lost = {3, 4}
    real = StatusPublisher._publish

    def lossy(self, pub, kind, fields):
        class DroppingPub:       # what the PUB does at its high-water mark: the seq is used, nothing leaves
            def send_multipart(_, frames, flags=0):
                if self._seq not in lost:
                    pub.send_multipart(frames, flags=flags)
        real(self, DroppingPub(), kind, fields)

    monkeypatch.setattr(StatusPublisher, "_publish", lossy)
    publisher = StatusPublisher("tcp://127.0.0.1:0")
    endpoint = publisher.start(lambda op, who: None)
    hub = Hub(StatusState(), live=True)
    task = asyncio.create_task(follow(hub, endpoint))
    try:
        publisher.emit("warning", text="w1")
        for _ in range(200):                       # hub.state is set once the SUB is connected
            if hub.state.seq >= 1:
                break
            await asyncio.sleep(0.05)
        for i in range(2, 7):
            publisher.emit("warning", text=f"w{i}")
        for _ in range(200):
            if hub.state.seq >= 6:
                break
            await asyncio.sleep(0.05)
        assert [w["text"] for w in hub.state.warnings] == [f"w{i}" for i in range(1, 7)]
        assert hub.state.seq == 6
        assert "2 events were lost on the way" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        publisher.close()


@pytest.mark.parametrize("same_pub_port", [False, True], ids=["new-pub-port", "same-pub-port"])
async def test_a_dashboard_follows_a_server_restarted_on_the_same_endpoint(same_pub_port, caplog):
    """A server restarted after a crash (`xdream serve --resume`) on the same status endpoint is a
    new run: seq starts again at 1, and with status_pub_port 0 its PUB is on another port. The
    follower must show the new run's events, not keep the old run's view with every new seq
    ignored as already seen."""
    from xdream.dashboard.live import follow
    from xdream.dashboard.web import Hub

    first = StatusPublisher("tcp://127.0.0.1:0")
    endpoint = first.start(lambda op, who: None)
    pub_port = int(first.pub_endpoint.rsplit(":", 1)[1]) if same_pub_port else 0
    hub = Hub(StatusState(), live=True)
    task = asyncio.create_task(follow(hub, endpoint))
    second = None

    async def until(check, what):
        for _ in range(200):
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the dashboard never showed {what}: {hub.state.snapshot()['warnings']}")

    try:
        for i in range(5):        # before or after it subscribed: then in its snapshot
            first.emit("warning", text=f"first run {i}")
        await until(lambda: hub.state.seq == 5, "the first run's 5 events")
        first.close()
        second = StatusPublisher(endpoint, pub_port)           # the same status endpoint
        assert second.start(lambda op, who: None) == endpoint and second.run_id != first.run_id
        for i in range(2):
            second.emit("warning", text=f"second run {i}")
        await until(lambda: [w["text"] for w in hub.state.warnings] == ["second run 0", "second run 1"],
                    "the second run's state (its snapshot)")
        second.emit("warning", text="second run 2")            # and its events after the snapshot
        await until(lambda: hub.state.seq == 3 and hub.state.warnings[-1]["text"] == "second run 2",
                    "the second run's next event")
        assert "restarted (a new run)" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        first.close()
        if second is not None:
            second.close()


async def test_the_run_request_names_the_run_and_its_last_seq(zmq_ctx):
    publisher = StatusPublisher("tcp://127.0.0.1:0")
    endpoint = publisher.start(lambda op, who: None)
    try:
        publisher.emit("warning", text="one")
        for _ in range(100):
            reply = await asyncio.to_thread(status_client.request, zmq_ctx, endpoint, "run")
            if reply["seq"] == 1:
                break
            await asyncio.sleep(0.02)
        assert reply["run"] == publisher.run_id and reply["seq"] == 1 and "snapshot" not in reply
        assert reply["pub"] == publisher.pub_endpoint
        snap = await asyncio.to_thread(status_client.request, zmq_ctx, endpoint, "snapshot")
        assert snap["run"] == publisher.run_id
        assert StatusPublisher("tcp://127.0.0.1:0").run_id != publisher.run_id
    finally:
        publisher.close()
