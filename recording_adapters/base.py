"""The rig-source contract: the base class every rig adapter derives from.

A rig source reads one acquisition system's stream and hands on what the
recorder needs, in the rig's own clock:

    channels: int                  channels it reports spikes on (0..channels-1)
    poll(timeout_s) -> RigEvents   what arrived, waiting at most about timeout_s for something
    close()                        release sockets / files / devices; a second call does nothing
    with Source(...) as s:         close() on the way out

`poll` returns recording_adapters.events.RigEvents: event codes as (t, code)
and spikes (times, channels), all in the rig's clock in seconds, plus
optional photodiode threshold-crossing times, plus `watermark`: every event
before this rig time has been delivered (None: no new promise).  The counter
closes a window only once the watermark has passed its end, so a source must
not advance the watermark past data it may still deliver.  A source that sees
its clock go back (an acquisition restart) returns the events from before the
jump first, and the ones after it in a later poll: the counter detects the
jump from the watermark (the one time a watermark may go back).

Bad input from the rig (truncated packets, corrupt headers, a stream that
stops) is logged and skipped; `poll` never raises for it.

Options: each adapter declares a frozen dataclass `Options` (a
recording_adapters.options.SourceOptions) with typed, defaulted fields; the
base class builds and checks it, so an adapter never parses an option string:

    IntanSource(IntanSource.Options(channels=64))    # typed
    IntanSource(channels=64)                         # the same, fields as keywords
    IntanSource.from_strings({"channels": "64"})     # the command line's strings

A subclass implements `_open(options)` (connect; raise ConfigError or
SessionError if it cannot), `_poll(timeout_s)` and `_close()`; `_close` must
work on a half-opened source too, since a failed `_open` is followed by it.
Like python-neo's BaseRawIO, the public methods are here and call the
private ones.  docs/adapters.md, "Writing an adapter", shows a whole one;
tests/test_adapter_compliance.py is the suite every adapter passes.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, Self

from recording_adapters.events import RigEvents
from recording_adapters.options import (
    OptionError,
    SourceOptions,
    UnknownOption,
    labelled,
)
from xdream.errors import ConfigError, SessionError

log = logging.getLogger(__name__)


class RigStream(Protocol):
    """What a recorder uses of a rig source: every RigSource, and the simulators' stand-ins
    (simulators.simulated_source.SimulatedSource, which wraps a RigSource or a simulated rig),
    which are not RigSource subclasses."""

    channels: int

    def poll(self, timeout_s: float) -> RigEvents: ...

    def close(self) -> None: ...


class RigSource(abc.ABC):
    """A rig's stream as event codes, spikes and a watermark (see the module docstring)."""

    name: ClassVar[str] = ""                               # its registry name, for messages
    Options: ClassVar[type[SourceOptions]] = SourceOptions  # no options unless a subclass declares them
    channels: int
    options: Any                                           # the subclass's Options, as built

    def __init__(self, options: SourceOptions | None = None, /, **fields: object) -> None:
        self._closed = False
        self.options = self._make_options(options, fields)
        try:
            self._open(self.options)
        except BaseException:
            self._close_quietly()
            raise
        channels = getattr(self, "channels", None)
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            self._close_quietly()
            raise ConfigError(f"{self.label()}: channels must be a positive integer, got {channels!r}")

    # --- options -------------------------------------------------------------------------
    @classmethod
    def label(cls) -> str:
        return f"rig adapter {cls.name or cls.__name__!r}"

    @classmethod
    def options_from_strings(cls, raw: Mapping[str, object], label: str | None = None) -> SourceOptions:
        """The command line's `--rig-option key=value` strings -> this adapter's Options.

        ConfigError names the adapter, the option, the value and what it wants; an
        unknown option's message lists the known ones."""
        try:
            return cls.Options.from_strings(raw)
        except (OptionError, UnknownOption) as exc:
            raise labelled(exc, label or cls.label()) from None

    @classmethod
    def from_strings(cls, raw: Mapping[str, object]) -> Self:
        """Built from the command line's strings (recording_adapters.sources.build_source's path)."""
        return cls(cls.options_from_strings(raw))

    @classmethod
    def _make_options(cls, options: SourceOptions | None, fields: Mapping[str, object]) -> SourceOptions:
        if options is not None:
            if fields:
                raise TypeError(f"{cls.__name__}: give an Options instance or keyword fields, not both")
            if not isinstance(options, cls.Options):
                raise TypeError(f"{cls.__name__} wants {cls.__name__}.Options, got {type(options).__name__}")
            return options
        unknown = sorted(set(fields) - set(cls.Options.option_names()))
        try:
            if unknown:
                raise UnknownOption(f"takes no option {', '.join(map(repr, unknown))}; "
                                    f"its options: {', '.join(cls.Options.option_names()) or '(none)'}")
            return cls.Options(**fields)
        except (OptionError, UnknownOption) as exc:
            raise labelled(exc, cls.label()) from None

    # --- the contract --------------------------------------------------------------------
    def poll(self, timeout_s: float) -> RigEvents:
        """What arrived, waiting at most about timeout_s for something to arrive."""
        if self._closed:
            raise SessionError(f"{self.label()}: poll() after close()")
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s >= 0):
            raise ValueError(f"poll timeout_s must be a finite number >= 0, got {timeout_s!r}")
        return self._poll(float(timeout_s))

    def close(self) -> None:
        """Release what the source holds; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- what a subclass writes ----------------------------------------------------------
    @abc.abstractmethod
    def _open(self, options: Any) -> None:
        """Connect to the rig and set `self.channels`; raise ConfigError / SessionError if it cannot."""

    @abc.abstractmethod
    def _poll(self, timeout_s: float) -> RigEvents:
        """One poll, as the contract says; never raises for bad rig input."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release everything; also called after a failed _open, on a half-opened source."""

    def _close_quietly(self) -> None:
        self._closed = True
        try:
            self._close()
        except Exception as exc:    # closing must not hide why we are closing
            log.warning("%s: closing after a failed start: %s", self.label(), exc)
