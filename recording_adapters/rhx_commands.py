"""Intan RHX's command port: commands out, each command's reply matched to it,
however TCP cuts or joins the bytes.

What RHX does (Intan-Technologies/Intan-RHX, v3.4.0):
- GUI/Widgets/tcpdisplay.cpp, TCPDisplay::readClientCommand: whatever one read
  of the socket returns (Engine/Processing/tcpcommunicator.cpp,
  TCPCommunicator::read: readAll) is parsed at once by parseCommands: split on
  ';', a trailing ';' accepted, blank commands dropped.
- Each command's answer is its own write (TCPDisplay::TCPReturn / TCPError ->
  TCPCommunicator::writeQString: socket->write, then waitForBytesWritten),
  with nothing to end it; a `set` or `execute` that succeeds writes nothing
  (Engine/Processing/commandparser.cpp).  One read on this side may hold part
  of a reply, one reply, or several.
- CommandParser::setRunModeCommand: `set runmode run` and `record` call
  runController(), which returns only when the board stops; what follows in
  the same read is parsed only then.

So a reply's end is known only from what comes after it: every command here
is followed by `get runmode`, whose answer (CommandParser::getRunModeCommand:
"Return: RunMode Stop|Run|Record|Trigger") closes the reply of the command
before it.  Those four words are no prefix of one another, so a match is whole
whatever byte comes next.  The n-th answer of `get runmode` closes the n-th
command: whatever came before it since the (n-1)-th is that command's reply.

What RHX's parser asks of a client: each transmission ends with ';' (two
writes that TCP joins into one read stay two lists of commands) and stays
small (under one Ethernet segment, so that TCP does not cut a command across
two reads, which RHX would parse as two broken commands; nothing a client does
can mend that), and the next goes out only when the last is answered.
`set runmode run|record` goes alone and unanswered (`send_unanswered`): an
error it draws comes later, unasked, and is logged.
"""

from __future__ import annotations

import logging
import re
import select
import socket
import time
from collections import deque
from dataclasses import dataclass

from xdream.errors import SessionError

log = logging.getLogger(__name__)

SENTINEL = "get runmode"
_MODE = re.compile(r"Return: RunMode (Stop|Run|Record|Trigger)")
MAX_TRANSMISSION = 1000      # bytes: under one Ethernet segment (MSS 1460) with room for a VPN's headers


@dataclass
class _Pending:
    command: str
    asked: bool                 # ask() waits for it; a posted one is handed out by pump()
    reply: str | None = None
    done: bool = False


def is_sentinel(command: str) -> bool:
    return " ".join(command.lower().split()) == SENTINEL


class RhxCommandPort:
    """One connection to RHX's command port (one client only: tcpcommunicator.cpp)."""

    def __init__(self, sock: socket.socket, timeout_s: float):
        self.sock = sock
        self.timeout_s = timeout_s
        self._text = ""
        self._pending: deque[_Pending] = deque()
        self._answered: list[tuple[str, str | None]] = []   # posted commands whose replies came
        self.last_unanswered: str | None = None              # for RHX's unasked words

    # -- sending ---------------------------------------------------------------------------
    def ask(self, commands: list[str]) -> list[str | None]:
        """Send `commands`, wait for each one's reply (None: RHX said nothing, i.e. it took it)."""
        out: list[str | None] = []
        for part in transmissions(commands):
            entries = self._send(part, asked=True)
            deadline = time.monotonic() + self.timeout_s
            while not entries[-1].done:
                left = deadline - time.monotonic()
                if left <= 0:
                    waiting = next(e.command for e in entries if not e.done)
                    raise SessionError(f"intan: no answer from RHX's command port to {waiting!r} within "
                                       f"{self.timeout_s:.1f} s (so far: {self._text!r})")
                self._read(left)
            out += [e.reply for e in entries]
        return out

    def post(self, commands: list[str]) -> None:
        """Send without waiting; the replies come out of pump()."""
        for part in transmissions(commands):
            self._send(part, asked=False)

    def send_unanswered(self, command: str) -> None:
        """A command nothing may follow in its read (`set runmode run|record`): sent alone."""
        self._read(0.0)                  # whatever RHX said before is not its answer
        self.sock.sendall(f"{command};".encode("latin-1"))
        self.last_unanswered = command

    def pump(self) -> list[tuple[str, str | None]]:
        """Read what has come (not waiting); the posted commands answered since the last call."""
        self._read(0.0)
        out, self._answered = self._answered, []
        return out

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def _send(self, commands: list[str], asked: bool) -> list[_Pending]:
        if not self._pending:
            self._read(0.0)              # unasked words already here must not be taken for a reply
        entries = [_Pending(c, asked) for c in commands]
        self._pending.extend(entries)
        self.sock.sendall(encode(commands).encode("latin-1"))
        return entries

    # -- receiving -------------------------------------------------------------------------
    def _read(self, timeout_s: float) -> None:
        """Read once if anything comes within timeout_s; SessionError if RHX closed the port."""
        ready, _, _ = select.select([self.sock], [], [], timeout_s)
        if not ready:
            return
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            raise SessionError(f"intan: RHX's command connection failed: {exc}") from exc
        if not data:
            raise SessionError("intan: RHX closed the command connection")
        self._feed(data.decode("latin-1"))

    def _feed(self, text: str) -> None:
        self._text += text
        while self._pending:
            m = _MODE.search(self._text)
            if m is None:
                break
            entry = self._pending.popleft()
            before = self._text[:m.start()].strip()
            if is_sentinel(entry.command):    # its own answer closes it
                entry.reply = (before + " " + m.group(0)).strip() if before else m.group(0)
            else:
                entry.reply = before or None
            entry.done = True
            self._text = self._text[m.end():]
            if not entry.asked:
                self._answered.append((entry.command, entry.reply))
        if not self._pending and self._text.strip():
            # nothing asked: an error of a command sent unanswered (or RHX's own words)
            log.error("intan: RHX says, unasked%s: %s",
                      f" (after {self.last_unanswered!r})" if self.last_unanswered else "", self._text.strip())
            self._text = ""


def encode(commands: list[str]) -> str:
    """One transmission: each command followed by the sentinel, ending with ';'."""
    return "".join(f"{c};" if is_sentinel(c) else f"{c};{SENTINEL};" for c in commands)


def transmissions(commands: list[str]) -> list[list[str]]:
    """Commands in groups whose transmission stays within MAX_TRANSMISSION bytes."""
    parts: list[list[str]] = []
    size = 0
    for c in commands:
        n = len(encode([c]))
        if not parts or size + n > MAX_TRANSMISSION:
            parts.append([])
            size = 0
        parts[-1].append(c)
        size += n
    return parts
