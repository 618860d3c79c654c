"""Authenticated, encrypted transport on a lab LAN: ZeroMQ CURVE through pyzmq's zmq.auth.

CurveZMQ (http://curvezmq.org, RFC 26 of zeromq.org; pyzmq's zmq.auth,
https://pyzmq.readthedocs.io/en/latest/api/zmq.auth.html) encrypts every frame
and lets the server accept only clients whose public key it holds.  The server's
ROUTER is a CURVE server with its secret key; a ZAP handler (zmq.auth's
ThreadAuthenticator) checks each connecting client's public key against the
folder of allowed client keys.  A peer's DEALER is a CURVE client: its own key
pair and the server's public key.  A client without an allowed key never gets
past the handshake: its hello never reaches the server, no welcome comes back.

The key folder that `xdream keys` writes (make_keys):

    KEYS/server/server.key          the server's public key: give it to every peer PC
    KEYS/server/server.key_secret   the server's key pair: stays on the server PC
    KEYS/allowed/NAME.key           each client's public key: the server's allowed folder
    KEYS/clients/NAME/NAME.key_secret, NAME.key, server.key
                                    what client NAME's PC needs (copy the folder there)

The rule (check_bind): a server bound to anything but loopback requires CURVE, or
refuses to start unless told --insecure.  Imports neither torch nor psychopy.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from xdream.errors import ConfigError

log = logging.getLogger(__name__)

ZAP_DOMAIN = "xdream"


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    allowed_dir: Path


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server_public: bytes


# ------------------------------------------------------------------ files
def make_keys(folder: Path, clients: list[str]) -> dict[str, Path]:
    """A server key pair and one key pair per client name, laid out as the module docstring says.

    An existing server key is kept (clients already given its public key keep working);
    an existing client name is refused rather than overwritten."""
    folder = Path(folder)
    bad = [c for c in clients if not c or not c.replace("-", "").replace("_", "").isalnum()]
    if bad or not clients:
        raise ConfigError(f"client names must be letters, digits, '-' or '_', at least one; got {clients}")
    server_dir, allowed, client_root = folder / "server", folder / "allowed", folder / "clients"
    for d in (server_dir, allowed, client_root):
        d.mkdir(parents=True, exist_ok=True)
    if not (server_dir / "server.key_secret").is_file():
        zmq.auth.create_certificates(server_dir, "server")
    made = {"server": server_dir / "server.key_secret"}
    for name in clients:
        own = client_root / name
        if own.exists():
            raise ConfigError(f"client key {name!r} exists already in {own}; pick another name")
        own.mkdir()
        public, _ = zmq.auth.create_certificates(own, name)
        shutil.copy(public, allowed / f"{name}.key")
        shutil.copy(server_dir / "server.key", own / "server.key")
        made[name] = own / f"{name}.key_secret"
    return made


def _load(path: str | Path, what: str, secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path)
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}: cannot read the CURVE key file {path}: {exc}") from None
    if secret and secret_key is None:
        raise ConfigError(f"{what}: {path} holds no secret key; give the .key_secret file")
    return public, secret_key


def server_keys(secret_key_file: str | Path, allowed_dir: str | Path) -> ServerKeys:
    """The server's key pair (a .key_secret file) and the folder of allowed clients' public keys."""
    public, secret = _load(secret_key_file, "network.curve_server_secret_key", secret=True)
    allowed = Path(allowed_dir)
    if not allowed.is_dir() or not any(allowed.glob("*.key")):
        raise ConfigError(f"network.curve_allowed_clients: {allowed} is not a folder of client public keys "
                          f"(*.key); `xdream keys` writes them to KEYS/allowed")
    assert secret is not None
    return ServerKeys(public, secret, allowed)


def client_keys(own_secret_file: str | Path, server_public_file: str | Path) -> ClientKeys:
    """A peer's key pair (its .key_secret file) and the server's public key (server.key)."""
    public, secret = _load(own_secret_file, "--curve-key", secret=True)
    server_public, _ = _load(server_public_file, "--curve-server-key", secret=False)
    assert secret is not None
    return ClientKeys(public, secret, server_public)


def peer_keys(args) -> ClientKeys | None:
    """From a peer command's --curve-key/--curve-server-key flags (both or neither)."""
    own, server = getattr(args, "curve_key", None), getattr(args, "curve_server_key", None)
    if own is None and server is None:
        return None
    if own is None or server is None:
        raise ConfigError("CURVE needs both --curve-key (this peer's .key_secret) and --curve-server-key "
                          "(the server's server.key)")
    return client_keys(own, server)


def add_peer_flags(parser) -> None:
    """The CURVE flags of present, record and bridge."""
    parser.add_argument("--curve-key", metavar="FILE",
                        help="this peer's CURVE key pair (NAME.key_secret from `xdream keys`); with "
                             "--curve-server-key, for a server that requires CURVE (docs/protocol.md)")
    parser.add_argument("--curve-server-key", metavar="FILE", help="the server's public key (server.key)")


# ------------------------------------------------------------------ sockets
def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or localhost."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:   # '*', an interface name, a host name: may face the network
        return False


def check_bind(bind: str, keys: ServerKeys | None, insecure: bool) -> None:
    """A server bound beyond loopback requires CURVE unless it was told --insecure."""
    if keys is None and not insecure and not is_loopback(bind):
        raise ConfigError(f"network.bind {bind!r} faces the network: set network.curve_server_secret_key and "
                          f"network.curve_allowed_clients (make them with `xdream keys`; docs/protocol.md), "
                          f"or start with --insecure on a network you trust")
    if keys is None and insecure and not is_loopback(bind):
        log.warning("serving on %s without CURVE (--insecure): anyone who can reach it can join", bind)


class ServerAuth:
    """The ZAP handler that admits only the allowed clients' keys; stop() when the socket closes."""

    def __init__(self, context: zmq.Context, keys: ServerKeys):
        # a sync context on the same libzmq context: ZAP works for an asyncio server socket too
        self._shadow: zmq.Context = zmq.Context.shadow(context.underlying)
        self.auth = ThreadAuthenticator(self._shadow, log=logging.getLogger(__name__ + ".zap"))
        self.auth.start()
        self.auth.configure_curve(domain=ZAP_DOMAIN, location=str(keys.allowed_dir))
        self.keys = keys

    def allow(self, public: bytes) -> None:
        """Admit one more public key (an in-process peer's own key pair)."""
        self.auth.certs.setdefault(ZAP_DOMAIN, {})[public] = True

    def stop(self) -> None:
        self.auth.stop()


def secure_server(socket: zmq.Socket, keys: ServerKeys) -> None:
    """Make a socket, before bind, a CURVE server that asks ZAP (ServerAuth) about each client."""
    socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def secure_client(socket: zmq.Socket, keys: ClientKeys) -> None:
    """Make a socket, before connect, a CURVE client of the server whose public key it holds."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = keys.server_public


def ephemeral_client(server: ServerKeys) -> ClientKeys:
    """A fresh key pair for a peer in the server's own process (allow() its public key)."""
    public, secret = zmq.curve_keypair()
    return ClientKeys(public, secret, server.public)
