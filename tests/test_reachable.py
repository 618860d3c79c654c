"""benchmarks/reachable.py: what each image space can express, by gradient ascent on the code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import reachable, validity


@pytest.mark.parametrize("name", list(validity.UNITS))
def test_the_torch_drive_is_the_units_own_raw_drive(name):
    unit = validity.known_unit(name, validity.UNITS[name])
    views = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    views[0] = unit.optimum(32).image          # one image far from noise
    got = reachable.drive(unit, torch.from_numpy(views).double()).numpy()
    np.testing.assert_allclose(got, unit.raw(views), rtol=1e-5, atol=1e-9)


def test_the_differentiable_render_is_what_a_session_shows():
    for space in validity.SPACES:
        gen = validity._generator({"space": space, "weights": None, "image_size": 64})
        codes = np.random.default_rng(2).standard_normal((3, *gen.code_shape))
        with torch.no_grad():
            mine = reachable.fit(reachable.rgb(gen, torch.from_numpy(codes).float()), 64).round().numpy()
        diff = np.abs(mine - gen.generate(codes).astype(float))
        assert diff.max() <= 1, space      # the rounding at a .5 may differ, nothing more


def test_gradient_ascent_reaches_the_blob_in_the_fourier_space_and_not_from_noise():
    gen = validity._generator({"space": "fourier", "weights": None, "image_size": 64})
    unit = validity.known_unit("blob", validity.UNITS["blob"])
    start = float(unit.fraction(gen.generate(np.random.default_rng(0).standard_normal((8, *gen.code_shape)))).max())
    got = reachable.reachable(gen, unit, 64, restarts=2, steps=200)
    assert got["fraction"] > 0.85 and start < 0.5
    assert got["code_norm"] <= got["bound"] + 1e-3
