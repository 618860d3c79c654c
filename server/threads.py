"""The evolution threads of a session, built from its config.

One function builds them, so that the server, a resumed server and a replay
get the same optimizers, fed by the same random streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from server.generators import build_generator
from server.optimizers import Optimizer, build_optimizer
from xdream.objective import Objective

if TYPE_CHECKING:
    from server.generators.base import ImageGenerator
    from xdream.config import Config


@dataclass
class EvolutionThread:
    name: str
    channel: int
    optimizer: Optimizer
    generator: ImageGenerator
    objective: Objective   # what its score is: the channel above, or an expression over channels
    best_score: float = -math.inf


def build_threads(cfg: Config) -> tuple[list[EvolutionThread], np.random.Generator]:
    """The session's threads and the scheduler's random stream, from cfg.session.seed
    and each thread's seed. Threads with the same generator config share one."""
    size = cfg.presentation.image_size_px
    root = np.random.SeedSequence(cfg.session.seed)
    sched_seed, *thread_seeds = root.spawn(1 + len(cfg.threads))
    generators: dict[str, ImageGenerator] = {}
    threads = []
    for tcfg, seed in zip(cfg.threads, thread_seeds):
        key = repr(tcfg.generator)
        if key not in generators:
            generators[key] = build_generator(tcfg.generator, size)
        gen = generators[key]
        rng = np.random.default_rng([tcfg.seed, *seed.generate_state(2)])
        opt = build_optimizer(tcfg.optimizer, gen, rng, tcfg.name, generations=cfg.session.generations)
        threads.append(EvolutionThread(tcfg.name, tcfg.channel, opt, gen, Objective.of_thread(tcfg)))
    return threads, np.random.default_rng(sched_seed)
