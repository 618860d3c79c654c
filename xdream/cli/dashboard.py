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
    d.set_defaults(func=run)


def run(args) -> int:
    import asyncio

    from xdream.dashboard.live import dashboard_token, serve
    from xdream.dashboard.web import Hub
    from xdream.status_state import StatusState

    if (args.session is None) == (args.server is None):
        raise ConfigError("dashboard needs either SESSION_DIR (a finished session) or --server ENDPOINT (a live one)")
    token = dashboard_token(args.host)
    if args.server is not None:
        hub = Hub(StatusState(), live=True)
    else:
        from xdream.dashboard.journal_events import session_state
        hub = Hub(session_state(args.session), live=False)

    def on_url(url: str) -> None:
        print(f"{DASHBOARD}{url}", flush=True)
        if token:
            print(f"{CONTROL_TOKEN}{token}  (open {url}?token={token})", flush=True)

    try:
        asyncio.run(serve(hub, args.host, args.port, token, on_url, args.server, args.server_token))
    except KeyboardInterrupt:
        pass
    return 0
