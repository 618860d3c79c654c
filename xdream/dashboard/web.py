"""The dashboard's web server (aiohttp): the page, its scripts, a snapshot, server-sent events,
and the controls.

    GET  /                  the page (static/index.html)
    GET  /static/...        dashboard.js, and plotly.min.js from the plotly wheel (nothing from the internet)
    GET  /api/snapshot      the session so far (JSON; images as data: URLs)
    GET  /api/events        server-sent events: each status event as JSON, as it arrives
    POST /api/control/OP    pause | resume | stop, passed to the server's status socket (live only)

Bound to 127.0.0.1 by default.  Bound wider, the controls need the token printed
at start (header X-Xdream-Token, or ?token= on the page's address, which the page
passes on).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import secrets
from importlib import resources
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from xdream.status_state import StatusState
from xdream.status_wire import CONTROL_OPS

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
CLIENT_QUEUE = 1000   # events waiting for one browser; beyond, it is told to reload the snapshot
PLOTLY = web.AppKey("plotly", bytes)


def plotly_js() -> bytes:
    """plotly.min.js as the plotly wheel ships it (package_data/plotly.min.js)."""
    return resources.files("plotly").joinpath("package_data/plotly.min.js").read_bytes()


def jsonable(x):
    """Status events and snapshots for the browser: bytes (JPEG) as data: URLs, NaN as null."""
    if isinstance(x, bytes):
        return "data:image/jpeg;base64," + base64.b64encode(x).decode()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


class Client:
    """One browser's event stream: a bounded queue; when it overflows the browser reloads."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(CLIENT_QUEUE)
        self.resync = False


class Hub:
    """The state the page shows, and the browsers listening for its events."""

    def __init__(self, state: StatusState, live: bool):
        self.state = state
        self.live = live
        self.clients: set[Client] = set()
        self.control: Callable[[str], Awaitable[dict]] | None = None   # a live session's controls

    def publish(self, event: dict) -> None:
        self.state.apply(event)
        text = json.dumps(jsonable(event))
        for c in list(self.clients):
            try:
                c.queue.put_nowait(text)
            except asyncio.QueueFull:   # a browser that does not keep up: it reloads the snapshot
                c.resync = True


def make_app(hub: Hub, *, token: str = "") -> web.Application:
    app = web.Application()

    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def plotly(request: web.Request) -> web.Response:
        return web.Response(body=app[PLOTLY], content_type="application/javascript",
                            headers={"Cache-Control": "max-age=3600"})

    async def snapshot(request: web.Request) -> web.Response:
        snap = hub.state.snapshot()
        snap["live"] = hub.live
        snap["controls"] = hub.live and hub.control is not None
        return web.json_response(jsonable(snap))

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        client = Client()
        hub.clients.add(client)
        try:
            await resp.write(b"event: hello\ndata: {}\n\n")
            while True:
                try:
                    async with asyncio.timeout(15.0):   # not wait_for: it can swallow a cancel on 3.11
                        text = await client.queue.get()
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if client.resync:
                    client.resync = False
                    await resp.write(b"event: resync\ndata: {}\n\n")
                await resp.write(f"data: {text}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            hub.clients.discard(client)
        return resp

    async def control(request: web.Request) -> web.Response:
        op = request.match_info["op"]
        if op not in CONTROL_OPS:
            return web.json_response({"ok": False, "error": f"unknown control {op[:40]!r}"}, status=404)
        given = request.headers.get("X-Xdream-Token", "")
        if token and not secrets.compare_digest(given, token):
            return web.json_response({"ok": False, "error": "controls need the dashboard's token"}, status=403)
        if hub.control is None:
            return web.json_response({"ok": False, "error": "a finished session has no controls"}, status=409)
        try:
            reply = await hub.control(op)
        except Exception as exc:   # the server is gone, or refused: the page says so
            log.warning("control %s failed: %s", op, exc)
            return web.json_response({"ok": False, "error": str(exc)[:300]}, status=502)
        return web.json_response(jsonable(reply))

    app[PLOTLY] = plotly_js()
    app.router.add_get("/", index)
    app.router.add_get("/static/plotly.min.js", plotly)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/snapshot", snapshot)
    app.router.add_get("/api/events", events)
    app.router.add_post("/api/control/{op}", control)
    return app


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Listen; returns the runner (to clean up) and the page's URL (the real port for port 0)."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for address in runner.addresses:   # the real port, for port 0
        bound = address[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return runner, f"http://{shown}:{bound}/"
