"""XDream's genetic algorithm (Xiao & Kreiman 2019, willwx/XDream)."""

from __future__ import annotations

import numpy as np

from server.optimizers.base import Optimizer
from xdream.errors import OptimizerError


class GeneticOptimizer(Optimizer):
    """Fitness is a softmax of scores with temperature kT = std(scores)/selectivity;
    parents are drawn in proportion to fitness; each gene of a child comes from
    the first parent with probability `heritability`; a fraction `mutation_rate`
    of genes gets N(0, mutation_size) added; the `n_elites` best are kept as they
    are.  Codes whose score is NaN are carried into the next generation unchanged
    (they were never measured), never scored 0.
    """

    kind = "ga"

    def __init__(self, code_shape, rng, *, population=20, mutation_rate=0.5, mutation_size=0.5,
                 selectivity=2.0, heritability=0.5, n_elites=1, init_codes=None, name="ga") -> None:
        super().__init__(code_shape, rng, name)
        if population < 2:
            raise OptimizerError("population must be >= 2")
        if not 0 <= mutation_rate <= 1:
            raise OptimizerError("mutation_rate must be in [0, 1]")
        if mutation_size <= 0 or selectivity <= 0:
            raise OptimizerError("mutation_size and selectivity must be > 0")
        if not 0 <= n_elites < population:
            raise OptimizerError("n_elites must be in [0, population)")
        self.population = int(population)
        self.mutation_rate = float(mutation_rate)
        self.mutation_size = float(mutation_size)
        self.selectivity = float(selectivity)
        # heritability is symmetric around 0.5: h and 1-h describe the same crossover
        self.heritability = max(float(heritability), 1.0 - float(heritability))
        self.n_elites = int(n_elites)
        if init_codes is None:
            init_codes = rng.normal(0.0, 1.0, size=(population, *self.code_shape))
        init_codes = np.asarray(init_codes, dtype=float)
        if init_codes.shape != (population, *self.code_shape):
            raise OptimizerError(f"initial codes have shape {init_codes.shape}, "
                                 f"expected {(population, *self.code_shape)}")
        self._codes = init_codes.reshape(population, self.dim).copy()

    def params(self):
        return {"population": self.population, "mutation_rate": self.mutation_rate,
                "mutation_size": self.mutation_size, "selectivity": self.selectivity,
                "heritability": self.heritability, "n_elites": self.n_elites}

    def _get_state(self):
        return {"codes": self._codes}

    def _set_state(self, state):
        self._codes = np.array(state["codes"], dtype=float).reshape(self.population, self.dim)

    def _ask(self) -> np.ndarray:
        return self._codes.copy()

    def _tell(self, codes, scores):
        self._codes = self.next_generation(codes, scores)

    def fitness(self, scores: np.ndarray) -> np.ndarray:
        """exp((s - max) / kT), kT = std/selectivity; scores must be finite."""
        kt = max(float(np.std(scores)) / self.selectivity, 1e-8)
        return np.exp((scores - scores.max()) / kt)

    def next_generation(self, codes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Flat codes (n, dim) and their scores -> the next population (population, dim)."""
        n = self.population
        measured = ~np.isnan(scores)
        unmeasured = codes[~measured][:n]
        new = np.empty((n, codes.shape[1]))
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
        from_first = self.rng.random((n_children, parents.shape[1])) < self.heritability
        return np.where(from_first, parents[first], parents[second])

    def _mutate(self, children):
        mutate = self.rng.random(children.shape) < self.mutation_rate
        return children + mutate * self.rng.normal(0.0, self.mutation_size, size=children.shape)
