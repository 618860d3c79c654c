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
    sphere-es       SphereES                 sphere_es.py   the default config's (formerly "ours")

The kinds' names live in the core (xdream/optimizer_kinds.py: the config checks
them without importing server/); `OPTIMIZERS` is built from these classes and
checked against those names at import, so a kind added in one place only
fails loudly.  Old names (aliases) are resolved by `canonical_kind`.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from server.optimizers.base import Candidates, Optimizer, from_arrays, to_arrays
from server.optimizers.cmaes import CholeskyCMAES
from server.optimizers.external import NevergradCMA, PycmaDiagonal, PycmaOptimizer
from server.optimizers.ga import GeneticOptimizer
from server.optimizers.sphere_cma import SphereCMA
from server.optimizers.sphere_es import SphereES
from xdream.errors import OptimizerError
from xdream.optimizer_kinds import OPTIMIZER_KINDS, canonical_kind

if TYPE_CHECKING:
    from server.generators.base import ImageGenerator
    from xdream.config import OptimizerConfig


class OptimizerClass(Protocol):
    """A registered kind: an Optimizer subclass whose constructor also takes the population
    and the first codes (the base class's does not), plus that kind's own keywords."""

    kind: str

    def __call__(self, code_shape: tuple[int, ...], rng: np.random.Generator, *, population: int,
                 init_codes: np.ndarray | None, name: str) -> Optimizer: ...


def registry(classes: tuple[OptimizerClass, ...],
             kinds: tuple[str, ...] = OPTIMIZER_KINDS) -> dict[str, OptimizerClass]:
    """kind -> class, in the order of `kinds`; OptimizerError unless the classes' kinds are
    exactly those names (a kind known to the config but not to the server, or the reverse)."""
    by_kind = {cls.kind: cls for cls in classes}
    missing, extra = sorted(set(kinds) - set(by_kind)), sorted(set(by_kind) - set(kinds))
    if missing or extra or len(by_kind) != len(classes):
        raise OptimizerError(f"optimizer registry and xdream/optimizer_kinds.py differ: no class for {missing}, "
                             f"no name for {extra}, {len(classes) - len(by_kind)} classes share a kind")
    return {kind: by_kind[kind] for kind in kinds}


OPTIMIZERS: dict[str, OptimizerClass] = registry(
    (GeneticOptimizer, CholeskyCMAES, SphereCMA, PycmaOptimizer, PycmaDiagonal, NevergradCMA, SphereES))

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
    "sphere-es": ("angle_init_deg", "angle_final_deg", "decay_generations", "step_ratio", "norm_rate",
                  "init_norm_factor", "min_norm_factor", "max_norm_factor"),
}
if list(CONFIG_PARAMS) != list(OPTIMIZERS):
    raise OptimizerError(f"CONFIG_PARAMS names kinds {list(CONFIG_PARAMS)}, the registry {list(OPTIMIZERS)}")

__all__ = ["CONFIG_PARAMS", "Candidates", "Optimizer", "GeneticOptimizer", "CholeskyCMAES", "SphereCMA",
           "PycmaOptimizer", "PycmaDiagonal", "NevergradCMA", "SphereES", "OPTIMIZERS", "make_optimizer",
           "build_optimizer", "canonical_kind", "to_arrays", "from_arrays"]


def make_optimizer(kind: str, code_shape, rng: np.random.Generator, *, population: int = 40,
                   init_codes: np.ndarray | None = None, name: str = "opt", **params: Any) -> Optimizer:
    """An optimizer of a registered kind (or an old name of one); `params` are that kind's keywords."""
    kind = canonical_kind(kind)
    try:
        cls = OPTIMIZERS[kind]
    except KeyError:
        raise OptimizerError(f"unknown optimizer kind {kind!r}; known: {sorted(OPTIMIZERS)}") from None
    accepted = set(inspect.signature(cls).parameters) - {"code_shape", "rng"}   # the constructor
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise OptimizerError(f"optimizer kind {kind!r} takes no parameters {unknown}; "
                             f"it takes {sorted(accepted - {'population', 'init_codes', 'name'})}")
    return cls(tuple(code_shape), rng, population=population, init_codes=init_codes, name=name, **params)


def build_optimizer(cfg: OptimizerConfig, generator: ImageGenerator, rng: np.random.Generator, name: str, *,
                    generations: int = 75) -> Optimizer:
    """From an OptimizerConfig; the generator supplies the first codes. `generations`, the
    session's length, is what decay_generations = 0 stands for (75: GECCO 2022's)."""
    kind = canonical_kind(cfg.kind)
    if kind not in OPTIMIZERS:
        raise OptimizerError(f"unknown optimizer kind {cfg.kind!r}; known: {sorted(OPTIMIZERS)}")
    params = {key: getattr(cfg, key) for key in CONFIG_PARAMS[kind]}
    if params.get("decay_generations") == 0:  # the step-size schedule spans the session
        params["decay_generations"] = generations
    init_codes = generator.initial_codes(cfg.population, rng)
    return make_optimizer(kind, generator.code_shape, rng, population=cfg.population,
                          init_codes=init_codes, name=name, **params)
