"""The Ponce lab's two optimizers as their code has them (Animadversio/ActMax-Optimizer-Dev,
core/Optimizers.py): CholeskyCMAES step for step against a dense transcription,
and SphereCMA's geometry."""

import numpy as np
import pytest

from server.optimizers import make_optimizer
from server.optimizers.base import log_weights
from server.optimizers.sphere_cma import SphereCMA


class DenseCholeskyCMAES:
    """CholeskyCMAES.step_simple with init_code = zeros, maximising: dense A and A^-1."""

    def __init__(self, n, lam, sigma, freq, rng):
        self.n, self.lam, self.sigma, self.rng = n, lam, sigma, rng
        self.weights = log_weights(lam / 2)
        self.mu = len(self.weights)
        self.mueff = self.weights.sum() ** 2 / np.sum(self.weights ** 2)
        self.cc = 4 / (n + 4)
        self.cs = np.sqrt(self.mueff) / (np.sqrt(self.mueff) + np.sqrt(n))
        self.c1 = 2 / (n + np.sqrt(2)) ** 2
        self.damps = 1 + self.cs + 2 * max(0, np.sqrt((self.mueff - 1) / (n + 1)) - 1)
        self.chi_n = np.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n ** 2))
        self.update_crit = freq * lam
        self.xmean = np.zeros((1, n))
        self.ps, self.pc = np.zeros((1, n)), np.zeros((1, n))
        self.A, self.Ainv = np.eye(n), np.eye(n)
        self.counteval = self.eigeneval = 0
        self.updates = 0

    def sample(self):
        self.randz = self.rng.standard_normal((self.lam, self.n))
        self.counteval += self.lam
        return self.xmean + self.sigma * self.randz @ self.A

    def step(self, scores, codes):
        idx = np.argsort(-scores)[:self.mu]
        w = self.weights[None, :]
        self.xmean = w @ codes[idx]
        randzw = w @ self.randz[idx]
        self.ps = (1 - self.cs) * self.ps + np.sqrt(self.cs * (2 - self.cs) * self.mueff) * randzw
        self.pc = (1 - self.cc) * self.pc + np.sqrt(self.cc * (2 - self.cc) * self.mueff) * randzw @ self.A
        self.sigma *= np.exp((self.cs / self.damps) * (np.linalg.norm(self.ps) / self.chi_n - 1))
        if self.counteval - self.eigeneval > self.update_crit:
            self.eigeneval = self.counteval
            c1 = self.c1
            v = self.pc @ self.Ainv
            normv = (v @ v.T).item()
            self.A = np.sqrt(1 - c1) * self.A + np.sqrt(1 - c1) / normv * (
                np.sqrt(1 + normv * c1 / (1 - c1)) - 1) * v.T @ self.pc
            self.Ainv = 1 / np.sqrt(1 - c1) * self.Ainv - 1 / np.sqrt(1 - c1) / normv * (
                1 - 1 / np.sqrt(1 + normv * c1 / (1 - c1))) * self.Ainv @ v.T @ v
            self.updates += 1
        return self.sample()


def test_cholesky_cmaes_matches_the_dense_original_step_for_step():
    n, lam = 6, 8
    target = np.linspace(-1, 1, n)
    ours = make_optimizer("cmaes", (n,), np.random.default_rng(4), population=lam, init_sigma=0.7,
                          a_update_freq=1)
    ref = DenseCholeskyCMAES(n, lam, 0.7, 1, np.random.default_rng(4))
    codes = ref.sample()
    for _ in range(15):
        c = ours.ask()
        np.testing.assert_allclose(c.codes, codes, rtol=1e-9, atol=1e-12)
        scores = -np.sum((codes - target) ** 2, axis=1)
        ours.tell(c.ids, scores)
        codes = ref.step(scores, codes)
    assert ref.updates >= 5     # the Cholesky factor was updated along the way ...
    a, ainv = ours.dense_a()
    np.testing.assert_allclose(a, ref.A, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ainv, ref.Ainv, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a @ ainv, np.eye(n), atol=1e-9)   # ... and stayed inverse to A^-1


def test_cholesky_cmaes_starts_from_initial_codes_like_their_online_runs():
    init = np.random.default_rng(0).normal(size=(10, 5))
    opt = make_optimizer("cmaes", (5,), np.random.default_rng(1), population=10, init_codes=init)
    c = opt.ask()
    np.testing.assert_array_equal(c.codes, init)
    scores = np.arange(10.0)
    opt.tell(c.ids, scores)
    w = log_weights(5)
    np.testing.assert_allclose(opt.xmean, w @ init[np.argsort(-scores)[:5]])


def sphere(seed=0, dim=4096, pop=8, **kw):
    return make_optimizer("sphere-cma", (dim,), np.random.default_rng(seed), population=pop, **kw)


def angles(codes, center):
    cos = codes @ center / np.linalg.norm(codes, axis=1) / np.linalg.norm(center)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def test_sphere_cma_keeps_every_code_on_its_sphere_and_samples_at_the_scheduled_angle():
    opt = sphere()
    rng = np.random.default_rng(1)
    seen = []
    for g in range(80):
        c = opt.ask()
        np.testing.assert_allclose(np.linalg.norm(c.codes, axis=1), 300.0)
        if g > 0:
            np.testing.assert_allclose(c.codes[0], opt.center)   # the centre comes first
            seen.append(angles(c.codes[1:], c.codes[0]).mean())
        opt.tell(c.ids, rng.normal(size=len(c.ids)))
    # GECCO 2022: exp schedule 50 -> 7.33 deg over 75 generations, then constant
    assert seen[0] == pytest.approx(50.0, rel=0.02)
    assert seen[74] == pytest.approx(7.33, rel=0.02)
    assert seen[78] == pytest.approx(7.33, rel=0.02)
    assert seen[37] == pytest.approx(np.sqrt(50 * 7.33), rel=0.02)


def test_sphere_cma_moves_by_spherical_extrapolation_from_the_weighted_best():
    opt = sphere(dim=50, pop=9, sphere_norm=10.0, select_size=4, lr=1.5)
    c = opt.ask()
    opt.tell(c.ids, np.arange(9.0))
    c = opt.ask()
    scores = np.r_[100.0, np.arange(8.0)]          # the centre's own score must not count
    opt.tell(c.ids, scores)
    best = 1 + np.argsort(-scores[1:])[:4]
    target = log_weights(4) @ c.codes[best]
    target = 10 * target / np.linalg.norm(target)
    x = c.codes[0]
    angle = np.arccos(x @ target / 100)
    expected = (np.sin(-0.5 * angle) * x + np.sin(1.5 * angle) * target) / np.sin(angle)
    np.testing.assert_allclose(opt.center, expected)


def test_sphere_norm_zero_takes_the_first_codes_norm():
    init = 3.0 * np.random.default_rng(0).normal(size=(8, 100))
    opt = make_optimizer("sphere-cma", (100,), np.random.default_rng(0), population=8, init_codes=init,
                         sphere_norm=0.0)
    assert opt.radius == pytest.approx(np.linalg.norm(init, axis=1).mean())
    assert isinstance(opt, SphereCMA)
