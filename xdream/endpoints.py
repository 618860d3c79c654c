"""ZeroMQ endpoints checked before use: one clear line for a bad one, never a ZMQError traceback.

libzmq's own checks come late or not at all: `localhost:5555` and
`tcp://nonsense` raise a bare EINVAL, a port above 65535 is bound as some
other port (libzmq takes it modulo 65536) or connected to for ever, and a
host name that does not resolve is retried silently until the peer's welcome
times out.  So every role checks its endpoint here first: `xdream serve`
(network.bind, --bind), `present`, `record` and `bridge` (--server).

    tcp://HOST:PORT    HOST an IPv4 address, [IPv6], a host name, or (bind only)
                       * or an interface name; PORT 1..65535, or (bind only) 0 or *
                       for a free port
    ipc://PATH         a Unix socket (one machine)
    inproc://NAME      one process (tests)
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket

from xdream.errors import ConfigError, SessionError

SCHEMES = ("tcp", "ipc", "inproc")
_TCP = re.compile(r"^(?P<host>\[[^\]]*\]|[^:\[\]]*):(?P<port>[^:]*)$")


def split_tcp(endpoint: str, what: str) -> tuple[str, str]:
    """(host, port) of a tcp:// endpoint, checked for shape only."""
    rest = endpoint[len("tcp://"):]
    m = _TCP.match(rest)
    if m is None or not m["host"] or not m["port"]:
        raise ConfigError(f"{what} = {endpoint!r}: a TCP endpoint is tcp://HOST:PORT, "
                          f"e.g. tcp://127.0.0.1:5555")
    return m["host"], m["port"]


def _scheme(endpoint: str, what: str) -> str:
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise ConfigError(f"{what} = {endpoint!r}: not an endpoint; expected tcp://HOST:PORT "
                          f"(e.g. tcp://127.0.0.1:5555), ipc://PATH or inproc://NAME")
    scheme = endpoint.split("://", 1)[0]
    if scheme not in SCHEMES:
        raise ConfigError(f"{what} = {endpoint!r}: unknown transport {scheme!r}; allowed: "
                          f"{', '.join(SCHEMES)}")
    if not endpoint.split("://", 1)[1]:
        raise ConfigError(f"{what} = {endpoint!r}: nothing after {scheme}://")
    return scheme


def _port(endpoint: str, port: str, what: str, *, bind: bool) -> None:
    if bind and port == "*":
        return
    low = 0 if bind else 1
    if not port.isdigit() or not low <= int(port) <= 65535:
        allowed = "0..65535 or * (0 and *: a free port)" if bind else "1..65535"
        raise ConfigError(f"{what} = {endpoint!r}: port {port!r} is not a TCP port; allowed: {allowed}")


def check_bind(endpoint: str, what: str = "network.bind") -> str:
    """Where a server may listen (shape and port); the bind itself says whether the address is here."""
    if _scheme(endpoint, what) == "tcp":
        host, port = split_tcp(endpoint, what)
        _port(endpoint, port, what, bind=True)
    return endpoint


def check_connect(endpoint: str, what: str = "--server") -> str:
    """Where a peer connects: shape, port, and (for a host name) that the name resolves."""
    if _scheme(endpoint, what) == "tcp":
        host, port = split_tcp(endpoint, what)
        if host == "*":
            raise ConfigError(f"{what} = {endpoint!r}: * is for binding; connect to the server's address")
        _port(endpoint, port, what, bind=False)
        name = host[1:-1] if host.startswith("[") else host
        try:
            ipaddress.ip_address(name)
        except ValueError:
            try:
                socket.getaddrinfo(name, int(port), type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                raise ConfigError(f"{what} = {endpoint!r}: host {name!r} does not resolve ({exc}); "
                                  f"give the server's IP address or a known host name") from None
    return endpoint


_BIND_ERRORS = {
    errno.EADDRINUSE: "the port is in use (another server, or another program: `ss -ltnp` names it); "
                      "use another port, or port 0 for a free one",
    errno.EADDRNOTAVAIL: "that address is not one of this machine's; bind 127.0.0.1 (this PC only), "
                         "0.0.0.0 / * (every interface) or one of this PC's own addresses",
    errno.ENODEV: "no such address or network interface on this machine; give an IP address "
                  "(e.g. tcp://127.0.0.1:5555) or an interface name",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


def bind_socket(sock, endpoint: str, what: str = "network.bind") -> str:
    """Bind a ZeroMQ socket; returns the endpoint bound (the real port for port 0).
    Every failure is one SessionError line naming the endpoint and what to do."""
    import zmq

    check_bind(endpoint, what)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        why = _BIND_ERRORS.get(exc.errno or 0, exc.strerror)
        raise SessionError(f"cannot listen at {endpoint} ({what}): {why}") from None
    bound = sock.getsockopt(zmq.LAST_ENDPOINT)
    return bound.decode() if isinstance(bound, bytes) else str(bound)
