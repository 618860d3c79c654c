"""Gradient-free optimizers behind a small ask/tell contract.

Pure numpy, no I/O, an injected np.random.Generator, and they maximise.  The
public `ask`/`tell` check their inputs and call the private `_ask`/`_tell`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xdream.errors import OptimizerError


@dataclass(frozen=True)
class Candidates:
    ids: list[str]        # stable ids: they join codes, images and responses
    codes: np.ndarray     # (n, *code_shape)


class Optimizer:
    def __init__(self, code_shape: tuple[int, ...], rng: np.random.Generator, name: str = "opt"):
        self.code_shape = tuple(code_shape)
        self.rng = rng
        self.name = name
        self.generation = 0
        self._pending: Candidates | None = None
        self._next_index = 0

    def ask(self) -> Candidates:
        """The codes to score next; asking again before a tell returns the same ones."""
        if self._pending is None:
            codes = self._ask()
            ids = [f"{self.name}/g{self.generation:03d}/{self._next_index + i:05d}" for i in range(len(codes))]
            self._next_index += len(codes)
            self._pending = Candidates(ids, codes)
        return self._pending

    def tell(self, ids: list[str], scores) -> None:
        """Scores for the asked ids, in any order; NaN means 'not measured'."""
        if self._pending is None:
            raise OptimizerError(f"{self.name}: tell without a pending ask (a second tell?)")
        scores = np.asarray(scores, dtype=float)
        if scores.ndim != 1 or len(scores) != len(ids):
            raise OptimizerError(f"{self.name}: {len(ids)} ids but scores of shape {scores.shape}")
        index = {cid: i for i, cid in enumerate(self._pending.ids)}
        unknown = [cid for cid in ids if cid not in index]
        if unknown:
            raise OptimizerError(f"{self.name}: unknown candidate ids {unknown[:3]}")
        if len(set(ids)) != len(ids) or len(ids) != len(index):
            raise OptimizerError(f"{self.name}: tell must score each of the {len(index)} asked ids once")
        if np.isinf(scores).any():
            raise OptimizerError(f"{self.name}: scores must be finite or NaN")
        ordered = np.empty(len(ids))
        ordered[[index[cid] for cid in ids]] = scores
        self._tell(self._pending.codes, ordered)
        self._pending = None
        self.generation += 1

    def _ask(self) -> np.ndarray:
        raise NotImplementedError

    def _tell(self, codes: np.ndarray, scores: np.ndarray) -> None:
        raise NotImplementedError


class GeneticOptimizer(Optimizer):
    """XDream's genetic algorithm (Xiao & Kreiman 2019, willwx/XDream).

    Fitness is a softmax of scores with temperature kT = std(scores)/selectivity;
    parents are drawn in proportion to fitness; each gene of a child comes from
    the first parent with probability `heritability`; a fraction `mutation_rate`
    of genes gets N(0, mutation_size) added; the `n_elites` best are kept as they
    are.  Codes whose score is NaN are carried into the next generation unchanged
    (they were never measured), never scored 0.
    """

    def __init__(self, code_shape, rng, *, population=20, mutation_rate=0.5, mutation_size=0.5,
                 selectivity=2.0, heritability=0.5, n_elites=1, init_codes=None, name="ga"):
        super().__init__(code_shape, rng, name)
        if population < 2:
            raise OptimizerError("population must be >= 2")
        if not 0 <= mutation_rate <= 1:
            raise OptimizerError("mutation_rate must be in [0, 1]")
        if mutation_size <= 0 or selectivity <= 0:
            raise OptimizerError("mutation_size and selectivity must be > 0")
        if not 0 <= n_elites < population:
            raise OptimizerError("n_elites must be in [0, population)")
        self.population = population
        self.mutation_rate = mutation_rate
        self.mutation_size = mutation_size
        self.selectivity = selectivity
        # heritability is symmetric around 0.5: h and 1-h describe the same crossover
        self.heritability = max(heritability, 1.0 - heritability)
        self.n_elites = n_elites
        if init_codes is None:
            init_codes = rng.normal(0.0, 1.0, size=(population, *self.code_shape))
        init_codes = np.asarray(init_codes, dtype=float)
        if init_codes.shape != (population, *self.code_shape):
            raise OptimizerError(f"initial codes have shape {init_codes.shape}, "
                                 f"expected {(population, *self.code_shape)}")
        self._codes = init_codes.copy()

    def _ask(self) -> np.ndarray:
        return self._codes.copy()

    def _tell(self, codes, scores):
        self._codes = self.next_generation(codes, scores)

    def fitness(self, scores: np.ndarray) -> np.ndarray:
        """exp((s - max) / kT), kT = std/selectivity; scores must be finite."""
        kt = max(float(np.std(scores)) / self.selectivity, 1e-8)
        return np.exp((scores - scores.max()) / kt)

    def next_generation(self, codes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        n = self.population
        measured = ~np.isnan(scores)
        unmeasured = codes[~measured][:n]
        new = np.empty((n, *self.code_shape))
        if len(unmeasured):
            new[n - len(unmeasured):] = unmeasured
        if not measured.any():
            return new  # nothing measured: everything is carried over
        order = np.argsort(-scores[measured], kind="stable")
        ranked = codes[measured][order]
        ranked_scores = scores[measured][order]
        # XDream clips the top 5% so that one outlier cannot take all the fitness
        ranked_scores = np.minimum(ranked_scores, np.percentile(ranked_scores, 95))
        n_elites = min(self.n_elites, n - len(unmeasured), len(ranked))
        n_children = n - len(unmeasured) - n_elites
        new[:n_elites] = ranked[:n_elites]
        if n_children > 0:
            children = self._mate(ranked, self.fitness(ranked_scores), n_children)
            new[n_elites:n_elites + n_children] = self._mutate(children)
        return new

    def _mate(self, parents, fitness, n_children):
        p = fitness / fitness.sum()
        first = self.rng.choice(len(parents), size=n_children, p=p)
        second = self.rng.choice(len(parents), size=n_children, p=p)
        from_first = self.rng.random((n_children, *self.code_shape)) < self.heritability
        return np.where(from_first, parents[first], parents[second])

    def _mutate(self, children):
        mutate = self.rng.random(children.shape) < self.mutation_rate
        return children + mutate * self.rng.normal(0.0, self.mutation_size, size=children.shape)


def build_optimizer(cfg, generator, rng: np.random.Generator, name: str) -> Optimizer:
    """From an OptimizerConfig; the generator supplies the first codes.
    The only kind so far is XDream's GA."""
    return GeneticOptimizer(generator.code_shape, rng, population=cfg.population,
                            mutation_rate=cfg.mutation_rate, mutation_size=cfg.mutation_size,
                            selectivity=cfg.selectivity, heritability=cfg.heritability,
                            n_elites=cfg.n_elites, init_codes=generator.initial_codes(cfg.population, rng),
                            name=name)
