from pathlib import Path

import pytest

from xdream import config as config_mod
from xdream.errors import ConfigError

BROKEN = Path(__file__).parent / "configs"


def test_default_config_loads_with_two_threads():
    cfg = config_mod.load(None)
    assert [t.name for t in cfg.threads] == ["a", "b"]
    assert cfg.threads[0].optimizer.population == 20
    assert cfg.response.window_ms == [50.0, 200.0]


def test_json_round_trip(tmp_path):
    cfg = config_mod.load(None)
    cfg.session.generations = 7
    config_mod.save_json(cfg, tmp_path / "c.json")
    assert config_mod.load(tmp_path / "c.json") == cfg


@pytest.mark.parametrize("name, message", [
    ("unknown_key.toml", r"config.session has unknown keys \['generatons'\]"),
    ("wrong_type.toml", "config.presentation.on_ms must be float"),
    ("too_many_codes.toml", "more event codes"),
    ("bad_window.toml", "window_ms must be"),
    ("not_toml.toml", "not valid toml"),
    ("unknown_optimizer.toml", "unknown optimizer kind 'simulated-annealing'"),
])
def test_broken_configs_fail_with_a_clear_message(name, message):
    with pytest.raises(ConfigError, match=message):
        config_mod.load(BROKEN / name)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        config_mod.load(tmp_path / "nope.toml")
