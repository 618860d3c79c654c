"""xdream.typed, the one converter from untrusted dicts to checked dataclasses:
its messages name the path, the value and what was expected, it refuses every
unknown key, and no msgspec exception gets past it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgpack
import pytest
from msgspec import Meta

from stimulus_client import config as pconfig
from xdream import config as config_mod
from xdream import protocol, typed
from xdream.errors import ConfigError, ProtocolError


@dataclass
class Leaf:
    n: Annotated[int, Meta(ge=1, le=9)]
    kind: Literal["a", "b"] = "a"
    rate: Annotated[float, Meta(gt=0)] = 1.0


@dataclass
class Tree:
    leaves: list[Leaf] = field(default_factory=list)
    size: float | None = None
    pair: Annotated[list[int], Meta(min_length=2, max_length=2)] = field(default_factory=lambda: [1, 2])


def _message(data) -> str:
    with pytest.raises(ConfigError) as info:
        typed.convert(data, Tree, root="tree", error=ConfigError)
    return str(info.value)


@pytest.mark.parametrize("data, message", [
    ({"leaves": [{"n": 1}, {"n": "two"}]}, "tree.leaves[1].n must be an integer in 1..9, got 'two'"),
    ({"leaves": [{"n": 1}, {"n": 10}]}, "tree.leaves[1].n is 10, outside 1..9"),
    ({"leaves": [{"n": True}]}, "tree.leaves[0].n must be an integer in 1..9, got True"),
    ({"leaves": [{"n": 1, "kind": "c"}]}, "tree.leaves[0].kind must be one of ['a', 'b'], got 'c'"),
    ({"leaves": [{"n": 1, "rate": 0}]}, "tree.leaves[0].rate must be float (a number) > 0, got 0"),
    ({"leaves": [{"kind": "a"}]}, "tree.leaves[0] is missing field 'n' ('tree.leaves[0].n')"),
    ({"leaves": [{"n": 1, "nn": 2, "kynd": 3}]},
     "tree.leaves[0] has unknown keys ['kynd', 'nn'] ('tree.leaves[0].kynd', 'tree.leaves[0].nn')"),
    ({"size": "big"}, "tree.size must be float (a number) or none, got 'big'"),
    ({"pair": [1]}, "tree.pair must be a list of integers of length 2, got [1]"),
    ({"leaves": {"n": 1}}, "tree.leaves must be a list of maps of Leaf fields, got {'n': 1}"),
    ([1, 2], "tree must be a map of Tree fields, got [1, 2]"),
    ({3: 1}, "tree has keys that are not strings: [3]"),
])
def test_messages_name_path_value_and_expectation(data, message):
    assert _message(data).startswith(message)


def test_a_good_dict_becomes_the_dataclass_with_defaults_and_floats():
    tree = typed.convert({"leaves": [{"n": 2, "rate": 3}], "size": 1}, Tree, root="tree", error=ConfigError)
    assert tree == Tree([Leaf(2, "a", 3.0)], 1.0, [1, 2])
    assert dataclasses.is_dataclass(tree) and type(tree.leaves[0].rate) is float and type(tree.size) is float


def test_a_huge_bad_value_is_quoted_short():
    message = _message({"leaves": [{"n": "x" * 100_000}]})
    assert len(message) < 200 and "got 'xxx" in message


def test_check_runs_the_declared_rules_on_objects_built_in_code():
    tree = Tree([Leaf(3)])
    typed.check(tree, root="tree", error=ConfigError)
    tree.leaves[0].n = 0
    with pytest.raises(ConfigError, match=r"tree.leaves\[0\].n is 0, outside 1..9"):
        typed.check(tree, root="tree", error=ConfigError)


def test_config_paths_reach_into_lists():
    with pytest.raises(ConfigError, match=r"config.threads\[1\].channel must be an integer >= 0 .*got 'one'"):
        config_mod.from_dict({"threads": [{"name": "a"}, {"name": "b", "channel": "one"}]})
    with pytest.raises(ConfigError, match=r"config.threads\[0\].optimizer has unknown keys \['populaton'\]"):
        config_mod.from_dict({"threads": [{"optimizer": {"populaton": 30}}]})


def test_validate_rechecks_a_config_changed_in_code():
    cfg = config_mod.load(None)
    cfg.session.generations = 0
    with pytest.raises(ConfigError, match="config.session.generations must be an integer >= 1, got 0"):
        cfg.validate()


def test_presenter_flags_are_rechecked():
    with pytest.raises(ConfigError, match="monitor.refresh_hz must be float .* > 0, got 0.0"):
        pconfig.apply_overrides(pconfig.load(None), frame_rate=0.0)


GOOD = {"v": protocol.PROTOCOL_VERSION, "type": "counts", "session": "s", "seq": 1, "t": 0.0,
        "body": {"block_id": 0, "pid": "p", "status": "ok", "counts": [1.0, 2.0]}}


@pytest.mark.parametrize("header, message", [
    ({**GOOD, "body": {**GOOD["body"], "counts": [1.0, "x"]}}, "counts.counts[1] must be float (a number), got 'x'"),
    ({**GOOD, "body": {**GOOD["body"], "status": "maybe"}}, "counts.status must be one of ['ok', 'missing']"),
    ({**GOOD, "body": {**GOOD["body"], 7: 1}}, "counts has keys that are not strings: [7]"),
    ({**GOOD, "extra": 1}, "envelope has unknown keys ['extra']"),
    ({**GOOD, "type": "welcome", "body": {"peer_id": "x", "heartbeat_s": 1, "peer_timeout_s": 2, "settings": {1: 2}}},
     "welcome.settings has keys that are not strings: [1]"),
    ({**GOOD, "type": "block", "body": {"block_id": 0, "generation": 0, "presentations": [
        {"pid": "a", "code": 70000, "image_id": "x", "height": 2, "width": 2}]}},
     "block.presentations[0].code is 70000, outside 1..65535"),
])
def test_wire_refusals_are_protocol_errors_with_the_path(header, message):
    with pytest.raises(ProtocolError) as info:
        protocol.decode([msgpack.packb(header)])
    assert str(info.value).startswith(message)


def test_nothing_but_protocol_error_leaves_decode():
    bomb = b"\x91" * 100_000 + b"\x00"   # arrays nested past any recursion limit
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        protocol.decode([bomb])
    with pytest.raises(ProtocolError, match="not finite"):
        protocol.decode([msgpack.packb({**GOOD, "body": {**GOOD["body"], "counts": [math.nan]}})])


def test_encode_takes_subclasses_of_builtin_numbers():
    """PsychoPy's flip times are a float subclass; numpy scalars come from the recorders."""
    import numpy as np

    class Timestamp(float):
        pass

    body = protocol.Shown(np.int64(3), "p", "shown", Timestamp(1.5), np.int32(6))
    assert protocol.decode(protocol.encode(protocol.MsgType.SHOWN, body)).body == protocol.Shown(3, "p", "shown", 1.5, 6)
