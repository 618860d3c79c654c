"""The registry of rig adapters: build one by name from the command line's options.

The contract every adapter meets (channels, poll -> RigEvents, the watermark's
promise, clock jumps, close) is the base class in recording_adapters/base.py,
RigSource; its options are typed and checked by recording_adapters/options.py.
This module only finds the class:

- built-in adapters, `ADAPTERS` below (name -> "module:Class", each imported
  only when asked for: each pulls its own client library);
- adapters of other packages, declared as entry points of the group
  `xdream.rig_adapters`, e.g. in the plugin's pyproject.toml:

      [project.entry-points."xdream.rig_adapters"]
      myrig = "myrig_xdream.source:MyRigSource"

  A plugin that takes a built-in name is ignored with a warning: the built-in wins.

`build_source(name, {"key": "value"})` is what `xdream record --rig NAME
--rig-option key=value` (and `xdream serve --rig`) run; `check_source` checks
the name and options without opening the rig.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from importlib.metadata import entry_points

from recording_adapters.base import RigSource
from recording_adapters.options import SourceOptions
from xdream.errors import ConfigError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "xdream.rig_adapters"

# name -> "module:Class", imported only when asked for (each pulls its own client library)
ADAPTERS: dict[str, str] = {
    "openephys": "recording_adapters.openephys:OpenEphysSource",
    "intan": "recording_adapters.intan:IntanSource",
    "lsl": "recording_adapters.lsl:LslSource",
    "plexon": "recording_adapters.plexon:PlexonSource",
    "blackrock": "recording_adapters.blackrock:BlackrockSource",
}

_warned: set[tuple[str, str]] = set()


def registry() -> dict[str, str]:
    """Every rig adapter by name: the built-ins, then the plugins installed packages declare."""
    out = dict(ADAPTERS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in ADAPTERS:
            if ep.value != ADAPTERS[ep.name]:
                _warn_once(ep.name, ep.value, "the built-in adapter of that name is used")
            continue
        if ep.name in out and out[ep.name] != ep.value:
            _warn_once(ep.name, ep.value, f"another package registered it first ({out[ep.name]})")
            continue
        out[ep.name] = ep.value
    return out


def _warn_once(name: str, value: str, why: str) -> None:
    if (name, value) not in _warned:
        _warned.add((name, value))
        log.warning("rig adapter plugin %r (%s, entry point group %s) ignored: %s",
                    name, value, ENTRY_POINT_GROUP, why)


def load_class(registry: dict[str, str], name: str, what: str):
    """The class registered under `name` ("module:Class" or "module:Outer.Class");
    ConfigError naming the known ones otherwise."""
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(sorted(registry))}")
    module, _, attr = registry[name].partition(":")
    try:
        return functools.reduce(getattr, attr.split("."), importlib.import_module(module))
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what} {name!r} ({registry[name]}) cannot be loaded: {exc}") from exc


def adapter_class(name: str) -> type[RigSource]:
    """The RigSource class registered as `name`, built-in or plugin."""
    reg = registry()
    cls = load_class(reg, name, "rig adapter")
    if not (isinstance(cls, type) and issubclass(cls, RigSource)):
        raise ConfigError(f"rig adapter {name!r} ({reg[name]}) is not a recording_adapters.base.RigSource: "
                          "an adapter derives from it (docs/adapters.md, 'Writing an adapter')")
    return cls


def check_source(name: str, options: dict[str, str]) -> SourceOptions:
    """The adapter's typed Options from the command line's strings, without opening the rig."""
    cls = adapter_class(name)
    return cls.options_from_strings(options, f"rig adapter {name!r}")


def build_source(name: str, options: dict[str, str]) -> RigSource:
    """The rig source `name`, built from its string options (`--rig-option key=value`)."""
    cls = adapter_class(name)
    return cls(cls.options_from_strings(options, f"rig adapter {name!r}"))


def check_options(cls, options: dict, what: str, skip: int = 0) -> None:
    """ConfigError for options `cls` does not take: a RigSource's are converted and checked
    in full; any other class's are the keyword parameters of its constructor (after `skip`)."""
    if isinstance(cls, type) and issubclass(cls, RigSource):
        cls.options_from_strings(options, what)
        return
    params = list(inspect.signature(cls).parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{what} takes no option {', '.join(map(repr, unknown))}; "
                          f"its options: {', '.join(known) or '(none)'}")


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """['key=value', ...] from the command line -> dict; ConfigError for a pair without '='."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--rig-option wants key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out
