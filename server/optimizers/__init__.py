"""Gradient-free optimizers behind a small ask/tell contract.

Pure numpy (pycma and nevergrad only in external.py, imported when used), no
I/O, an injected np.random.Generator, and they maximise.  The public
`ask`/`tell` check their inputs and call the private `_ask`/`_tell`;
`state_dict`/`load_state_dict` save and restore exactly, and
`to_arrays`/`from_arrays` put a state through np.savez without pickle.

    kind            class                    module
    ga              GeneticOptimizer         ga.py          XDream's GA
    cmaes           CholeskyCMAES            cmaes.py       the Ponce lab's online CMA-ES
    sphere-cma      SphereCMA                sphere_cma.py  GECCO 2022 SphereCMA
    pycma           PycmaOptimizer           external.py    pycma, full covariance
    pycma-diag      PycmaDiagonal            external.py    pycma, CMA_diagonal
    nevergrad-cma   NevergradCMA             external.py    nevergrad's CMA
    ours            OursOptimizer            ours.py        our default
"""

from __future__ import annotations

import inspect

import numpy as np

from server.optimizers.base import Candidates, Optimizer, from_arrays, to_arrays
from server.optimizers.cmaes import CholeskyCMAES
from server.optimizers.external import NevergradCMA, PycmaDiagonal, PycmaOptimizer
from server.optimizers.ga import GeneticOptimizer
from server.optimizers.ours import OursOptimizer
from server.optimizers.sphere_cma import SphereCMA
from xdream.errors import OptimizerError

OPTIMIZER_KINDS: dict[str, type[Optimizer]] = {
    "ga": GeneticOptimizer,
    "cmaes": CholeskyCMAES,
    "sphere-cma": SphereCMA,
    "pycma": PycmaOptimizer,
    "pycma-diag": PycmaDiagonal,
    "nevergrad-cma": NevergradCMA,
    "ours": OursOptimizer,
}

# OptimizerConfig field -> keyword of the optimizer, per kind (population and
# the first codes are passed to every kind)
CONFIG_PARAMS: dict[str, tuple[str, ...]] = {
    "ga": ("mutation_rate", "mutation_size", "selectivity", "heritability", "n_elites"),
    "cmaes": ("init_sigma", "a_update_freq"),
    "sphere-cma": ("select_size", "lr", "sphere_norm", "angle_init_deg", "angle_final_deg",
                   "decay_generations"),
    "pycma": ("sigma0",),
    "pycma-diag": ("sigma0",),
    "nevergrad-cma": ("sigma0",),
    "ours": ("angle_init_deg", "angle_final_deg", "decay_generations", "step_ratio", "norm_rate",
             "init_norm_factor", "min_norm_factor", "max_norm_factor"),
}

__all__ = ["CONFIG_PARAMS", "Candidates", "Optimizer", "GeneticOptimizer", "CholeskyCMAES", "SphereCMA",
           "PycmaOptimizer", "PycmaDiagonal", "NevergradCMA", "OursOptimizer", "OPTIMIZER_KINDS", "make_optimizer",
           "build_optimizer", "to_arrays", "from_arrays"]


def make_optimizer(kind: str, code_shape, rng: np.random.Generator, *, population: int = 40,
                   init_codes: np.ndarray | None = None, name: str = "opt", **params) -> Optimizer:
    """An optimizer of a registered kind; `params` are that kind's keywords."""
    try:
        cls = OPTIMIZER_KINDS[kind]
    except KeyError:
        raise OptimizerError(f"unknown optimizer kind {kind!r}; known: {sorted(OPTIMIZER_KINDS)}") from None
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "code_shape", "rng"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise OptimizerError(f"optimizer kind {kind!r} takes no parameters {unknown}; "
                             f"it takes {sorted(accepted - {'population', 'init_codes', 'name'})}")
    return cls(tuple(code_shape), rng, population=population, init_codes=init_codes, name=name, **params)


def build_optimizer(cfg, generator, rng: np.random.Generator, name: str, *, generations: int = 75) -> Optimizer:
    """From an OptimizerConfig; the generator supplies the first codes. `generations`, the
    session's length, is what decay_generations = 0 stands for (75: GECCO 2022's)."""
    if cfg.kind not in OPTIMIZER_KINDS:
        raise OptimizerError(f"unknown optimizer kind {cfg.kind!r}; known: {sorted(OPTIMIZER_KINDS)}")
    params = {key: getattr(cfg, key) for key in CONFIG_PARAMS[cfg.kind]}
    if params.get("decay_generations") == 0:  # the step-size schedule spans the session
        params["decay_generations"] = generations
    init_codes = generator.initial_codes(cfg.population, rng)
    return make_optimizer(cfg.kind, generator.code_shape, rng, population=cfg.population,
                          init_codes=init_codes, name=name, **params)
