"""Every registered optimizer keeps the same contract: it maximises, it is
deterministic given its rng and its tells, NaN means 'not measured', its state
saves and restores exactly (through np.savez, without pickle), and any code
shape works."""

import io
from types import SimpleNamespace

import numpy as np
import pytest

from server.optimizers import (OPTIMIZERS, Candidates, GeneticOptimizer, Optimizer, build_optimizer,
                               from_arrays, make_optimizer, to_arrays)
from xdream.config import OptimizerConfig
from xdream.errors import OptimizerError

KINDS = sorted(OPTIMIZERS)
DIM = 8
POP = 12
GENERATIONS = 60   # enough for every kind to gain under 50% noise (the GA is the slowest)
# the optimizers' own scale: sphere-cma's literature norm (300) and sphere-es's norm floor (3 x the
# first codes') are for DeePSiM fc6 codes drawn N(0, 1), not for a quadratic around such codes
SMALL = {"sphere-cma": {"sphere_norm": 0.0}, "sphere-es": {"init_norm_factor": 1.0, "min_norm_factor": 0.5}}


def make(kind, seed=0, shape=(DIM,), pop=POP, **kw):
    return make_optimizer(kind, shape, np.random.default_rng(seed), population=pop, name=kind,
                          **{**SMALL.get(kind, {}), **kw})


TARGET = np.random.default_rng(123).normal(0.0, 1.0, DIM)


def quadratic(codes):
    """Positive (multiplicative noise needs it) and never flat; 1 at TARGET, about 0.5 at N(0, I) codes."""
    d2 = np.sum((codes.reshape(len(codes), -1) - TARGET) ** 2, axis=1)
    return 1.0 / (1.0 + d2 / (2.0 * DIM))


def evolve(opt, generations, noise=0.0, nan_fraction=0.0, seed=1):
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(generations):
        c = opt.ask()
        clean = quadratic(c.codes)
        scores = clean * np.maximum(0.0, 1.0 + noise * rng.standard_normal(len(clean)))
        scores[rng.random(len(scores)) < nan_fraction] = np.nan
        opt.tell(c.ids, scores)
        means.append(clean.mean())
    # the first generation against the last few (a generation's mean is noisy)
    return (means[0], float(np.mean(means[-5:]))) if means else (None, None)


def numbers_are_finite(state) -> bool:
    """Every float in a state, except the scores as told (pycma and nevergrad replay them, NaN and all)."""
    if isinstance(state, dict):
        return all(numbers_are_finite(v) for k, v in state.items() if k != "history")
    a = np.asarray(state)
    return not np.issubdtype(a.dtype, np.floating) or bool(np.isfinite(a).all())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_improves_a_quadratic_clean_and_noisy(kind, noise):
    first, last = evolve(make(kind), GENERATIONS, noise=noise)
    assert last > first + 0.05, f"{kind}: mean score {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("kind", KINDS)
def test_some_nan_scores_keep_the_state_finite_and_the_search_going(kind):
    opt = make(kind)
    first, last = evolve(opt, GENERATIONS, nan_fraction=0.25)
    assert numbers_are_finite(opt.state_dict()["state"])
    assert last > first + 0.05, f"{kind}: mean score {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("when", [0, 3])
def test_an_all_nan_tell_changes_nothing_that_was_learned(kind, when):
    opt = make(kind)
    start = quadratic(opt.ask().codes).mean()
    evolve(opt, when)
    c = opt.ask()
    opt.tell(c.ids, np.full(len(c.ids), np.nan))
    assert opt.generation == when + 1
    assert numbers_are_finite(opt.state_dict()["state"])
    assert np.isfinite(opt.ask().codes).all()
    _, last = evolve(opt, GENERATIONS)
    assert last > start + 0.05


def roundtrip(state):
    """Through np.savez and back, with pickle refused."""
    buf = io.BytesIO()
    np.savez(buf, **to_arrays(state))
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as arrays:
        return from_arrays(arrays)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pending", [False, True])
def test_save_and_restore_continue_bit_for_bit(kind, pending):
    opt = make(kind, seed=5)
    evolve(opt, 3, noise=0.5, nan_fraction=0.2)
    if pending:
        opt.ask()
    state = roundtrip(opt.state_dict())
    other = make(kind, seed=99)     # a fresh instance from another seed: the state decides
    other.load_state_dict(state)
    assert other.generation == opt.generation
    rng = np.random.default_rng(7)
    for _ in range(4):
        a, b = opt.ask(), other.ask()
        assert a.ids == b.ids
        np.testing.assert_array_equal(a.codes, b.codes)
        scores = quadratic(a.codes) * (1 + 0.5 * rng.standard_normal(len(a.ids)))
        scores[0] = np.nan
        opt.tell(a.ids, scores)
        other.tell(b.ids, scores)
    assert opt.rng.bit_generator.state == other.rng.bit_generator.state


@pytest.mark.parametrize("kind", KINDS)
def test_a_saved_state_is_not_changed_by_going_on(kind):
    opt = make(kind)
    evolve(opt, 2)
    saved = opt.state_dict()
    before = to_arrays(saved)
    evolve(opt, 2)
    after = to_arrays(saved)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)


@pytest.mark.parametrize("kind", KINDS)
def test_a_state_does_not_load_into_a_different_optimizer(kind):
    state = make(kind).state_dict()
    with pytest.raises(OptimizerError, match="shape"):
        make(kind, shape=(DIM + 1,)).load_state_dict(state)
    other = "ga" if kind != "ga" else "cmaes"
    with pytest.raises(OptimizerError, match="cannot load"):
        make(other).load_state_dict(state)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_codes_other_seed_other_codes(kind):
    runs = []
    for seed in (42, 42, 43):
        opt = make(kind, seed=seed)
        evolve(opt, 4, noise=0.5, nan_fraction=0.1)
        runs.append(opt.ask().codes)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("kind", KINDS)
def test_tell_checks_its_inputs(kind):
    opt = make(kind)
    c = opt.ask()
    n = len(c.ids)
    with pytest.raises(OptimizerError, match="unknown candidate ids"):
        opt.tell(["nope"] + c.ids[1:], np.zeros(n))
    with pytest.raises(OptimizerError, match="ids but scores"):
        opt.tell(c.ids, np.zeros(n - 1))
    with pytest.raises(OptimizerError, match="once"):
        opt.tell(c.ids[:-1], np.zeros(n - 1))
    with pytest.raises(OptimizerError, match="finite or NaN"):
        opt.tell(c.ids, np.r_[np.inf, np.zeros(n - 1)])
    assert opt.ask() is c      # refused tells change nothing
    opt.tell(c.ids[::-1], np.arange(float(n)))
    with pytest.raises(OptimizerError, match="second tell"):
        opt.tell(c.ids, np.zeros(n))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(4096,), (3, 5, 7)])
def test_code_shapes(kind, shape):
    opt = make(kind, shape=shape, pop=10)
    for _ in range(2):
        c = opt.ask()
        assert c.codes.shape == (len(c.ids), *shape) and np.isfinite(c.codes).all()
        opt.tell(c.ids, -np.sum(c.codes.reshape(len(c.ids), -1) ** 2, axis=1))


@pytest.mark.parametrize("kind", ["ga", "cmaes", "sphere-cma", "pycma-diag", "sphere-es"])
@pytest.mark.parametrize("shape", [(96, 27, 27), (2391,), (100,)])
def test_large_and_odd_code_shapes(kind, shape):
    opt = make(kind, shape=shape, pop=8)
    for _ in range(2):
        c = opt.ask()
        assert c.codes.shape == (8, *shape)
        opt.tell(c.ids, np.arange(8.0))


@pytest.mark.parametrize("kind", ["pycma", "nevergrad-cma"])
def test_full_covariance_refuses_codes_too_large_for_an_n_by_n_matrix(kind):
    with pytest.raises(OptimizerError, match="covariance"):
        make(kind, shape=(96, 27, 27))


@pytest.mark.parametrize("kind", KINDS)
def test_initial_codes_are_used(kind):
    init = np.random.default_rng(3).normal(size=(POP, DIM)) + 5.0
    opt = make(kind, init_codes=init)
    codes = opt.ask().codes
    # the first generation is the initial codes, or is drawn around their centre
    if kind in ("ga", "cmaes", "sphere-es"):
        np.testing.assert_array_equal(codes, init)
    elif kind == "sphere-cma":
        np.testing.assert_allclose(codes / np.linalg.norm(codes, axis=1, keepdims=True),
                                   init / np.linalg.norm(init, axis=1, keepdims=True))
    else:
        assert np.linalg.norm(codes.mean(axis=0) - 5.0) < np.linalg.norm(codes.mean(axis=0))


def test_make_optimizer_names_what_is_wrong():
    with pytest.raises(OptimizerError, match="unknown optimizer kind 'annealing'"):
        make_optimizer("annealing", (4,), np.random.default_rng(0))
    with pytest.raises(OptimizerError, match="no parameters \\['mutation_rate'\\]"):
        make_optimizer("cmaes", (4,), np.random.default_rng(0), mutation_rate=0.1)
    assert isinstance(make_optimizer("ga", (4,), np.random.default_rng(0)), GeneticOptimizer)
    assert all(issubclass(cls, Optimizer) for cls in OPTIMIZERS.values())
    assert Candidates is not None


class FakeGenerator:
    code_shape = (2, 3, 4)

    def initial_codes(self, n, rng):
        return rng.normal(size=(n, *self.code_shape))


@pytest.mark.parametrize("kind", KINDS)
def test_build_optimizer_from_config(kind):
    cfg = OptimizerConfig(kind=kind, population=10)
    opt = build_optimizer(cfg, FakeGenerator(), np.random.default_rng(0), "thread-a")
    assert opt.kind == kind and opt.name == "thread-a"
    c = opt.ask()
    assert c.codes.shape == (10, 2, 3, 4) and c.ids[0].startswith("thread-a/g000/")
    opt.tell(c.ids, np.arange(10.0))


def test_config_accepts_every_kind_and_refuses_others():
    from xdream.config import Config, ThreadConfig
    from xdream.errors import ConfigError
    for kind in KINDS:
        Config(threads=[ThreadConfig(optimizer=OptimizerConfig(kind=kind))]).validate()
    with pytest.raises(ConfigError, match="unknown optimizer kind 'annealing'"):
        Config(threads=[ThreadConfig(optimizer=OptimizerConfig(kind="annealing"))]).validate()


def test_fake_generator_is_a_namespace_stand_in():
    # build_optimizer needs only code_shape and initial_codes from a generator
    gen = SimpleNamespace(code_shape=(5,), initial_codes=lambda n, rng: rng.normal(size=(n, 5)))
    opt = build_optimizer(OptimizerConfig(kind="ga", population=4), gen, np.random.default_rng(1), "t")
    assert opt.ask().codes.shape == (4, 5)


def test_the_config_knows_every_kind_and_every_parameter_it_passes():
    import dataclasses
    import inspect
    from server.optimizers import CONFIG_PARAMS
    assert set(OptimizerConfig.KINDS) == set(OPTIMIZERS) == set(CONFIG_PARAMS)
    fields = {f.name for f in dataclasses.fields(OptimizerConfig)}
    for kind, keys in CONFIG_PARAMS.items():
        accepted = set(inspect.signature(OPTIMIZERS[kind].__init__).parameters)
        assert set(keys) <= fields & accepted, kind
