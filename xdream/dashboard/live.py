"""The dashboard's two sources, and running it: in the foreground (`xdream dashboard`) or in a
thread beside the server (`xdream serve --dashboard`).

Live: subscribe to the server's PUB, take a snapshot, then fold each event with a
larger `seq` (xdream/status_client.py); until the server answers, retry; a server
restarted on the same status endpoint is followed afresh (`follow`).  Finished:
the journal, folded once (journal_events.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import threading

import zmq
import zmq.asyncio

from xdream import status_client
from xdream.curve import is_loopback
from xdream.dashboard.web import Hub, make_app, start_site
from xdream.errors import XdreamError
from xdream.status_state import StatusState
from xdream.status_wire import decode_event

log = logging.getLogger(__name__)


QUIET_S = 2.0   # no new event for this long: ask the server whether it is still the run being followed


async def follow(hub: Hub, endpoint: str, server_token: str = "") -> None:
    """Keep `hub` up to date with the server at `endpoint` (its status socket) until cancelled.
    A server restarted on the same status endpoint (`xdream serve --resume` after a crash) is a
    new run: its seq starts again at 1 and its PUB may be on another port. The follower notices
    (the `run` id changes) and starts afresh: a new subscription and a snapshot."""
    sync_ctx = zmq.Context()
    ctx = zmq.asyncio.Context()

    async def control(op: str) -> dict:
        return await asyncio.to_thread(status_client.request, sync_ctx, endpoint, op, server_token, "dashboard")

    async def ask(op: str, timeout_s: float = 5.0) -> dict:
        return await asyncio.to_thread(status_client.request, sync_ctx, endpoint, op, "", "", timeout_s)

    async def resync() -> None:
        hub.state = StatusState.from_snapshot((await ask("snapshot"))["snapshot"])
        hub.publish({"v": 1, "kind": "resync", "seq": hub.state.seq})

    hub.control = control
    sub = None
    try:
        while True:          # one pass per server run
            while True:
                try:
                    first = await ask("run", 2.0)
                    break
                except XdreamError as exc:
                    log.info("waiting for the server's status socket %s: %s", endpoint, exc)
                    await asyncio.sleep(0.5)
            sub = status_client.subscriber(ctx, status_client.pub_endpoint(endpoint, first))
            await asyncio.sleep(0.2)   # the subscription reaches the PUB before the snapshot is taken
            await resync()
            await _read(hub, sub, resync, functools.partial(_restarted, ask, first.get("run")))
            sub.close(0)
            sub = None
            log.warning("status: the server at %s restarted (a new run): following it afresh", endpoint)
    finally:
        if sub is not None:
            sub.close(0)
        ctx.destroy(linger=0)
        sync_ctx.destroy(linger=0)


async def _read(hub: Hub, sub, resync, restarted) -> None:
    """Fold the run's events into `hub` until `restarted()` says the server is a new run. It is
    asked after QUIET_S without a new event: a server that went away and came back on another
    PUB port sends nothing here, and one back on the same port sends seqs already seen."""
    last_new = asyncio.get_running_loop().time()
    while True:
        frames = await sub.recv_multipart() if await sub.poll(QUIET_S * 1000) else None
        now = asyncio.get_running_loop().time()
        if frames is not None:
            try:
                event = decode_event(frames)
            except XdreamError as exc:
                log.warning("ignored a status message: %s", exc)
                continue
            seq = int(event.get("seq", 0))
            if seq > hub.state.seq + 1:
                # the server's PUB dropped events for us (we read too slowly; it never waits): what
                # was lost is older than what is arriving, so a fresh snapshot gives the newest state
                log.warning("status: %d events were lost on the way (a slow reader); taking a fresh snapshot",
                            seq - hub.state.seq - 1)
                await resync()
            if seq > hub.state.seq:
                hub.publish(event)
                last_new = now
                continue
        if now - last_new >= QUIET_S:
            if await restarted():
                return
            last_new = now


async def _restarted(ask, run: str | None) -> bool:
    """Whether the server now answering is another run than `run` (not when it does not answer:
    it may be busy, or on its way back)."""
    try:
        return (await ask("run", 2.0)).get("run") != run
    except XdreamError:
        return False


def dashboard_token(host: str) -> str:
    """Bound beyond loopback, the dashboard's controls need a token (printed at start)."""
    return "" if is_loopback(f"tcp://{host}:0") else secrets.token_urlsafe(16)


async def serve(hub: Hub, host: str, port: int, token: str, on_url=None, endpoint: str | None = None,
                server_token: str = "") -> None:
    """Serve until cancelled (and follow the server, for a live session)."""
    runner, url = await start_site(make_app(hub, token=token), host, port)
    if on_url is not None:
        on_url(url)
    try:
        if endpoint is not None:
            await follow(hub, endpoint, server_token)
        else:
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def start_beside(endpoint: str, port: int = 0, host: str = "127.0.0.1", token: str = "") -> str:
    """`xdream serve --dashboard`: the dashboard in a daemon thread with its own loop; its URL."""
    got: dict = {}
    ready = threading.Event()

    def run() -> None:
        def on_url(url: str) -> None:
            got["url"] = url
            ready.set()

        try:
            asyncio.run(serve(Hub(StatusState(), live=True), host, port, dashboard_token(host), on_url,
                              endpoint, token))
        except BaseException as exc:   # surfaced to the caller if before the page listens
            got["error"] = exc
            ready.set()

    threading.Thread(target=run, name="dashboard", daemon=True).start()
    ready.wait(30)
    if "url" not in got:
        raise XdreamError(f"the dashboard did not start: {got.get('error', 'no answer in 30 s')!r}")
    return got["url"]
