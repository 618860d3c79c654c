"""The recorder inside the server's process (`xdream serve CONFIG --rig NAME`).

The same Recorder as `xdream record`, on a daemon thread, with its own
PeerConnection to the server's own endpoint: the same protocol, the same
journal-before-ack and the same reconnects as a recorder on another PC (one
code path). The rig adapter runs on this thread, never on the server's asyncio
loop. A rig that fails ends only this thread, with an error in the log: the
server goes on, and the presentations nobody counts time out as missing by the
server's rules (an `xdream record` may join meanwhile and take over).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from recording_adapters.base import RigStream
from recording_adapters.recorder import Recorder
from xdream.errors import XdreamError
from xdream.peer import PeerConnection

log = logging.getLogger(__name__)

# a server bound to every interface is reached on loopback from inside its own process
_ANY_HOST = ("tcp://0.0.0.0:", "tcp://*:")


class InServerRecorder:
    """Give `source` (already built) or `make_source` (called on the thread, for
    adapters whose connecting may block or fail); `start(endpoint)` once the
    server has bound, `stop()` when the session has ended."""

    def __init__(self, *, source: RigStream | None = None, make_source: Callable[[], RigStream] | None = None,
                 counter_options: dict | None = None, name: str = "recorder"):
        if (source is None) == (make_source is None):
            raise ValueError("give exactly one of source and make_source")
        self._source = source
        self._make_source = make_source
        self.counter_options = counter_options or {}
        self.name = name
        self.curve = None   # CURVE keys (xdream/curve.py), set before start() for a server that requires them
        self.reported = 0
        self.missing = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, endpoint: str) -> None:
        """Only starts the thread: safe to call from the server's event loop."""
        for prefix in _ANY_HOST:
            if endpoint.startswith(prefix):
                endpoint = "tcp://127.0.0.1:" + endpoint[len(prefix):]
        self._thread = threading.Thread(target=self._run, args=(endpoint,), name="in-server-recorder",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (it has normally stopped already, at the server's END) and release the rig."""
        self._halt.set()
        if self._thread is None:
            if self._source is not None:
                self._source.close()   # the server never listened: the thread never took the source
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("the in-server recorder did not stop within %.0f s", timeout_s)

    def _open_source(self) -> RigStream:
        if self._source is not None:
            return self._source
        if self._make_source is None:     # __init__ takes exactly one of them
            raise ValueError("give exactly one of source and make_source")
        return self._make_source()

    def _run(self, endpoint: str) -> None:
        try:
            source = self._open_source()
        except Exception as exc:   # a rig that cannot be reached must not take the server down
            self.error = exc
            log.error("in-server recorder: the rig could not be opened: %s; no counts from this process "
                      "(presentations will be reported missing unless an `xdream record` joins)", exc,
                      exc_info=not isinstance(exc, (XdreamError, OSError)))
            return
        recorder = None
        try:
            conn = PeerConnection(endpoint, "recorder", self.name, channels=source.channels,
                                  curve=self.curve)
            recorder = Recorder(conn, source, self.counter_options, halt=self._halt)
            recorder.run()
            log.info("in-server recorder: reported counts for %d presentations (%d missing)",
                     recorder.reported, recorder.missing)
        except Exception as exc:
            self.error = exc
            log.exception("in-server recorder stopped: %s; the server goes on without it "
                          "(presentations will be reported missing unless an `xdream record` joins)", exc)
            if recorder is None:
                source.close()
        finally:
            if recorder is not None:
                self.reported, self.missing = recorder.reported, recorder.missing
