"""Untrusted data into checked dataclasses: the one way, with msgspec.

A session config (TOML/JSON), a presenter config (TOML) and every wire body a
peer sends (msgpack) arrive as plain dicts and lists; `convert` turns them into
the project's dataclasses or raises the caller's error class (ConfigError,
ProtocolError) with a sentence that names the full key path, the bad value and
what was expected:

    config.threads[1].channel must be an integer >= 0 (not negative), got 'one'
    config.session has unknown keys ['generatons'] ('config.session.generatons'); ...
    block.presentations[3].code is 0, outside 1..65535

Types, choices (`Literal`) and ranges (`Annotated[int, msgspec.Meta(ge=1)]`)
are declared on the dataclasses and checked by msgspec (https://jcristharif.com/msgspec/,
its C core validates while it builds).  msgspec refuses unknown keys only for
its own Structs, so each dataclass gets a Struct twin (same fields, types and
defaults, `forbid_unknown_fields=True`) that the data is checked into first;
the twin then becomes the dataclass, so other modules keep plain dataclasses
(`dataclasses.asdict` and friends).  `check` runs the same rules over an
object built in code (a config changed by command-line flags).

msgspec's own messages carry the path and the expected type but not the value;
`explain` looks the value up along the path (only on the error path) and
rewrites the message.  No library exception leaves this module.  Imports
neither torch nor psychopy.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
import types
import typing

import msgspec

T = typing.TypeVar("T")
_MISSING = object()
_MAX_VALUE_CHARS = 60   # a peer's bad value is quoted, not dumped: it may be megabytes
_MAX_MESSAGE_CHARS = 1000   # and so may its keys, which the messages name


def convert(data: typing.Any, cls: type[T], *, root: str, error: type[Exception]) -> T:
    """`data` (dicts, lists, scalars) as a `cls` dataclass, every key, type and range checked.

    root: what the paths start with ("config", a message type; "" for none).
    error: raised (from None) with the explained message on any mismatch.
    """
    try:
        twin = msgspec.convert(data, _twin(cls))  # type: ignore[arg-type]  # a class is hashable
        return msgspec.convert(twin, cls, from_attributes=True)
    except msgspec.ValidationError as exc:
        raise error(explain(str(exc), data, cls, root)) from None
    except RecursionError:
        raise error(f"{root or 'the config'} is nested too deeply") from None


def check(obj: typing.Any, *, root: str, error: type[Exception]) -> None:
    """The checks of `convert`, run over a dataclass instance built or changed in code."""
    try:
        msgspec.convert(obj, _twin(type(obj)), from_attributes=True)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        raise error(explain(str(exc), obj, type(obj), root)) from None


# ------------------------------------------------------------------ twins
@functools.cache
def _twin(cls: type) -> type[msgspec.Struct]:
    """A Struct with `cls`'s fields, types and defaults that refuses unknown keys."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: list[tuple] = []
    for f in dataclasses.fields(cls):
        tp = _twin_type(hints[f.name])
        if f.default is not dataclasses.MISSING:
            fields.append((f.name, tp, f.default))
        elif f.default_factory is not dataclasses.MISSING:
            fields.append((f.name, tp, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, tp))
    return msgspec.defstruct(f"{cls.__name__}Twin", fields, forbid_unknown_fields=True, module=__name__)


def _twin_type(tp):
    """`tp` with every dataclass in it replaced by its twin (lists, unions, Annotated kept)."""
    if dataclasses.is_dataclass(tp):
        return _twin(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return typing.Annotated[(_twin_type(args[0]), *tp.__metadata__)]
    if origin is list:
        return list[_twin_type(args[0])]
    if origin in (typing.Union, types.UnionType):
        return functools.reduce(operator.or_, (_twin_type(a) for a in args))
    return tp


# ------------------------------------------------------------------ messages
_AT = re.compile(r"^(?P<what>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def explain(message: str, data, cls: type, root: str) -> str:
    """msgspec's `message` about `data` (as `cls`) as a sentence with path, value and expectation."""
    try:
        text = _explain(message, data, cls, root)
    except Exception:  # noqa: BLE001 -- a gap in the rewording must not turn a bad input into a crash
        text = f"{root or 'the config'}: {message}"
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[:_MAX_MESSAGE_CHARS - 3] + "..."


def _explain(message: str, data, cls: type, root: str) -> str:
    m = _AT.match(message)
    if m is None:   # the pattern matches any text; this only keeps the types honest
        return f"{root or 'the config'}: {message}"
    what, path = m["what"], m["path"] or ""
    steps = _steps(path)
    where = _join(root, path)
    label = where or "the config"   # root "" (the presenter's file): a path's top is the file itself
    if steps is None:   # a path this module cannot walk (a key inside a free-form dict): msgspec's words
        return f"{label}: {what}"
    value, hint = _lookup(data, steps), _hint(cls, steps)
    if m["key"]:   # a map's key of the wrong type, where every key must be a string
        bad = [k for k in value if not isinstance(k, str)][:10] if isinstance(value, dict) else []
        return f"{label} has keys that are not strings: {_quote(bad)}"
    if found := re.fullmatch(r"Object contains unknown field `(.*)`", what):
        base = _optional_inner(_unwrap(hint)[0])
        known = sorted(f.name for f in dataclasses.fields(base)) if dataclasses.is_dataclass(base) else []
        unknown = [found[1]]
        if isinstance(value, dict):   # msgspec names the first; a person fixing a file wants them all
            unknown = sorted(str(k) for k in value if k not in known)[:10]
        full = ", ".join(repr(_join(where, k)) for k in unknown)
        return f"{label} has unknown keys {unknown} ({full}); unknown fields are refused, known ones: {known}"
    if found := re.fullmatch(r"Object missing required field `(.*)`", what):
        return f"{label} is missing field {found[1]!r} ({_join(where, found[1])!r}), which has no default"
    if value is _MISSING:   # cannot happen for msgspec's paths; said rather than hidden
        return f"{label}: {what}"
    shown = _quote(value)
    metas = _unwrap(hint)[1]
    lo, hi = _bounds(metas)
    if (not re.match(r"Expected `[^`]*`, got `", what) and not _lengths(metas)
            and lo and hi and (lo[0], hi[0]) == (">=", "<=")):   # a number out of a closed range
        return f"{label} is {shown}, outside {lo[1]}..{hi[1]}"
    return f"{label} must be {_describe(hint)}, got {shown}"


def _steps(path: str) -> list[str | int] | None:
    steps, pos = [], 0
    for m in _STEP.finditer(path):
        if m.start() != pos:
            return None
        steps.append(m[1] if m[1] is not None else int(m[2]))
        pos = m.end()
    return steps if pos == len(path) else None


def _join(where: str, path: str) -> str:
    if not path:
        return where
    if path[0] not in ".[":
        path = "." + path
    return (where + path) if where else path.lstrip(".")


def _lookup(data, steps: list):
    """The value at `steps` in dicts/lists, or in a dataclass's attributes; _MISSING if absent."""
    for step in steps:
        if isinstance(step, int):
            if not isinstance(data, (list, tuple)) or step >= len(data):
                return _MISSING
            data = data[step]
        elif isinstance(data, dict):
            data = data.get(step, _MISSING)
        else:
            data = getattr(data, step, _MISSING)
        if data is _MISSING:
            return _MISSING
    return data


def _hint(cls: type, steps: list):
    """The declared type at `steps` below dataclass `cls` (Annotated kept on the last one)."""
    hint = cls
    for step in steps:
        base = _unwrap(hint)[0]
        base = _optional_inner(base)
        if isinstance(step, int):
            hint = typing.get_args(base)[0] if typing.get_origin(base) is list else typing.Any
        elif dataclasses.is_dataclass(base):
            hint = typing.get_type_hints(base, include_extras=True).get(step, typing.Any)
        else:
            hint = typing.Any
    return hint


def _unwrap(hint) -> tuple[typing.Any, list[msgspec.Meta]]:
    if typing.get_origin(hint) is typing.Annotated:
        return typing.get_args(hint)[0], [m for m in hint.__metadata__ if isinstance(m, msgspec.Meta)]
    return hint, []


def _optional_inner(hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return hint


_NAMES = {int: "an integer", float: "float (a number)", str: "a string", bool: "true or false",
          dict: "a map", typing.Any: "any value"}


def _describe(hint) -> str:
    """What a value of `hint` must be, in words: 'an integer >= 1', "one of ['a', 'b']"."""
    base, metas = _unwrap(hint)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin is typing.Literal:
        text = f"one of {list(args)}"
    elif origin in (typing.Union, types.UnionType):
        text = " or ".join("none" if a is type(None) else _describe(a) for a in args)
    elif origin is list:
        text = f"a list of {_plural(_describe(args[0]))}" if args else "a list"
    elif isinstance(base, type) and dataclasses.is_dataclass(base):
        text = f"a map of {base.__name__} fields"
    else:
        text = _NAMES.get(base, getattr(base, "__name__", str(base)))
    lo, hi = _bounds(metas)
    if _lengths(metas):
        if lo and hi:
            return f"{text} of length {lo[1]}" if lo[1] == hi[1] else f"{text} of length {lo[1]}..{hi[1]}"
        return f"{text} of length {(lo or hi)[0]} {(lo or hi)[1]}"
    if lo and hi and (lo[0], hi[0]) == (">=", "<="):
        text += f" in {lo[1]}..{hi[1]}"
    elif lo or hi:
        text += " " + " and ".join(f"{b[0]} {b[1]}" for b in (lo, hi) if b)
    return text + " (not negative)" if (lo, hi) == ((">=", 0), ()) else text


def _plural(text: str) -> str:
    for one, many in (("an integer", "integers"), ("float (a number)", "numbers"), ("a string", "strings"),
                      ("true or false", "booleans"), ("a map of ", "maps of ")):
        if text.startswith(one):
            return many + text[len(one):]
    return text


def _bounds(metas: list[msgspec.Meta]) -> tuple[tuple, tuple]:
    """(op, value) of the lower and upper bound the metas set, () where none."""
    lo: tuple = ()
    hi: tuple = ()
    for m in metas:
        for op, v in ((">=", m.ge), (">", m.gt), (">=", m.min_length)):
            if v is not None:
                lo = (op, v)
        for op, v in (("<=", m.le), ("<", m.lt), ("<=", m.max_length)):
            if v is not None:
                hi = (op, v)
    return lo, hi


def _lengths(metas: list[msgspec.Meta]) -> bool:
    return any(m.min_length is not None or m.max_length is not None for m in metas)


def _quote(value) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS - 3] + "..."
