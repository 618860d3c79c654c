"""Typed adapter options: declared once per adapter, converted and checked here.

An adapter declares its options as a frozen dataclass deriving from
SourceOptions, each field typed and defaulted:

    @dataclass(frozen=True)
    class Options(SourceOptions):
        host: str = "127.0.0.1"
        port: Port = 5556                         # Annotated[int, Range(1, 65535)]
        code_lines: tuple[Annotated[int, Range(0, 63)], ...] = tuple(range(8))
        strobe_line: Annotated[int, Range(0, 63)] | None = None
        plugin: Literal["zmq-interface", "event-broadcaster"] = "zmq-interface"

The types this module knows: int, float, bool, str, Literal[...] of strings,
X | None, unions (tried in order), tuple[X, ...], and Annotated[X, Range(...),
Pattern(...)] for bounds and shapes.  Built with typed values, an Options
instance checks them in __post_init__; `from_strings` first converts the
command line's strings (`--rig-option key=value`) to the declared types: "" is
None for an optional field and () for a tuple, a tuple is comma-separated
("0,1,2"; integers also as a range "0-7"), a bool is true/false, yes/no,
on/off or 1/0.  A wrong value raises OptionError (a ConfigError) naming the
option, the value and what it wants; `check()` is the hook for rules across
fields.  Nothing else in recording_adapters parses an option string.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from xdream.errors import ConfigError

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_INT = re.compile(r"[+-]?\d+")
_INT_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
_MAX_RANGE = 4096          # "0-99999999" is a typo, not a list to build


class OptionError(ConfigError):
    """One option's value is wrong (callers that know the adapter put its name first)."""

    def __init__(self, option: str, value: object, want: str):
        self.option, self.value, self.want = option, value, want
        super().__init__(f"option {option} must be {want}; got {'nothing' if value is None else repr(value)}")


class UnknownOption(ConfigError):
    """An option name the adapter does not declare; the message lists those it does."""


def labelled(exc: ConfigError, label: str) -> ConfigError:
    """`exc` with the adapter's name in front: "rig adapter 'intan': option ..." """
    sep = " " if isinstance(exc, UnknownOption) else ": "
    return ConfigError(f"{label}{sep}{exc}")


@dataclass(frozen=True)
class Range:
    """Bounds of a number (inclusive; `low_open`: strictly above low)."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def holds(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return self.high is None or x <= self.high

    def describe(self) -> str:
        if self.low is not None and self.high is not None and not self.low_open:
            return f"in {self.low:g}..{self.high:g}"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Pattern:
    """A text value that must match `regex` whole (case ignored); `example` goes into messages."""
    regex: str
    example: str

    def holds(self, s: str) -> bool:
        return re.fullmatch(self.regex, s, re.IGNORECASE) is not None

    def describe(self) -> str:
        return f"like {self.example}"


# the shapes most adapters share
Port = Annotated[int, Range(1, 65535)]
Seconds = Annotated[float, Range(0)]              # a duration, 0 allowed
PositiveSeconds = Annotated[float, Range(0, low_open=True)]
Hertz = Annotated[float, Range(0, low_open=True)]


class _Mismatch(Exception):
    """A value does not fit a type (internal: turned into OptionError with the whole type described)."""


@dataclass(frozen=True)
class SourceOptions:
    """Base of every adapter's Options; a subclass adds typed, defaulted fields."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                fixed = _coerce(value, hints[f.name])
            except _Mismatch:
                text = isinstance(value, str)
                hint = " (given as text: command-line strings go through from_strings)" if text else ""
                raise OptionError(f.name, value, describe(hints[f.name]) + hint) from None
            if fixed is not value:
                object.__setattr__(self, f.name, fixed)    # a list given for a tuple, an int for a float
        self.check()

    def check(self) -> None:
        """Rules across fields (e.g. a line outside the code lines): raise OptionError."""

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_strings(cls, raw: Mapping[str, object]):
        """The command line's key=value strings (typed values pass as they are) -> Options."""
        known = cls.option_names()
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise UnknownOption(f"takes no option {', '.join(map(repr, unknown))}; "
                                f"its options: {', '.join(known) or '(none)'}")
        hints = _hints(cls)
        values = {}
        for name, value in raw.items():
            tp = hints[name]
            if isinstance(value, str):
                try:
                    value = _parse(value, tp)
                except _Mismatch:
                    raise OptionError(name, value, describe(tp)) from None
            values[name] = value
        return cls(**values)

    def as_strings(self) -> dict[str, str]:
        """The inverse of from_strings: what `--rig-option` would say for these values."""
        return {f.name: _format(getattr(self, f.name)) for f in dataclasses.fields(self)}


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls, include_extras=True)
    return _HINTS[cls]


def _split(tp) -> tuple[Any, tuple]:
    """(the bare type, its Range/Pattern checks)."""
    if typing.get_origin(tp) is Annotated:
        return tp.__origin__, tuple(tp.__metadata__)
    return tp, ()


def _members(tp) -> tuple | None:
    """The members of a union, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _checked(value, checks: tuple):
    for c in checks:
        if isinstance(c, Range) and not c.holds(value):
            raise _Mismatch
        if isinstance(c, Pattern) and not c.holds(value):
            raise _Mismatch
    return value


def _coerce(value, tp):
    """`value` if it fits `tp` (normalised: an int for a float, a list for a tuple), else _Mismatch."""
    base, checks = _split(tp)
    members = _members(base)
    if members is not None:
        for m in members:
            try:
                return _coerce(value, m)
            except _Mismatch:
                continue
        raise _Mismatch
    if base is type(None):
        if value is None:
            return None
        raise _Mismatch
    if typing.get_origin(base) is Literal:
        if isinstance(value, str) and value in typing.get_args(base):
            return value
        raise _Mismatch
    if typing.get_origin(base) is tuple:
        if not isinstance(value, (tuple, list, range)):
            raise _Mismatch
        item = typing.get_args(base)[0]
        items = [_coerce(v, item) for v in value]
        out = value if isinstance(value, tuple) and all(a is b for a, b in zip(items, value)) else tuple(items)
        return _checked(out, checks)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _checked(value, checks)
        raise _Mismatch
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return _checked(value if isinstance(value, float) else float(value), checks)
        raise _Mismatch
    if base is str:
        if isinstance(value, str):
            return _checked(value, checks)
        raise _Mismatch
    raise TypeError(f"an option of type {tp!r}: recording_adapters.options knows int, float, bool, str, "
                    "Literal, X | None, unions and tuple[X, ...]")


def _parse(text: str, tp):
    """A command-line string -> a value of `tp` (checked), else _Mismatch."""
    base, checks = _split(tp)
    members = _members(base)
    s = text.strip()
    if members is not None:
        for m in members:
            try:
                return _parse(text, m)
            except _Mismatch:
                continue
        raise _Mismatch
    if base is type(None):
        if s == "":
            return None
        raise _Mismatch
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        parts = [p.strip() for p in s.split(",") if p.strip()]
        span = _INT_RANGE.fullmatch(parts[0]) if _split(item)[0] is int and len(parts) == 1 else None
        if span:
            a, b = int(span.group(1)), int(span.group(2))
            if not 0 <= b - a < _MAX_RANGE:
                raise _Mismatch
            return _checked(tuple(_coerce(i, item) for i in range(a, b + 1)), checks)
        return _checked(tuple(_parse(p, item) for p in parts), checks)
    if base is bool:
        low = s.lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise _Mismatch
    if base is int:
        if _INT.fullmatch(s):
            return _coerce(int(s), tp)
        raise _Mismatch
    if base is float:
        try:
            number = float(s)
        except ValueError:
            raise _Mismatch from None
        return _coerce(number, tp)
    return _coerce(s, tp)


def describe(tp) -> str:
    """What a value of `tp` looks like, for messages and docs."""
    base, checks = _split(tp)
    bounds = " ".join(c.describe() for c in checks)
    members = _members(base)
    if members is not None:
        words = [describe(m) for m in members if m is not type(None)]
        text = ", or ".join(words)
        return text + (", or empty" if type(None) in members else "")
    if typing.get_origin(base) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(base)))
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        if _split(item)[0] is int:
            text = f"integers {' '.join(c.describe() for c in _split(item)[1])}".rstrip()
            return f"{text}, comma-separated or a range FIRST-LAST (e.g. 0-7)"
        item_base, item_checks = _split(item)
        if item_base is str:
            return " ".join(["comma-separated text", *(c.describe() for c in item_checks)])
        return f"comma-separated values, each {describe(item)}"
    name = {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(base, repr(base))
    return f"{name} {bounds}".rstrip()


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(_format(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)

