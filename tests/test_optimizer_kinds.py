"""One list of optimizer kinds (xdream/optimizer_kinds.py) for the config and the
server's registry, and the old name "ours" still loading the optimizer it named."""

from __future__ import annotations

import numpy as np
import pytest

from server.optimizers import CONFIG_PARAMS, OPTIMIZERS, SphereES, make_optimizer, registry
from server.optimizers.ga import GeneticOptimizer
from xdream import config as config_mod
from xdream.config import OptimizerConfig
from xdream.errors import OptimizerError
from xdream.optimizer_kinds import OPTIMIZER_ALIASES, OPTIMIZER_KINDS, canonical_kind


def test_the_config_and_the_registry_name_the_same_kinds_in_the_same_order():
    assert OptimizerConfig.KINDS is OPTIMIZER_KINDS
    assert tuple(OPTIMIZERS) == OPTIMIZER_KINDS == tuple(CONFIG_PARAMS)
    assert all(cls.kind == kind for kind, cls in OPTIMIZERS.items())


def test_the_registry_refuses_a_kind_named_in_one_place_only():
    with pytest.raises(OptimizerError, match=r"no class for \['cmaes'\]"):
        registry([GeneticOptimizer], kinds=("ga", "cmaes"))
    with pytest.raises(OptimizerError, match=r"no name for \['sphere-es'\]"):
        registry([GeneticOptimizer, SphereES], kinds=("ga",))
    assert registry([SphereES, GeneticOptimizer], kinds=("ga", "sphere-es")) == \
        {"ga": GeneticOptimizer, "sphere-es": SphereES}


def test_an_alias_names_a_kind_and_is_not_one():
    assert OPTIMIZER_ALIASES == {"ours": "sphere-es"}
    assert not set(OPTIMIZER_ALIASES) & set(OPTIMIZER_KINDS)
    assert set(OPTIMIZER_ALIASES.values()) <= set(OPTIMIZER_KINDS)
    assert canonical_kind("ours") == "sphere-es" and canonical_kind("ga") == "ga"


def test_a_config_saying_ours_loads_and_runs_sphere_es(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text('[[threads]]\nname = "a"\noptimizer = { kind = "ours", population = 8 }\n')
    cfg = config_mod.load(path)
    assert cfg.threads[0].optimizer.kind == "sphere-es"           # and so config.json says the new name
    assert isinstance(make_optimizer("ours", (16,), np.random.default_rng(0), population=8), SphereES)


def test_the_old_name_gives_the_same_codes_as_the_new(tmp_path):
    def run(kind):
        opt = make_optimizer(kind, (32,), np.random.default_rng(5), population=8)
        out = []
        for _ in range(3):
            c = opt.ask()
            out.append(c.codes)
            opt.tell(c.ids, -np.sum(c.codes ** 2, axis=1))
        return np.stack(out)
    np.testing.assert_array_equal(run("ours"), run("sphere-es"))


def test_a_checkpoint_saved_as_ours_restores_into_sphere_es():
    a = make_optimizer("sphere-es", (16,), np.random.default_rng(1), population=8)
    c = a.ask()
    a.tell(c.ids, np.arange(8.0))
    state = a.state_dict()
    state["kind"] = "ours"                      # as a checkpoint written before the rename
    b = make_optimizer("sphere-es", (16,), np.random.default_rng(99), population=8)
    b.load_state_dict(state)
    np.testing.assert_array_equal(a.ask().codes, b.ask().codes)
