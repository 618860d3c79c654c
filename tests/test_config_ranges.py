"""Every config field has its range checked at load (issue 12, defect 6).

tests/bad_configs/ holds one deliberately broken config per gap; its first line,
`# expect: ...`, is the start of the message it must fail with (the field, the
value and the allowed range).  The shipped configs and the tests' small config
keep loading, and each optimizer kind's minimum population in the config agrees
with what the optimizer itself accepts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import small_config
from xdream import config as config_mod
from xdream.errors import ConfigError

BAD = Path(__file__).parent / "bad_configs"
REPO = Path(__file__).resolve().parents[1]


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    return first[len("# expect: "):]


@pytest.mark.parametrize("path", sorted(BAD.glob("*.toml")), ids=lambda p: p.stem)
def test_a_broken_config_fails_naming_field_value_and_range(path):
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    assert str(info.value).startswith(_expected(path))


def test_the_fixture_folder_covers_every_gap_of_issue_12():
    names = {p.stem for p in BAD.glob("*.toml")}
    assert {"population_negative", "image_size_zero", "image_size_negative", "image_size_over_wire_limit",
            "image_size_block_too_big", "reference_count_negative", "heartbeat_zero", "peer_timeout_negative",
            "block_timeout_negative", "max_event_code_over_16_bits", "no_threads"} <= names


SESSION_CONFIGS = [p for p in sorted((REPO / "configs").glob("*.toml")) if "presenter" not in p.stem]


@pytest.mark.parametrize("path", [None, *SESSION_CONFIGS], ids=lambda p: "default" if p is None else p.stem)
def test_shipped_session_configs_still_load(path):
    cfg = config_mod.load(path)
    assert len(cfg.threads) == 2


def test_small_config_still_loads(tmp_path):
    assert small_config(tmp_path).threads[0].optimizer.population == 6


def test_a_config_changed_in_code_is_checked_again():
    cfg = config_mod.load(None)
    cfg.network.heartbeat_s = 0.0
    with pytest.raises(ConfigError, match=r"config.network.heartbeat_s must be float \(a number\) >= 0.05"):
        cfg.validate()
    cfg = config_mod.load(None)
    cfg.threads = []
    with pytest.raises(ConfigError, match=r"no \[\[threads\]\]"):
        cfg.validate()


@pytest.mark.parametrize("kind", config_mod.MIN_POPULATION)
def test_each_kinds_minimum_population_is_what_the_optimizer_accepts(kind):
    """The config refuses exactly what the optimizer would refuse later, after the folder exists."""
    from server.optimizers import make_optimizer
    from xdream.errors import OptimizerError

    least = config_mod.MIN_POPULATION[kind]
    make_optimizer(kind, (32,), np.random.default_rng(0), population=least)
    with pytest.raises(OptimizerError, match="population"):
        make_optimizer(kind, (32,), np.random.default_rng(0), population=least - 1)
    data = {"threads": [{"optimizer": {"kind": kind, "population": least - 1}}]}
    with pytest.raises(ConfigError, match=f"needs population >= {least}"):
        config_mod.from_dict(data)


async def test_a_recorder_with_fewer_channels_than_a_threads_channel_is_refused_at_hello(tmp_path, caplog):
    """A thread's channel beyond the recorder's channel count: every count would be rejected and
    each block would time out.  The recorder's hello says how many channels it has; the server
    refuses it there, with an ERROR that names the thread, its channel and the count."""
    from tests.dryrun_helpers import journal
    from tests.test_server import FakePeer, serving
    from xdream.protocol import MsgType

    cfg = small_config(tmp_path, generations=1)
    cfg.threads[0].channel = 2
    folder = tmp_path / "session"
    async with serving(cfg, folder) as (run, pres, rec):   # rec says it has 2 channels: 0 and 1
        seq = await rec.send(MsgType.HELLO, rec.hello)
        err = await rec.expect(MsgType.ERROR)
        assert err.body.ref_seq == seq
        assert "thread a listens on channel 2" in err.body.reason and "has 2 channels" in err.body.reason
        wide = FakePeer(rec.sock.context, run_endpoint(folder), "recorder", "wide", channels=3)
        await wide.join()   # enough channels: welcomed
    refused = [r for r in journal(folder) if r["kind"] == "rejected"]
    assert len(refused) == 1 and "thread a listens on channel 2" in refused[0]["reason"]
    assert not [r for r in journal(folder) if r["kind"] == "peer_joined" and r["peer"] == "rec"]
    assert any("thread a listens on channel 2" in r.getMessage() for r in caplog.records)


def run_endpoint(folder) -> str:
    from tests.dryrun_helpers import journal
    return [r for r in journal(folder) if r["kind"] == "listening"][-1]["endpoint"]
