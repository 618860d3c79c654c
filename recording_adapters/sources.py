"""Rig sources: the contract every adapter meets, and the registry that builds one by name.

A rig source is any object with

    channels: int                      channels it reports spikes on (0..channels-1)
    poll(timeout_s) -> RigEvents       what arrived, waiting at most timeout_s for something
    close()                            release sockets / files / devices

`poll` returns recording_adapters.events.RigEvents: event codes as (t, code) and
spikes (times, channels), all in the rig's own clock in seconds, plus optional
photodiode threshold-crossing times, plus `watermark`: every event before this rig
time has been delivered (None: no new promise).  The counter closes a window
only once the watermark has passed its end, so a source must not advance the
watermark past data it may still deliver.  A source that sees its clock go back
(an acquisition restart) returns the events from before the jump first, and the
ones after it in a later poll: the counter detects the jump from the watermark.

Bad input from the rig (truncated packets, corrupt headers, a stream that
stops) is logged and skipped; `poll` never raises for it.

Each adapter class is built as `Cls(**options)` with string options it parses
itself (host, ports, channels, ...), so that
`xdream record --rig NAME --rig-option key=value` reaches a real rig.
"""

from __future__ import annotations

import importlib
import inspect

from xdream.errors import ConfigError

# name -> "module:Class", imported only when asked for (each pulls its own client library)
ADAPTERS: dict[str, str] = {
    "openephys": "recording_adapters.openephys:OpenEphysSource",
    "intan": "recording_adapters.intan:IntanSource",
    "lsl": "recording_adapters.lsl:LslSource",
    "plexon": "recording_adapters.plexon:PlexonSource",
    "blackrock": "recording_adapters.blackrock:BlackrockSource",
}


def load_class(registry: dict[str, str], name: str, what: str):
    """The class registered under `name`; ConfigError naming the known ones otherwise."""
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(sorted(registry))}")
    module, _, cls = registry[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what} {name!r} ({registry[name]}) cannot be loaded: {exc}") from exc


def check_options(cls, options: dict, what: str, skip: int = 0) -> None:
    """ConfigError for options the class's constructor does not take, listing those it does."""
    params = list(inspect.signature(cls).parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{what} takes no option {', '.join(map(repr, unknown))}; "
                          f"its options: {', '.join(known) or '(none)'}")


def build_source(name: str, options: dict[str, str]):
    """The rig source `name` (a key of ADAPTERS), built with its string options."""
    cls = load_class(ADAPTERS, name, "rig adapter")
    check_options(cls, options, f"rig adapter {name!r}")
    return cls(**options)


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """['key=value', ...] from the command line -> dict; ConfigError for a pair without '='."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--rig-option wants key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out
