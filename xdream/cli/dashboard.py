"""`xdream dashboard`: the web dashboard, live (--server) or of a finished session (SESSION_DIR)."""

from __future__ import annotations

from xdream.errors import ConfigError
from xdream.stdout_lines import CONTROL_TOKEN, DASHBOARD


def add_parser(sub) -> None:
    d = sub.add_parser("dashboard", help="a web page of a live session (--server) or a finished one (SESSION_DIR)")
    d.add_argument("session", nargs="?", metavar="SESSION_DIR", help="a finished (or stopped) session's folder")
    d.add_argument("--server", metavar="ENDPOINT",
                   help="the server's status socket, as `xdream serve` prints it ('status on tcp://...')")
    d.add_argument("--server-token", default="", help="the server's control token, if it printed one")
    d.add_argument("--host", default="127.0.0.1",
                   help="where the page listens (default 127.0.0.1; wider, the controls need the printed token)")
    d.add_argument("--port", type=int, default=8765, help="the page's port (default 8765; 0: a free one)")
    d.add_argument("--latest-images", type=int, default=None, metavar="N",
                   help="a finished session: the latest generation's best N images per thread made again from "
                        "the codes, on the CPU (default 40; 0: none, no generator built)")
    d.set_defaults(func=run)


def run(args) -> int:
    import asyncio

    from xdream.dashboard.live import dashboard_token, serve
    from xdream.dashboard.web import Hub
    from xdream.status_state import StatusState

    if (args.session is None) == (args.server is None):
        raise ConfigError("dashboard needs either SESSION_DIR (a finished session) or --server ENDPOINT (a live one)")
    if args.latest_images is not None and args.server is not None:
        raise ConfigError("--latest-images is for a finished session (SESSION_DIR); a live one sends its images")
    if args.latest_images is not None and args.latest_images < 0:
        raise ConfigError("--latest-images must be 0 or more")
    token = dashboard_token(args.host)
    if args.server is not None:
        hub = Hub(StatusState(), live=True)
    else:
        hub = Hub(_finished_state(args.session, args.latest_images), live=False)

    def on_url(url: str) -> None:
        print(f"{DASHBOARD}{url}", flush=True)
        if token:
            print(f"{CONTROL_TOKEN}{token}  (open {url}?token={token})", flush=True)

    try:
        asyncio.run(serve(hub, args.host, args.port, token, on_url, args.server, args.server_token))
    except KeyboardInterrupt:
        pass
    return 0


def _finished_state(folder, limit: int | None):
    """The journal's fold, with the latest generation's thumbnails made again (server/latest.py)."""
    from server.latest import LATEST_IMAGES, for_dashboard, latest_generations
    from xdream.dashboard.journal_events import state_of
    from xdream.session_reader import load_session

    session = load_session(folder)
    latest = latest_generations(session, LATEST_IMAGES if limit is None else limit)
    return state_of(session, for_dashboard(latest))
