import numpy as np
import pytest

from server.optimizers import GeneticOptimizer
from xdream.errors import OptimizerError


def ga(seed=0, shape=(8,), **kw):
    return GeneticOptimizer(shape, np.random.default_rng(seed), **kw)


def test_ask_is_idempotent_until_tell():
    opt = ga()
    first = opt.ask()
    assert opt.ask() is first
    assert first.codes.shape == (20, 8) and len(set(first.ids)) == 20
    opt.tell(first.ids, np.arange(20.0))
    assert opt.ask().ids != first.ids and opt.generation == 1


def test_tell_checks_its_inputs():
    opt = ga()
    c = opt.ask()
    with pytest.raises(OptimizerError, match="unknown candidate ids"):
        opt.tell(["nope"] + c.ids[1:], np.zeros(20))
    with pytest.raises(OptimizerError, match="ids but scores"):
        opt.tell(c.ids, np.zeros(19))
    with pytest.raises(OptimizerError, match="once"):
        opt.tell(c.ids[:19], np.zeros(19))
    with pytest.raises(OptimizerError, match="finite or NaN"):
        opt.tell(c.ids, np.r_[np.inf, np.zeros(19)])
    opt.tell(c.ids, np.zeros(20))
    with pytest.raises(OptimizerError, match="second tell"):
        opt.tell(c.ids, np.zeros(20))


def test_tell_accepts_ids_in_any_order():
    a, b = ga(3), ga(3)
    ca, cb = a.ask(), b.ask()
    scores = np.arange(20.0)
    a.tell(ca.ids, scores)
    b.tell(cb.ids[::-1], scores[::-1])
    np.testing.assert_array_equal(a.ask().codes, b.ask().codes)


def test_same_seed_same_tells_same_codes():
    runs = []
    for _ in range(2):
        opt = ga(seed=42)
        for _ in range(5):
            c = opt.ask()
            opt.tell(c.ids, -np.sum(c.codes ** 2, axis=1))
        runs.append(opt.ask().codes)
    np.testing.assert_array_equal(*runs)
    other = ga(seed=43)
    assert not np.array_equal(other.ask().codes, ga(seed=42).ask().codes)


def test_elite_is_kept_unchanged():
    opt = ga(n_elites=1)
    c = opt.ask()
    scores = np.random.default_rng(1).normal(size=20)
    opt.tell(c.ids, scores)
    np.testing.assert_array_equal(opt.ask().codes[0], c.codes[np.argmax(scores)])


def test_nan_scored_codes_are_carried_over_not_scored_zero():
    opt = ga()
    c = opt.ask()
    scores = np.arange(20.0)
    scores[[3, 7]] = np.nan
    opt.tell(c.ids, scores)
    nxt = opt.ask().codes
    for i in (3, 7):
        assert any(np.array_equal(row, c.codes[i]) for row in nxt), f"code {i} was not carried over"


def test_all_nan_carries_everything_over():
    opt = ga()
    c = opt.ask()
    opt.tell(c.ids, np.full(20, np.nan))
    np.testing.assert_array_equal(np.sort(opt.ask().codes, axis=0), np.sort(c.codes, axis=0))


def test_fitness_is_a_softmax_with_temperature_std_over_selectivity():
    opt = ga(selectivity=2.0)
    s = np.array([1.0, 2.0, 4.0])
    kt = np.std(s) / 2.0
    np.testing.assert_allclose(opt.fitness(s), np.exp((s - 4.0) / kt))


def test_without_mutation_children_are_crossovers_of_parents():
    opt = ga(shape=(50,), mutation_rate=0.0, n_elites=0)
    c = opt.ask()
    opt.tell(c.ids, np.arange(20.0))
    for child in opt.ask().codes:
        # every gene comes from some parent at the same position
        assert all(np.any(c.codes[:, j] == child[j]) for j in range(50))


def test_mutation_touches_about_mutation_rate_of_genes():
    opt = ga(shape=(2000,), mutation_rate=0.5, heritability=1.0, n_elites=0)
    c = opt.ask()
    scores = np.zeros(20)
    scores[0] = 100.0   # nearly every parent is code 0
    opt.tell(c.ids, scores)
    child = opt.ask().codes[0]
    changed = np.mean(child != c.codes[np.argmax([np.sum(child == p) for p in c.codes])])
    assert 0.4 < changed < 0.6


def test_selection_climbs_a_toy_function():
    target = np.random.default_rng(9).normal(size=32)
    opt = ga(seed=5, shape=(32,))
    first = None
    for _ in range(40):
        c = opt.ask()
        scores = -np.linalg.norm(c.codes - target, axis=1)
        first = scores.mean() if first is None else first
        opt.tell(c.ids, scores)
    assert scores.mean() > first + 1.0


@pytest.mark.parametrize("kw, message", [
    ({"population": 1}, "population"),
    ({"mutation_rate": 1.5}, "mutation_rate"),
    ({"selectivity": 0}, "selectivity"),
    ({"n_elites": 20}, "n_elites"),
])
def test_bad_parameters_are_refused(kw, message):
    with pytest.raises(OptimizerError, match=message):
        ga(**kw)
