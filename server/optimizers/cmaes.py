"""The Cholesky CMA-ES that the Ponce lab ran online (Wang & Ponce, GECCO 2022).

Read from their public code: Animadversio/ActMax-Optimizer-Dev core/Optimizers.py
(class CholeskyCMAES) and cma_benchmark.py, which ran it with population 40,
init_sigma 3.0, Aupdate_freq 10, init_code zeros.  It is CMA-ES in the Cholesky
form of Krause, Arbones & Igel (NIPS 2016): C = A^T A is never formed; samples
are xmean + sigma * z @ A; A and its inverse take rank-one updates from the
evolution path pc, and only every `a_update_freq` generations.  Their constants,
kept here: mu = lambda/2 log weights, cc = 4/(N+4), cs = sqrt(mueff)/(sqrt(mueff)
+ sqrt(N)), c1 = 2/(N+sqrt(2))^2, damps = 1 + cs + 2 max(0, sqrt((mueff-1)/(N+1)) - 1),
no rank-mu update.

Two departures, neither changing the arithmetic of a step:
  * A = a I + P^T Q and A^-1 = b I + R^T S are kept as low-rank factors (one
    row per update, about 7 in 75 generations) instead of two dense N x N
    matrices: 4096-d states stay small enough to save, and sampling costs
    O(lambda N k) instead of O(lambda N^2).
  * NaN-scored (unmeasured) codes are left out of the recombination: the
    weights of the measured best are renormalised (and mueff with them); with
    nothing measured nothing is updated and the next ask draws afresh.
Their code has two starts: with init_code, the first generation samples around
it; without, the first generation (here: `init_codes`) is recombined into the
first mean.  Both are kept: `init_codes` given -> they are the first
generation; not given -> sampling starts around the origin.
"""

from __future__ import annotations

import numpy as np

from server.optimizers.base import Optimizer, log_weights, ranked_measured
from xdream.errors import OptimizerError


class CholeskyCMAES(Optimizer):
    kind = "cmaes"

    def __init__(self, code_shape, rng, *, population=40, init_sigma=3.0, a_update_freq=10,
                 init_codes=None, name="cmaes") -> None:
        super().__init__(code_shape, rng, name)
        if population < 2:
            raise OptimizerError("population must be >= 2")
        if init_sigma <= 0:
            raise OptimizerError("init_sigma must be > 0")
        if a_update_freq < 1:
            raise OptimizerError("a_update_freq must be >= 1")
        n = self.dim
        self.population = int(population)
        self.init_sigma = float(init_sigma)
        self.a_update_freq = int(a_update_freq)
        self.weights = log_weights(self.population / 2)
        self.mu = len(self.weights)
        mueff = 1.0 / np.sum(self.weights ** 2)
        self.cc = 4 / (n + 4)
        self.cs = np.sqrt(mueff) / (np.sqrt(mueff) + np.sqrt(n))
        self.c1 = 2 / (n + np.sqrt(2)) ** 2
        self.damps = 1 + self.cs + 2 * max(0.0, np.sqrt((mueff - 1) / (n + 1)) - 1)
        self.chi_n = np.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n ** 2))
        self.update_crit = self.a_update_freq * self.population

        self.sigma = self.init_sigma
        self.ps = np.zeros(n)
        self.pc = np.zeros(n)
        self.a_scale, self.a_left, self.a_right = 1.0, np.zeros((0, n)), np.zeros((0, n))
        self.ai_scale, self.ai_left, self.ai_right = 1.0, np.zeros((0, n)), np.zeros((0, n))
        self.counteval = 0
        self.eigeneval = 0
        self.randz = np.zeros((0, n))
        if init_codes is None:
            self.xmean: np.ndarray | None = np.zeros(n)
            self.first_codes = np.zeros((0, n))
        else:
            init_codes = np.asarray(init_codes, dtype=float)
            if init_codes.shape[1:] != self.code_shape or len(init_codes) < 1:
                raise OptimizerError(f"initial codes have shape {init_codes.shape}, "
                                     f"expected (n, {', '.join(map(str, self.code_shape))})")
            self.xmean = None   # the first generation's best make the first mean
            self.first_codes = init_codes.reshape(len(init_codes), n).copy()

    def params(self):
        return {"population": self.population, "init_sigma": self.init_sigma,
                "a_update_freq": self.a_update_freq}

    # A = a I + P^T Q and A^-1 = b I + R^T S, applied from the right to row vectors
    def _times_a(self, x):
        return self.a_scale * x + (x @ self.a_left.T) @ self.a_right

    def _times_ainv(self, x):
        return self.ai_scale * x + (x @ self.ai_left.T) @ self.ai_right

    def _ask(self):
        if self.xmean is None:
            return self.first_codes.copy()
        self.randz = self.rng.standard_normal((self.population, self.dim))
        self.counteval += self.population
        return self.xmean + self.sigma * self._times_a(self.randz)

    def _tell(self, codes, scores):
        best = ranked_measured(scores)[:self.mu]
        if len(best) == 0:
            return  # nothing measured: nothing learned
        w = self.weights[:len(best)] / self.weights[:len(best)].sum()
        if self.xmean is None:
            self.xmean = w @ codes[best]
            self.first_codes = np.zeros((0, self.dim))
            return
        mueff = 1.0 / np.sum(w ** 2)
        self.xmean = w @ codes[best]
        zw = w @ self.randz[best]
        self.ps = (1 - self.cs) * self.ps + np.sqrt(self.cs * (2 - self.cs) * mueff) * zw
        self.pc = (1 - self.cc) * self.pc + np.sqrt(self.cc * (2 - self.cc) * mueff) * self._times_a(zw)
        self.sigma *= np.exp((self.cs / self.damps) * (np.linalg.norm(self.ps) / self.chi_n - 1))
        if self.counteval - self.eigeneval > self.update_crit:
            self.eigeneval = self.counteval
            self._update_a()

    def _update_a(self):
        c1 = self.c1
        v = self._times_ainv(self.pc)
        normv = float(v @ v)
        if normv == 0.0:
            return
        sq = np.sqrt(1 - c1)
        root = np.sqrt(1 + normv * c1 / (1 - c1))
        # A <- sqrt(1-c1) A + sqrt(1-c1)/|v|^2 (root - 1) v^T pc
        self.a_scale *= sq
        self.a_right = np.vstack([self.a_right * sq, (sq / normv * (root - 1)) * self.pc])
        self.a_left = np.vstack([self.a_left, v])
        # A^-1 <- A^-1/sqrt(1-c1) - 1/(sqrt(1-c1)|v|^2) (1 - 1/root) A^-1 v^T v
        ainv_v = self.ai_scale * v + (v @ self.ai_right.T) @ self.ai_left   # (A^-1 v^T)^T
        self.ai_scale /= sq
        self.ai_right = np.vstack([self.ai_right / sq, v])
        self.ai_left = np.vstack([self.ai_left, (-(1 - 1 / root) / (sq * normv)) * ainv_v])

    def dense_a(self) -> tuple[np.ndarray, np.ndarray]:
        """A and A^-1 as dense matrices (for tests and analysis; N x N each)."""
        eye = np.eye(self.dim)
        return self._times_a(eye), self._times_ainv(eye)

    def _get_state(self):
        return {"has_mean": self.xmean is not None,
                "xmean": self.xmean if self.xmean is not None else np.zeros(0),
                "first_codes": self.first_codes, "sigma": float(self.sigma), "ps": self.ps, "pc": self.pc,
                "a_scale": float(self.a_scale), "a_left": self.a_left, "a_right": self.a_right,
                "ai_scale": float(self.ai_scale), "ai_left": self.ai_left, "ai_right": self.ai_right,
                "randz": self.randz, "counteval": self.counteval, "eigeneval": self.eigeneval}

    def _set_state(self, s):
        n = self.dim
        rows = lambda a: np.array(a, dtype=float).reshape(-1, n)  # noqa: E731
        self.xmean = np.array(s["xmean"], dtype=float).reshape(n) if bool(s["has_mean"]) else None
        self.first_codes = rows(s["first_codes"])
        self.sigma = float(s["sigma"])
        self.ps = np.array(s["ps"], dtype=float).reshape(n)
        self.pc = np.array(s["pc"], dtype=float).reshape(n)
        self.a_scale, self.a_left, self.a_right = float(s["a_scale"]), rows(s["a_left"]), rows(s["a_right"])
        self.ai_scale, self.ai_left, self.ai_right = float(s["ai_scale"]), rows(s["ai_left"]), rows(s["ai_right"])
        self.randz = rows(s["randz"])
        self.counteval, self.eigeneval = int(s["counteval"]), int(s["eigeneval"])
