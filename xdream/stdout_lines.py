"""The stdout lines that other processes parse, in one place.

`xdream dry-run`, `xdream replay --realtime` and the tests start the roles as
processes and read where they listen from these lines, so the prefixes are a
contract: change one here and every reader follows.
"""

LISTENING = "server listening on "      # + the endpoint the server's ROUTER bound
SESSION_FOLDER = "session folder: "     # + the session folder the server writes
SCREEN_TAP = "screen tap on "           # + where a simulated rig takes the presenter's frames
STATUS = "status on "                   # + the status socket (snapshot, controls): `xdream dashboard --server`
CONTROL_TOKEN = "control token: "       # + the token controls need when the status socket is beyond loopback
DASHBOARD = "dashboard on "             # + the dashboard's address (http://127.0.0.1:PORT/)


def announce(prefix: str, value) -> None:
    """Print one such line and flush it: the reader waits for it."""
    print(f"{prefix}{value}", flush=True)
