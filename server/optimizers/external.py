"""pycma and nevergrad's CMA behind our contract, as baselines.

The GECCO 2022 benchmark (Animadversio/ActMax-Optimizer-Dev cma_benchmark.py,
core/Optimizers.py pycma_optimizer) ran pycma with population 40, sigma0 2.0,
x0 zeros, full and with {"CMA_diagonal": True}; its nevergrad screen ran
nevergrad's CMA with its defaults (scale 1).  Both libraries minimise: scores
are negated here.  Both are imported only when such an optimizer is built.

Randomness: pycma draws through its `randn` option, pointed here at the
injected Generator (and seed=nan, so that pycma never reseeds the global numpy
state); nevergrad draws from its parametrization's RandomState, seeded here
from one integer drawn from the injected Generator.

NaN scores: pycma would set them to the median and nevergrad to 5e20, both
numbers the neuron never gave.  Here unmeasured candidates are not told at all:
pycma gets the measured ones if there are at least mu of them (else no update,
and the next ask draws afresh); nevergrad's CMA waits until it has a
population's worth of tells, as it does for any candidate that never comes back.

Save/restore without pickle: neither library's state is plain arrays, but both
are deterministic given their seed and the scores they were told.  The state
is the rng state the library was built from and every generation's scores; a
restore rebuilds it and replays the asks and tells.  That costs as much CPU as
the run so far (seconds for pycma-diag; full CMA in 4096-d takes longer).
"""

from __future__ import annotations

import warnings

import numpy as np

from server.optimizers.base import Optimizer, rng_state, set_rng_state
from xdream.errors import OptimizerError


# a full covariance holds a few N x N float64 matrices: 16384-d is about 2 GB each
MAX_FULL_DIM = 16384


class _Replayed(Optimizer):
    """An optimizer around a library object, restored by replaying its history."""

    default_sigma0 = 1.0
    full_covariance = True

    def __init__(self, code_shape, rng, *, population, sigma0, init_codes, name) -> None:
        super().__init__(code_shape, rng, name)
        if population < 4:
            raise OptimizerError("population must be >= 4")
        if sigma0 < 0:
            raise OptimizerError("sigma0 must be > 0 (or 0 for the default)")
        if self.full_covariance and self.dim > MAX_FULL_DIM:
            gb = 3 * 8 * self.dim ** 2 / 1e9
            raise OptimizerError(f"{self.kind}: a full covariance of {self.dim}-d codes needs about {gb:.0f} GB; "
                                 f"use pycma-diag, cmaes or sphere-es")
        self.population = int(population)
        self.sigma0 = float(sigma0) or self.default_sigma0
        if init_codes is None:
            self.x0 = np.zeros(self.dim)
        else:
            # the centre of the first codes (e.g. real fc6 statistics), not the origin
            self.x0 = np.asarray(init_codes, dtype=float).reshape(-1, self.dim).mean(axis=0)
        self._history: list[np.ndarray] = []   # scores of each tell, in ask order
        self._asks = 0
        self._start_rng = rng_state(rng)
        self._build()

    def params(self):
        return {"population": self.population, "sigma0": self.sigma0}

    def _ask(self):
        self._asks += 1
        return self._library_ask()

    def _tell(self, codes, scores):
        self._history.append(scores.copy())
        self._library_tell(codes, scores)

    def _get_state(self):
        return {"x0": self.x0, "start_rng": self._start_rng, "asks": self._asks,
                "history": np.array(self._history).reshape(-1, self.population)}

    def _set_state(self, s):
        self.x0 = np.array(s["x0"], dtype=float).reshape(self.dim)
        self._start_rng = str(s["start_rng"])
        history = np.array(s["history"], dtype=float).reshape(-1, self.population)
        set_rng_state(self.rng, self._start_rng)
        self._build()
        self._history, self._asks = [], 0
        for i in range(int(s["asks"])):
            codes = np.asarray(self._ask(), dtype=float)
            if i < len(history):
                self._tell(codes, history[i])

    def _build(self) -> None:
        raise NotImplementedError

    def _library_ask(self) -> np.ndarray:
        raise NotImplementedError

    def _library_tell(self, codes, scores) -> None:
        raise NotImplementedError


class PycmaOptimizer(_Replayed):
    kind = "pycma"
    diagonal = False
    default_sigma0 = 2.0    # the GECCO 2022 benchmark's

    def __init__(self, code_shape, rng, *, population=40, sigma0=0.0, init_codes=None, name="pycma") -> None:
        super().__init__(code_shape, rng, population=population, sigma0=sigma0, init_codes=init_codes,
                         name=name)

    def _build(self) -> None:
        import cma
        rng = self.rng
        opts = {"popsize": self.population, "CMA_diagonal": self.diagonal,
                "randn": lambda *shape: rng.standard_normal(shape),
                "seed": np.nan, "verbose": -9, "verb_log": 0, "verb_disp": 0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.es = cma.CMAEvolutionStrategy(self.x0, self.sigma0, opts)
        self._asked: list[np.ndarray] = []

    def _library_ask(self):
        self._asked = self.es.ask()
        return np.array(self._asked)

    def _library_tell(self, codes, scores):
        measured = np.flatnonzero(~np.isnan(scores))
        if len(measured) < self.es.sp.weights.mu:
            return   # too few to update on; the next ask draws afresh
        with warnings.catch_warnings():
            # pycma warns when fewer than popsize solutions come back
            warnings.simplefilter("ignore")
            self.es.tell([self._asked[i] for i in measured], (-scores[measured]).tolist())


class PycmaDiagonal(PycmaOptimizer):
    kind = "pycma-diag"
    diagonal = True
    full_covariance = False

    def __init__(self, code_shape, rng, *, population=40, sigma0=0.0, init_codes=None, name="pycma-diag") -> None:
        super().__init__(code_shape, rng, population=population, sigma0=sigma0, init_codes=init_codes,
                         name=name)


class NevergradCMA(_Replayed):
    kind = "nevergrad-cma"
    default_sigma0 = 1.0    # nevergrad's own (ParametrizedCMA scale)

    def __init__(self, code_shape, rng, *, population=40, sigma0=0.0, init_codes=None, name="nevergrad-cma") -> None:
        super().__init__(code_shape, rng, population=population, sigma0=sigma0, init_codes=init_codes,
                         name=name)

    def _build(self) -> None:
        import nevergrad as ng
        param = ng.p.Array(init=self.x0.copy())
        param.random_state = np.random.RandomState(int(self.rng.integers(2 ** 32)))
        family = ng.optimizers.ParametrizedCMA(popsize=self.population, scale=self.sigma0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.opt = family(parametrization=param, budget=None)
        self._candidates: list = []

    def _library_ask(self):
        self._candidates = [self.opt.ask() for _ in range(self.population)]
        return np.array([np.asarray(c.value, dtype=float) for c in self._candidates])

    def _library_tell(self, codes, scores):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for cand, score in zip(self._candidates, scores):
                if not np.isnan(score):
                    self.opt.tell(cand, -float(score))
