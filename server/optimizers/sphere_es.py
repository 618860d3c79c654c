"""SphereES (kind "sphere-es", formerly "ours"; the default config's optimizer): a
mirrored evolution strategy on the sphere that also learns the code norm.

The name says what it is and where it sits: like SphereCMA ("sphere-cma",
GECCO 2022) it searches directions on a sphere around one centre with a
decaying angle; unlike it, it is a plain evolution strategy (mirrored pairs,
rank weights, no covariance) and the sphere's radius, the code norm, is
learned.  "ours" stays accepted in configs and checkpoints
(xdream/optimizer_kinds.py).

Written for this problem: 4096-d codes, 40 presentations a generation, about 75
generations, scores with multiplicative noise of up to 50%.  It keeps the two
things the GECCO 2022 analysis found to matter (local search around one centre,
a step that decays) and adds what the toy problems below rewarded.

A generation, after the first:
  * k = population // 2 mirrored pairs around the centre direction c: the
    codes r_i * ExpMap(c, +theta u_i) and r_i * ExpMap(c, -theta u_i), u_i a
    random tangent direction of unit length, theta the sample angle, which
    decays exponentially from `angle_init_deg` to `angle_final_deg` over
    `decay_generations` (SphereCMA's schedule) and then stays;
  * both codes of a pair share one norm r_i = r * exp(eps_i), eps_i ~
    N(0, (norm_coupling * theta)^2): the norm is explored too, more widely
    early, and a pair's difference is blind to it;
  * direction: the pairs' differences s(+) - s(-) are ranked (centred ranks,
    ties averaged: only their order counts, so the noise's scale does not) and
    the centre moves along sum_i w_i u_i / |w|, an angle of about step_ratio
    * theta whatever the population, smoothed over generations (`smoothing`,
    an exponential average of steps on the sphere);
  * norm: the rank correlation of the pairs' sums with their eps_i moves
    log r by norm_rate * norm_coupling * theta * corr.  The generator's code
    norm is image contrast: how much a neuron wants is measured (SphereCMA
    fixes it at 300 for fc6; CMA-ES lets it drift up as a random walk), but
    within bounds: r starts at init_norm_factor and stays within
    min_norm_factor .. max_norm_factor times the first codes' mean norm.
    The defaults 3, 3, 10 are for DeePSiM fc6 codes drawn N(0, I) (norm 64,
    far below where every published evolution ends: GA ~135-185, pycma
    ~320-340, Cholesky CMA-ES ~410-440, SphereCMA 300; and 3 x 64 is where
    the Cholesky CMA-ES's first step lands).  For a generator whose prior is
    its code distribution (a GAN) 1, 0.5, 10 looked natural, but in the
    dcgan-face space at 3,000 presentations the defaults did better (colour
    unit 0.93 against 0.56 of its optimum; benchmarks/norm_bounds.py,
    docs/benchmarks.md, Validity): contrast pays there too, and more of it:
    at 3, 3, 10 the norm ended at its cap (10 x ~10) on AlexNet units, and
    the embedded default config (dcgan-face) sets 20, 3, 40, which won 33
    of 36 paired runs against 3, 3, 10 on them (docs/benchmarks.md, Study).
An odd population adds the centre itself, scored but not used.  The first
generation is `init_codes` (or N(0, I)); its rank-weighted best half gives the
first centre direction.

NaN scores: a pair with a NaN member is left out of both estimates; with fewer
than two complete pairs (or no ranking information at all, e.g. all scores
equal) nothing moves and the schedule does not advance.

Toy problems (tests/test_optimizers_sphere_es.py holds them; 4096-d, population 40,
75 generations, multiplicative noise score * max(0, 1 + sigma N(0,1)), one
run per unit with seed = unit; numbers: the best clean score reached, mean
over units):
  'neuron': code -> tanh(G z) (1024 'pixels', G with singular values ~ k^-1/2,
  N(0, I) codes give pixel sd 0.5, so that a larger norm means more contrast,
  up to saturation) -> relu(W1 x + b1) (256) -> relu(w2 . h + b2), b2 such
  that 30% of random codes respond; score in units of the 99th-70th percentile
  spread of random codes.
  'quadratic': 1 / (1 + q(z)/q0), q = (z - z*)^T H (z - z*), H log-uniform in
  [0.01, 1], z* ~ N(0, 4 I); q0 = mean q of N(0, I) codes (random codes: 0.5).

Ideas tried on the neuron (4 units, sigma 0 / 0.5, best clean score; for
scale: cmaes 20.1 / 9.9, sphere-cma 20.9 / 8.8, GA 15.0 / 7.8 on those units):
  * the direction step, at a fixed norm of 300 (no norm learning):
    - antithetic codes ranked one by one (centred ranks of all 40) vs ranks of
      the pair differences: 22.1 / 9.9 vs 21.9 / 9.8 at their best steps -
      equal; pairs kept, because they make the norm estimate independent of
      the direction estimate;
    - CMA log weights on the best half (minus their mean) instead of centred
      ranks of all: 12.2 / 7.8;
    - step_ratio 0.27 / 0.41 / 0.54 / 0.68: 21.2 / 10.2, 21.9 / 9.8, 21.2 /
      8.9, 20.0 / 8.0 - smaller steps pay under noise;
    - heavy-ball momentum 0.8: 11.6 / 4.6 (overshoots); exponential smoothing
      of the steps, 0.5 with step 1.1: 18.5 / 6.9, 0.8 with step 1.6: 15.8 /
      6.3 - a larger step along a smoothed direction does not pay either;
    - angle schedule 30 -> 7.33 or 80 -> 7.33 deg: 21.4 / 9.1, 21.3 / 9.5;
      50 -> 15 deg: 20.5 / 9.3 (50 -> 7.33: 21.9 / 9.8).
  * the norm: the toy rewards contrast, as a DeePSiM image's neuron likely
    does (sphere-cma at norm 64 / 300 / 450: 13.0 / 4.6, 20.9 / 8.8, 21.5 /
    9.6; cmaes's norm drifts to ~430).  Learning it from a fixed 10% norm
    exploration: 24.1 / 6.7 (too slow under noise: the norm stayed near 110);
    norm exploration tied to the angle (norm_coupling 0.6: 30% early, 8% late)
    with norm_rate 1: 23.1 / 10.7 (norm ~520 under noise).  On the noisy
    quadratic the learned norm shrank to ~20 (towards z = 0, whose score 0.56
    beats a random direction's), where a direction's change no longer shows:
    hence the floor min_norm_factor 0.5.
Then 8 units, sigma 0 / 0.2 / 0.5: step_ratio 0.33 without / with smoothing
0.5: 23.7 / 14.2 / 10.6 and 24.1 / 14.0 / 10.6 (smoothing kept: no worse
under noise, a little better without); step 0.41 with smoothing: 24.6 /
13.7 / 10.2; 0.27 and 0.22: 23.0 / - / 10.6 and 21.8 / - / 10.3; final
angle 4 or 12 deg: 23.3 / - / 10.0 and 23.8 / - / 10.7; norm_coupling 1:
23.8 / - / 10.8; norm_rate 2: 23.9 / - / 10.6.  None is clearly better than
the defaults.  The step was first a fixed multiple of sum_i w_i u_i; at
population 20 that is a smaller step, and scaling it up by sqrt(2) gave 18.4
/ 8.8 instead of 17.7 / 8.4 (4 units): hence the normalisation by |w|.

Noise ideas (the issue's list; options, all off by default; toy neuron, 8
units, best clean score / last-generation mean, sigma 0 / 0.2 / 0.5; the
defaults in the same run: 23.7 / 23.2, 14.1 / 13.3, 10.7 / 9.4):
  * centre_repeats = n: n of the population show the centre (fewer pairs).
    Alone (n = 4, nothing uses them): 23.9 / 23.3, 13.7 / 12.9, 10.2 / 9.1 -
    the cost of 4 fewer pairs under noise.
  * elite_check (re-evaluating the elite): the centre's repeats are averaged
    and the centre goes back to the last kept one when it scores worse by
    more than one standard error (the step is then taken from there).  n = 2:
    23.5 / 22.9, 13.0 / 12.2, 9.1 / 8.1; n = 4: 23.7 / 23.1, 12.5 / 11.7,
    9.5 / 8.5.  Worse under noise: 29-36% of steps were sent back at sigma
    0.2-0.5 (4 units), mostly against a kept score that was lucky (winner's
    curse).  A 2 or 3 s.e. margin sends back 1-8% and gives rep4's numbers
    (10.6 at sigma 0.5, 4 units); at 1 s.e. but averaging the kept score with
    the one sent back: 10.6 - re-evaluation costs more than it saves.
  * noise_step (the noise estimate, as repeated reference images would give
    it): the step shrinks by sqrt(1 - noise variance / variance of the pair
    differences), at least to 0.25x.  'repeats' takes the noise from the
    centre's repeats (multiplicative noise: a smoothed squared coefficient of
    variation times the pairs' mean square): n = 2: 23.7 / 23.2, 13.5 / 12.7,
    9.5 / 8.6; n = 4: 23.9 / 23.3, 12.7 / 12.0, 9.4 / 8.4.  'pairs' takes it
    from the pair sums (no presentations spent, but they also carry the norm
    offsets and curvature): 18.7 / 18.2, 13.1 / 12.4, 9.9 / 9.1.  Smaller
    steps under noise lose here, as the fixed step_ratio 0.27 / 0.22 did: the
    decaying angle already does what a noise-scaled step would.
  * a surrogate (tried as a patch, not kept): kernel ridge regression of the
    pairs' difference ranks on their direction differences over the last G
    generations, measured from the current centre, its gradient the step's
    direction (G = 1 is the default's estimate).  G = 2: 23.8 / 23.1, 13.2 /
    12.2, 10.0 / 8.5 (smoothing 0: 23.7 / 23.1, 13.4 / 12.3, 10.0 / 8.6); G =
    3: 21.0 / 20.3, 12.7 / 11.4, 9.4 / 7.9.  Older pairs point where the
    centre already went, as momentum did.
  None wins at any sigma; the defaults stay as they are.

The norm floor came from the benchmark harness (benchmarks/optimizers.py:
DeePSiM-fc6-shaped generator with seeded random weights, standardised random
AlexNet; units conv3 c0 and fc8 c0, seed 0; the final generation's best / mean
clean activation).  With the norm free down to 0.5 x, the fc8 unit, whose
drive stays negative for ~20 generations (less contrast, less negative), took
the norm down to ~120 and reached 27.0 / 24.4, against sphere-cma's 33.8 /
29.7 at 300; starting at 3 x (or 4.7 x) but free to fall: 28.4 / 24.8 (26.5 /
24.3); a norm step that does not shrink with the angle: 26.1 / 24.0; floor
and start at 3 x: 36.0 / 33.6.  The toy neuron does not care (units 0-3:
23.4 / 11.1 with the floor, 23.6 / 11.0 without).

Final, with the defaults.  Toy neuron, 8 units (pycma and nevergrad-cma,
about a minute a run here, units 0-3 only): best clean score / mean clean
score of the last generation; in brackets the best score over the best any
optimizer reached on that unit (the GECCO normalisation):
                    sigma 0               0.2                  0.5
  sphere-es     23.7 (1.00) / 23.2   14.1 (0.59) / 13.3   10.7 (0.45) / 9.4
  cmaes         20.2 (0.85) / 18.8   12.6 (0.53) / 10.8    9.9 (0.42) / 8.1
  pycma-diag    20.7 (0.88) / 19.4   13.3 (0.56) / 11.4   10.0 (0.42) / 8.2
  sphere-cma    21.3 (0.90) / 20.9   11.3 (0.48) / 10.5    8.7 (0.37) / 7.6
  ga            15.2 (0.64) / 14.6    9.4 (0.40) /  8.4    7.7 (0.32) / 6.5
  units 0-3:    sphere-es 23.4 / 11.1, pycma 21.0 / 10.0, nevergrad-cma 20.4 / 9.2,
                cmaes 20.1 / 9.9, pycma-diag 20.8 / 9.7 (best, sigma 0 / 0.5)
(GECCO 2022 on AlexNet: GA 0.37 / 0.34 / 0.29, CMA-ES 0.72 / 0.51 / 0.41,
diagonal 0.70 / 0.56 / 0.43, SphereCMA 0.86 / 0.53 / 0.40: the toy ranks the
baselines much as the paper does - SphereCMA first without noise and behind
under it, diagonal CMA the best baseline under noise, the GA last.)
Population 20, 4 units, sigma 0 / 0.5: sphere-es 18.6 / 8.6, pycma-diag 17.9 /
8.6, cmaes 16.7 / 8.3.
Harness (as above; one seed, raw activations, sigma 0 / 0.5): conv3 sphere-es
26.8 / 25.2 and 12.3 / 10.9, sphere-cma 24.2 / 22.2 and 9.8 / 8.8, cmaes
17.4 / 15.6 and 10.5 / 7.6; fc8 sphere-es 36.0 / 33.6 and 15.7 / 12.6,
sphere-cma 33.8 / 29.7 and 15.2 / 10.2, cmaes 15.4 / 9.3 and 11.0 / 5.9;
conv3 sigma 0 also pycma 19.9, nevergrad-cma 17.9, pycma-diag 15.1, GA 13.8
(best; the baselines are the harness owner's runs).
Quadratic, 4 units, best / last-generation mean, sigma 0 / 0.2 / 0.5: sphere-es
0.58 / 0.51, 0.52 / 0.29, 0.52 / 0.29 - its optimum has norm ~128, under
the fc6 floor of 192; with 1, 0.5, 10 (the GAN setting) 0.67 / 0.67, 0.56 /
0.54, 0.56 / 0.54; sphere-cma at the first codes' norm 0.69 / 0.69, 0.52 /
0.51, 0.51 / 0.50 (at 300: 0.33, 0.18, 0.18); pycma-diag 0.67 / 0.66, 0.45
/ 0.29, 0.45 / 0.22; cmaes 0.51 / 0.25, 0.51 / 0.12, 0.51 / 0.11 (its sigma
3 is sized for fc6 codes and leaves the basin: its best is the first
generation); GA 0.51 / 0.50, 0.51 / 0.28, 0.51 / 0.27.
What this does not show: the margins under noise are small in the best score
(5-11% over pycma-diag and cmaes on the toy; at population 20 none over
pycma-diag), the harness numbers are one seed on two units with random
weights, and the floor is a prior about fc6 codes; the published weights and
the full protocol are what will tell.
"""

from __future__ import annotations

import numpy as np

from server.optimizers.base import Optimizer, log_weights, ranked_measured
from server.optimizers.sphere import exp_map, tangent, unit
from xdream.errors import OptimizerError


def centred_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to [-0.5, 0.5] (lowest -0.5), ties sharing their mean rank."""
    if len(x) < 2:
        return np.zeros(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    end = np.cumsum(counts)
    mean_rank = (end - counts + end - 1) / 2.0
    return mean_rank[inverse] / (len(x) - 1) - 0.5


class SphereES(Optimizer):
    kind = "sphere-es"

    def __init__(self, code_shape, rng, *, population=40, angle_init_deg=50.0, angle_final_deg=7.33,
                 decay_generations=75, step_ratio=0.33, smoothing=0.5, norm_rate=1.0, norm_coupling=0.6,
                 init_norm_factor=3.0, max_norm_factor=10.0, min_norm_factor=3.0, centre_repeats=0,
                 noise_step="off", elite_check=False, init_codes=None, name="sphere-es") -> None:
        super().__init__(code_shape, rng, name)
        if population < 4:
            raise OptimizerError("population must be >= 4 (two mirrored pairs)")
        if angle_init_deg <= 0 or angle_final_deg <= 0 or decay_generations < 1:
            raise OptimizerError("angle_init_deg, angle_final_deg and decay_generations must be > 0")
        if step_ratio <= 0 or not 0 <= smoothing < 1:
            raise OptimizerError("step_ratio must be > 0 and smoothing in [0, 1)")
        if norm_rate < 0 or norm_coupling < 0 or not 0 < min_norm_factor <= init_norm_factor <= max_norm_factor:
            raise OptimizerError("norm_rate and norm_coupling must be >= 0, and "
                                 "0 < min_norm_factor <= init_norm_factor <= max_norm_factor")
        if self.dim < 2:
            raise OptimizerError("codes need at least 2 elements")
        if centre_repeats < 0 or (population - centre_repeats) // 2 < 2:
            raise OptimizerError("centre_repeats must be >= 0 and leave two mirrored pairs")
        if noise_step not in ("off", "repeats", "pairs"):
            raise OptimizerError("noise_step must be 'off', 'repeats' or 'pairs'")
        if elite_check and population - 2 * ((population - centre_repeats) // 2) < 1:
            raise OptimizerError("elite_check needs the centre shown (centre_repeats >= 1)")
        if noise_step == "repeats" and population - 2 * ((population - centre_repeats) // 2) < 2:
            raise OptimizerError("noise_step 'repeats' needs the centre shown at least twice (centre_repeats)")
        self.population = int(population)
        self.angle_init_deg = float(angle_init_deg)
        self.angle_final_deg = float(angle_final_deg)
        self.decay_generations = int(decay_generations)
        self.step_ratio = float(step_ratio)
        self.smoothing = float(smoothing)
        self.norm_rate = float(norm_rate)
        self.norm_coupling = float(norm_coupling)
        self.init_norm_factor = float(init_norm_factor)
        self.max_norm_factor = float(max_norm_factor)
        self.min_norm_factor = float(min_norm_factor)
        self.centre_repeats = int(centre_repeats)
        self.noise_step = noise_step
        self.pairs = (self.population - self.centre_repeats) // 2
        self.noise_cv2 = np.nan                  # 'repeats': smoothed squared coefficient of variation
        self.elite_check = bool(elite_check)
        self.elite = np.zeros(0)                 # elite_check: the last accepted centre, its log norm, ...
        self.elite_log_norm = 0.0
        self.elite_stats = np.zeros(3)           # ... and its scores' count, mean and variance
        if init_codes is None:
            init_codes = rng.standard_normal((population, self.dim))
        init_codes = np.asarray(init_codes, dtype=float).reshape(-1, self.dim)
        norms = np.linalg.norm(init_codes, axis=1)
        if len(init_codes) < 1 or np.any(norms == 0):
            raise OptimizerError("initial codes must be non-zero")
        self.first_codes = init_codes.copy()
        self.log_norm0 = float(np.log(norms.mean()))
        self.log_norm = self.log_norm0 + np.log(self.init_norm_factor)
        self.center: np.ndarray | None = None
        self.velocity = np.zeros(self.dim)
        self.step = 0                            # updates made: the index into the schedule
        self.u = np.zeros((0, self.dim))         # the pending generation's tangent directions ...
        self.eps = np.zeros(0)                   # ... and log-norm offsets, one per pair

    def params(self):
        # the noise options only when on: states saved before they existed still load
        on = (self.centre_repeats, self.noise_step, self.elite_check) != (0, "off", False)
        extra = {} if not on else {
            "centre_repeats": self.centre_repeats, "noise_step": self.noise_step, "elite_check": self.elite_check}
        return extra | {"population": self.population, "angle_init_deg": self.angle_init_deg,
                "angle_final_deg": self.angle_final_deg, "decay_generations": self.decay_generations,
                "step_ratio": self.step_ratio, "smoothing": self.smoothing, "norm_rate": self.norm_rate,
                "norm_coupling": self.norm_coupling, "init_norm_factor": self.init_norm_factor,
                "max_norm_factor": self.max_norm_factor,
                "min_norm_factor": self.min_norm_factor}

    def angle(self) -> float:
        """The sample angle (radians) at the current step."""
        span = max(self.decay_generations - 1, 1)
        t = min(self.step, span) / span
        return float(np.deg2rad(self.angle_init_deg * (self.angle_final_deg / self.angle_init_deg) ** t))

    @property
    def norm(self) -> float:
        return float(np.exp(self.log_norm))

    def _ask(self):
        if self.center is None:
            return self.first_codes.copy()
        theta, k = self.angle(), self.pairs
        # tangent N(0, I/dim): unit length on average, so that the angle is about theta
        self.u = tangent(self.center, self.rng.standard_normal((k, self.dim))) / np.sqrt(self.dim)
        self.eps = self.norm_coupling * theta * self.rng.standard_normal(k)
        directions = unit(exp_map(self.center, theta * np.vstack([self.u, -self.u])))
        codes = directions * np.exp(self.log_norm + np.concatenate([self.eps, self.eps]))[:, None]
        repeats = self.population - 2 * k       # an odd remainder, plus centre_repeats
        if repeats:
            codes = np.vstack([codes, np.repeat(self.norm * self.center[None], repeats, axis=0)])
        return codes

    def _tell(self, codes, scores):
        if self.center is None:
            self._first_tell(codes, scores)
            return
        k = self.pairs
        plus, minus = scores[:k], scores[k:2 * k]
        ok = ~np.isnan(plus) & ~np.isnan(minus)
        if ok.sum() < 2:
            return   # nothing to compare: the next ask draws afresh at the same angle
        w = centred_ranks((plus - minus)[ok])
        total = centred_ranks((plus + minus)[ok])
        if not w.any() and not total.any():
            return   # every score equal: no ranking information
        if self.elite_check:
            self._check_elite(scores[2 * k:])
        theta = self.angle()
        # normalised by the weights' size, so that the step (about step_ratio * theta:
        # the random part of w @ u dominates) does not depend on the population
        step = self.step_ratio * theta * (w @ self.u[ok]) / np.sqrt(w @ w) if w.any() else 0.0 * self.u[0]
        if self.noise_step != "off":
            step = step * self._signal_fraction(plus[ok], minus[ok], scores[2 * k:])
        if self.elite_check:
            step = tangent(self.center, step[None])[0]   # the centre may have gone back
        previous = tangent(self.center, self.velocity[None])[0]   # carried onto the new tangent plane
        self.velocity = self.smoothing * previous + (1 - self.smoothing) * step
        self.center = unit(exp_map(self.center, self.velocity[None])[0])
        if self.norm_rate > 0 and total.any():
            corr = _correlation(total, centred_ranks(self.eps[ok]))
            self.log_norm = float(np.clip(self.log_norm + self.norm_rate * self.norm_coupling * theta * corr,
                                          self.log_norm0 + np.log(self.min_norm_factor),
                                          self.log_norm0 + np.log(self.max_norm_factor)))
        self.step += 1

    def _check_elite(self, centre):
        """Keep the centre if its repeats score no worse than the last kept one's (within
        one standard error of the difference); otherwise go back to that one.  This
        generation's step is then taken from wherever the centre is."""
        centre = centre[~np.isnan(centre)]
        if len(centre) == 0:
            return
        n, mean = len(centre), float(centre.mean())
        var = float(centre.var(ddof=1)) if n > 1 else 0.0
        if len(self.elite):
            en, emean, evar = self.elite_stats
            if mean < emean - np.sqrt(var / n + evar / en):
                self.center, self.log_norm = self.elite.copy(), self.elite_log_norm
                self.velocity = np.zeros(self.dim)
                return
        self.elite, self.elite_log_norm = self.center.copy(), self.log_norm
        self.elite_stats = np.array([n, mean, var])

    def _signal_fraction(self, plus, minus, centre):
        """How much of the pair differences' spread is signal, as a step factor in [0.25, 1].

        The differences' variance is signal plus noise; the noise part comes from the
        centre's repeats ('repeats': multiplicative noise, so a smoothed coefficient
        of variation times the pairs' mean square) or from the pairs' sums ('pairs':
        to first order they carry no direction signal, only noise, curvature and the
        norm offsets: a conservative estimate that costs no presentations)."""
        diff = plus - minus
        var_diff = diff.var(ddof=1)
        if self.noise_step == "repeats":
            centre = centre[~np.isnan(centre)]
            if len(centre) >= 2 and centre.mean() > 0:
                cv2 = centre.var(ddof=1) / centre.mean() ** 2
                self.noise_cv2 = cv2 if np.isnan(self.noise_cv2) else 0.7 * self.noise_cv2 + 0.3 * cv2
            if np.isnan(self.noise_cv2):
                return 1.0
            noise_var = self.noise_cv2 * float(np.mean(plus ** 2 + minus ** 2))
        else:
            noise_var = (plus + minus).var(ddof=1)
        if var_diff <= 0:
            return 1.0
        return float(np.sqrt(np.clip(1.0 - noise_var / var_diff, 0.0625, 1.0)))

    def _first_tell(self, codes, scores):
        ranked = ranked_measured(scores)
        if len(ranked) == 0:
            return   # the first codes are asked again
        best = ranked[:max(1, len(ranked) // 2)]
        self.center = unit(log_weights(len(best)) @ unit(codes[best]))
        self.first_codes = np.zeros((0, self.dim))

    def _get_state(self):
        extra = {} if self.noise_step == "off" else {"noise_cv2": self.noise_cv2}
        if self.elite_check:
            extra |= {"elite": self.elite, "elite_log_norm": self.elite_log_norm, "elite_stats": self.elite_stats}
        return extra | {"has_center": self.center is not None,
                "center": self.center if self.center is not None else np.zeros(0),
                "first_codes": self.first_codes, "log_norm0": self.log_norm0, "log_norm": self.log_norm,
                "velocity": self.velocity, "step": self.step, "u": self.u, "eps": self.eps}

    def _set_state(self, s):
        self.center = np.array(s["center"], dtype=float).reshape(self.dim) if bool(s["has_center"]) else None
        self.first_codes = np.array(s["first_codes"], dtype=float).reshape(-1, self.dim)
        self.log_norm0 = float(s["log_norm0"])
        self.log_norm = float(s["log_norm"])
        self.velocity = np.array(s["velocity"], dtype=float).reshape(self.dim)
        self.step = int(s["step"])
        self.u = np.array(s["u"], dtype=float).reshape(-1, self.dim)
        self.eps = np.array(s["eps"], dtype=float).reshape(-1)
        self.noise_cv2 = float(s.get("noise_cv2", np.nan))   # absent when the option is off
        self.elite = np.array(s.get("elite", np.zeros(0)), dtype=float).reshape(-1)
        self.elite_log_norm = float(s.get("elite_log_norm", 0.0))
        self.elite_stats = np.array(s.get("elite_stats", np.zeros(3)), dtype=float).reshape(3)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denom) if denom > 0 else 0.0
