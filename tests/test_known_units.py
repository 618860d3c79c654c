"""Model neurons with a known optimum (simulators/known_units.py): the optimum
image reaches the stated value, nothing else found beats it, and the units
plug into the simulated rig as the ConvNet units do."""

import math

import numpy as np
import pytest

from simulators.alexnet import seeded_alexnet
from simulators.known_units import BlobUnit, GaborEnergyUnit, make_known_unit
from simulators.neuron import ConvNetUnits, SimulatedUnits, build_units
from tests.conftest import small_config
from tests.dryrun_helpers import dry_run, journal
from xdream import config as config_mod
from xdream.config import UnitConfig
from xdream.errors import ConfigError

SIZE = 64
ANALYTIC = [dict(kind="colour", hue_deg=0.0), dict(kind="colour", hue_deg=200.0, centre=[0.3, 0.6], size=0.2),
            dict(kind="gabor-energy", orientation_deg=30.0, cycles=6.0, size=0.2),
            dict(kind="gabor-energy", orientation_deg=90.0, cycles=3.0, centre=[0.4, 0.5]),
            dict(kind="blob"), dict(kind="blob", polarity="off", size=0.1, surround_ratio=2.0)]


@pytest.fixture(scope="module")
def capped():
    net = seeded_alexnet(0)
    for p in net.parameters():
        p.requires_grad_(False)
    return make_known_unit(UnitConfig(kind="convnet-capped", layer="conv2", channel=3, whitebox_steps=40),
                           net=net, seed=0)


def _perturbed(image: np.ndarray, rng, k: int) -> np.ndarray:
    """k copies of the image, each with a random tenth of its pixels set to random values."""
    out = np.repeat(image[None], k, axis=0)
    mask = rng.random(out.shape[:3]) < 0.1
    out[mask] = rng.integers(0, 256, size=(int(mask.sum()), 3), dtype=np.uint8)
    return out


@pytest.mark.parametrize("kw", ANALYTIC, ids=lambda kw: f"{kw['kind']}-{len(kw)}")
def test_optimum_image_reaches_the_stated_value_and_nothing_else_beats_it(kw):
    """The optimum image reaches the raw drive stated (fraction 1, rate peak_hz), within the
    upper bound; random images, perturbed optima and smooth images all stay below it."""
    unit = make_known_unit(UnitConfig(**kw))
    opt = unit.optimum(SIZE)
    assert opt.image.shape == (SIZE, SIZE, 3) and opt.image.dtype == np.uint8
    assert unit.raw(opt.image[None])[0] == pytest.approx(opt.raw, rel=1e-12)
    # exact for the linear units; within the phase-grid bound (0.09 %) for the energy unit
    assert opt.raw <= opt.raw_bound * (1 + 1e-12) and opt.raw >= opt.raw_bound * (1 - 1e-3)
    assert unit.fraction(opt.image)[0] == 1.0 and unit.rates(opt.image[None])[0] == unit.cfg.peak_hz
    rng = np.random.default_rng(1)
    others = np.concatenate([rng.integers(0, 256, size=(16, SIZE, SIZE, 3), dtype=np.uint8),
                             _perturbed(opt.image, rng, 16),
                             np.clip(opt.image.astype(int) // 2 + 64, 0, 255).astype(np.uint8)[None]])
    raw = unit.raw(others)
    assert (raw < opt.raw).all()
    assert (unit.fraction(others) < 1.0).all()
    assert unit.fraction(others[:16]).max() < 0.1      # noise barely drives a unit with a known best


def test_the_energy_optimum_is_not_beaten_by_coordinate_ascent():
    """Greedy pixel flips from the stated optimum image find nothing better (no local gain)."""
    unit = GaborEnergyUnit(UnitConfig(kind="gabor-energy", orientation_deg=45.0, cycles=4.0, size=0.2))
    opt = unit.optimum(32)
    rng = np.random.default_rng(2)
    trials = np.repeat(opt.image[None], 200, axis=0)
    for t in range(len(trials)):
        i, j = rng.integers(0, 32, size=2)
        trials[t, i, j] = 255 - trials[t, i, j]
    assert unit.raw(trials).max() <= opt.raw_bound


def test_a_smooth_gabor_reaches_pi_over_4_squared_of_the_energy_optimum():
    """What docs/benchmarks.md says of smooth image spaces: a full-contrast sinusoidal grating
    under the envelope reaches about (pi/4)^2 = 0.62 of the binarised optimum's energy."""
    cfg = UnitConfig(kind="gabor-energy", orientation_deg=0.0, cycles=8.0, size=0.15)
    unit = GaborEnergyUnit(cfg)
    xs = (np.arange(128) + 0.5) / 128 - 0.5
    grating = 0.5 * np.cos(2 * math.pi * cfg.cycles * xs)[None, :].repeat(128, axis=0)
    image = np.repeat(np.round(255 * (grating + 0.5)).astype(np.uint8)[..., None], 3, axis=2)
    assert unit.fraction(image)[0] == pytest.approx((math.pi / 4) ** 2, abs=0.03)
    rotated = np.ascontiguousarray(image.transpose(1, 0, 2))    # orthogonal orientation
    assert unit.fraction(rotated)[0] < 0.01
    saturating = GaborEnergyUnit(UnitConfig(kind="gabor-energy", cycles=8.0, size=0.15, saturation=0.6))
    assert saturating.fraction(image)[0] == 1.0


def test_the_blob_unit_prefers_one_disc_size():
    unit = BlobUnit(UnitConfig(kind="blob", size=0.1, surround_ratio=3.0))
    opt = unit.optimum(128)
    lit = opt.image[..., 0] > 0
    radius_px = math.sqrt(lit.sum() / math.pi)
    assert radius_px / 128 == pytest.approx(unit.disc_radius(), rel=0.03)
    yy, xx = np.mgrid[:128, :128] + 0.5 - 64

    def disc(r, level=255):
        img = np.where(np.hypot(xx, yy) <= r * 128, level, 0).astype(np.uint8)
        return np.repeat(img[..., None], 3, axis=2)
    r0 = unit.disc_radius()
    responses = unit.fraction(np.stack([disc(r0 * f) for f in (0.5, 1.0, 2.0)]))
    assert responses[1] > 0.98 and responses[0] < responses[1] > responses[2]
    assert unit.fraction(disc(r0, 128))[0] < 0.6 * responses[1]     # lower contrast, lower rate


def test_colour_units_prefer_their_hue():
    red = make_known_unit(UnitConfig(kind="colour", hue_deg=0.0))
    blue = make_known_unit(UnitConfig(kind="colour", hue_deg=240.0))
    fields = np.array([255, 0, 0, 0, 0, 255, 128, 128, 128, 255, 255, 255], dtype=np.uint8).reshape(4, 1, 1, 3)
    fields = np.repeat(np.repeat(fields, SIZE, axis=1), SIZE, axis=2)
    np.testing.assert_allclose(red.fraction(fields), [1.0, 0.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(blue.fraction(fields), [0.0, 1.0, 0.0, 0.0], atol=1e-12)


def test_capped_convnet_unit_is_capped_at_its_white_box_image(capped):
    opt = capped.optimum(SIZE)
    assert capped.fraction(opt.image)[0] == 1.0
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, size=(8, SIZE, SIZE, 3), dtype=np.uint8)
    assert capped.fraction(noise).max() < 0.5


def test_rates_are_realistic_poisson_counts():
    """Baseline 8 Hz and peak 150 Hz in a 150 ms window: about 1 and 24 spikes.  The margins
    (means of 400 draws, s.e.m. 0.05 and 0.25 spikes) are over 10 s.e.m. wide."""
    cfg = config_mod.load(None).simulator
    cfg.units = [UnitConfig(kind="colour", hue_deg=120.0)]
    units = build_units(cfg, "cpu")
    assert isinstance(units, SimulatedUnits) and units.channels == 1
    green = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    green[..., 1] = 255
    grey = np.full((1, SIZE, SIZE, 3), 128, np.uint8)
    rng = np.random.default_rng(4)
    window = 0.150
    best = rng.poisson((units.rates(green)[0, 0] + cfg.baseline_hz) * window, 400).mean()
    base = rng.poisson((units.rates(grey)[0, 0] + cfg.baseline_hz) * window, 400).mean()
    assert 5 * window <= base <= 10 * window + 0.6
    assert 100 * window <= best <= 200 * window


def test_mixed_unit_kinds_give_one_column_each():
    cfg = config_mod.load(None).simulator
    cfg.units = [UnitConfig(channel=0), UnitConfig(kind="blob"), UnitConfig(channel=1)]
    units = build_units(cfg, "cpu")
    plain = ConvNetUnits(config_mod.load(None).simulator, "cpu")
    views = np.random.default_rng(5).integers(0, 256, size=(3, SIZE, SIZE, 3), dtype=np.uint8)
    rates = units.rates(views)
    assert rates.shape == (3, 3)
    np.testing.assert_allclose(rates[:, [0, 2]], plain.rates(views))
    np.testing.assert_allclose(rates[:, 1], units.known[1].rates(views))
    assert isinstance(build_units(config_mod.load(None).simulator, "cpu"), ConvNetUnits)


def test_unit_config_kinds_and_ranges_are_checked_at_load():
    base = config_mod.to_dict(config_mod.load(None))
    base["simulator"]["units"] = [{"layer": "conv4", "channel": 0}, {"kind": "gabor-energy", "cycles": 4}]
    cfg = config_mod.from_dict(base)
    assert [u.kind for u in cfg.simulator.units] == ["convnet", "gabor-energy"]
    for unit, match in (({"kind": "grating"}, "kind"), ({"kind": "colour", "hue_deg": 360}, "hue_deg"),
                        ({"kind": "blob", "surround_ratio": 1.0}, "surround_ratio"),
                        ({"kind": "blob", "centre": [0.5]}, "centre"),
                        ({"kind": "blob", "peak_hz": 245}, "peak_hz"),
                        ({"kind": "blob", "saturation": 0}, "saturation")):
        base["simulator"]["units"] = [unit]
        with pytest.raises(ConfigError, match=match):
            config_mod.from_dict(base)


def test_dry_run_through_the_simulated_rig_with_a_known_unit(tmp_path):
    """A short dry run against a colour unit: the rig fires Poisson spikes from it and
    the session records scores (the best is at least the baseline's count)."""
    cfg = small_config(tmp_path, generations=2)
    cfg.simulator.units = [UnitConfig(kind="colour", hue_deg=0.0)]
    cfg.threads[0].generator.kind = "fourier"
    path = tmp_path / "colour.json"
    config_mod.save_json(cfg, path)
    _, folder = dry_run([str(path)], tmp_path / "out")
    records = journal(folder)
    assert records[0]["kind"] == "session_start"
    scores = [r["scores"] for r in records if r["kind"] == "scores"]
    assert len(scores) == 2 and all(s is not None for g in scores for s in g)
    assert max(max(g) for g in scores) >= 0
