"""The session's threads, built from its config."""

from __future__ import annotations

import numpy as np

from server.threads import build_threads
from tests.conftest import small_config


def test_step_schedule_spans_the_session_unless_set(tmp_path):
    cfg = small_config(tmp_path)
    cfg.session.generations = 9
    cfg.threads[0].optimizer.kind = "sphere-es"
    threads, _ = build_threads(cfg)
    assert threads[0].optimizer.decay_generations == 9
    cfg.threads[0].optimizer.decay_generations = 75
    threads, _ = build_threads(cfg)
    assert threads[0].optimizer.decay_generations == 75
    cfg.threads[0].optimizer.kind = "sphere-cma"
    cfg.threads[0].optimizer.decay_generations = 0
    threads, _ = build_threads(cfg)
    assert threads[0].optimizer.decay_generations == 9


def test_same_config_same_first_codes(tmp_path):
    cfg = small_config(tmp_path)
    a, rng_a = build_threads(cfg)
    b, rng_b = build_threads(cfg)
    assert (a[0].optimizer.ask().codes == b[0].optimizer.ask().codes).all()
    assert rng_a.random() == rng_b.random()


def test_build_optimizer_outside_a_session_takes_the_published_75(tmp_path):
    from server.optimizers import build_optimizer
    cfg = small_config(tmp_path)
    cfg.threads[0].optimizer.kind = "sphere-es"
    threads, _ = build_threads(cfg)
    opt = build_optimizer(cfg.threads[0].optimizer, threads[0].generator, np.random.default_rng(0), "t")
    assert opt.decay_generations == 75
