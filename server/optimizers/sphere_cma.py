"""SphereCMA (Wang & Ponce, GECCO 2022, arXiv 2204.06765).

Read from their public code: Animadversio/ActMax-Optimizer-Dev core/Optimizers.py
(class ZOHA_Sphere_lr_euclid), core/geometry_utils.py (ExpMap, SLERP,
renormalize), cma_benchmark.py (the settings of the benchmark: population 40,
select_size 20, lr 1.5, sphere_norm 300, lr_schedule(n_gen=75, mode="exp",
lim=(50, 7.33))) and analysis/SphereCMA_stepsize_decay.py.

Every code lies on the sphere of radius `sphere_norm`.  A generation is the
centre plus samples at an angle from it along random tangent directions
(ExpMap of N(0, I) projected on the tangent plane, scaled so that the angle is
about the scheduled one); the angle decays exponentially from `angle_init_deg`
to `angle_final_deg` over `decay_generations` and stays there.  The samples'
ranks give CMA log weights over the best `select_size`; their weighted mean,
back on the sphere, is the target, and the new centre is the spherical
extrapolation SLERP(centre, target, lr).  The centre's own score does not
enter the update (their rankbasis=False).  The first generation is random
codes on the sphere (here: `init_codes` when given), and the first centre
their rank-weighted mean.

Departures: their generation was 1 centre + 40 samples = 41 codes; here
`population` counts the centre, so that a generation costs `population`
presentations like every other optimizer.  NaN-scored samples are left out of
the ranking; with no sample measured the centre stays and the schedule does
not advance.  sphere_norm <= 0 takes the mean norm of the first codes, for
generators whose codes are not fc6-sized (300 fits DeePSiM fc6 codes drawn
from real fc6 statistics).
"""

from __future__ import annotations

import numpy as np

from server.optimizers.base import Optimizer, log_weights, ranked_measured
from server.optimizers.sphere import exp_map, slerp, tangent, unit
from xdream.errors import OptimizerError


class SphereCMA(Optimizer):
    kind = "sphere-cma"

    def __init__(self, code_shape, rng, *, population=40, select_size=0, lr=1.5, sphere_norm=300.0,
                 angle_init_deg=50.0, angle_final_deg=7.33, decay_generations=75, init_codes=None,
                 name="sphere-cma") -> None:
        super().__init__(code_shape, rng, name)
        if population < 3:
            raise OptimizerError("population must be >= 3 (a centre and two samples)")
        select_size = select_size or population // 2   # 0: half, as their 20 of 40
        if not 1 <= select_size <= population - 1:
            raise OptimizerError("select_size must be in [1, population - 1]")
        if lr <= 0 or angle_init_deg <= 0 or angle_final_deg <= 0:
            raise OptimizerError("lr, angle_init_deg and angle_final_deg must be > 0")
        if decay_generations < 1:
            raise OptimizerError("decay_generations must be >= 1")
        if self.dim < 2:
            raise OptimizerError("a sphere needs codes of at least 2 elements")
        self.population = int(population)
        self.select_size = int(select_size)
        self.lr = float(lr)
        self.sphere_norm = float(sphere_norm)
        self.angle_init_deg = float(angle_init_deg)
        self.angle_final_deg = float(angle_final_deg)
        self.decay_generations = int(decay_generations)
        # their mulist: the angle in degrees, over sqrt(N), the norm of a tangent N(0, I)
        self.schedule = (np.logspace(np.log10(angle_init_deg), np.log10(angle_final_deg), decay_generations)
                         / 180 * np.pi / np.sqrt(self.dim))
        if init_codes is None:
            init_codes = rng.standard_normal((population, self.dim))
        init_codes = np.asarray(init_codes, dtype=float).reshape(-1, self.dim)
        if len(init_codes) < 1 or np.any(np.linalg.norm(init_codes, axis=1) == 0):
            raise OptimizerError("initial codes must be non-zero")
        self.radius = self.sphere_norm if self.sphere_norm > 0 else float(np.linalg.norm(init_codes, axis=1).mean())
        self.first_codes = self.radius * unit(init_codes)
        self.center: np.ndarray | None = None
        self.step = 0   # updates made: the index into the schedule

    def params(self):
        return {"population": self.population, "select_size": self.select_size, "lr": self.lr,
                "sphere_norm": self.sphere_norm, "angle_init_deg": self.angle_init_deg,
                "angle_final_deg": self.angle_final_deg, "decay_generations": self.decay_generations}

    def angle_scale(self) -> float:
        return float(self.schedule[min(self.step, len(self.schedule) - 1)])

    def _ask(self):
        if self.center is None:
            return self.first_codes.copy()
        u = self.rng.standard_normal((self.population - 1, self.dim))
        samples = exp_map(self.center, self.angle_scale() * tangent(self.center, u))
        return self.radius * unit(np.vstack([self.center, samples]))

    def _tell(self, codes, scores):
        if self.center is None:
            best = ranked_measured(scores)
            if len(best) == 0:
                return   # the first codes are asked again
            w = log_weights(len(best) / 2) if len(best) > 1 else np.ones(1)
            self.center = self.radius * unit(w @ codes[best[:len(w)]])
            self.first_codes = np.zeros((0, self.dim))
            return
        best = ranked_measured(scores[1:])   # the centre's score does not rank
        if len(best) == 0:
            return
        w = log_weights(min(self.select_size, len(best)))
        target = w @ codes[1:][best[:len(w)]]
        if np.linalg.norm(target) == 0:
            return
        self.center = self.radius * unit(slerp(codes[0], self.radius * unit(target), self.lr))
        self.step += 1

    def _get_state(self):
        return {"has_center": self.center is not None,
                "center": self.center if self.center is not None else np.zeros(0),
                "first_codes": self.first_codes, "radius": self.radius, "step": self.step}

    def _set_state(self, s):
        self.center = np.array(s["center"], dtype=float).reshape(self.dim) if bool(s["has_center"]) else None
        self.first_codes = np.array(s["first_codes"], dtype=float).reshape(-1, self.dim)
        self.radius = float(s["radius"])
        self.step = int(s["step"])
