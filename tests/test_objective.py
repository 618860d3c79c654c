"""A thread's objective over the recorded channels (xdream/objective.py): configured,
checked at load and at the recorder's hello, journaled, replayed and exported; and,
on two colour units, a difference objective finds images one unit likes and the
other does not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from server.export import tables
from server.replay import replay
from simulators.known_units import make_known_unit
from tests.conftest import small_config
from tests.dryrun_helpers import dry_run, journal
from xdream import config as config_mod
from xdream import scoring
from xdream.config import ObjectiveConfig, UnitConfig
from xdream.errors import ConfigError
from xdream.objective import Objective
from xdream.session_reader import load_session

RED, BLUE = UnitConfig(kind="colour", hue_deg=0.0), UnitConfig(kind="colour", hue_deg=240.0)


def test_each_kind_combines_the_counts_as_documented():
    counts, base = [4.0, 10.0, 1.0], [1.0, 2.0, 0.0]
    def r(o, subtract=False, status="shown"):
        return scoring.response(status, counts, base, o, subtract)
    assert r(Objective("channel", (1,))) == 10.0 == scoring.response("shown", counts, base, 1, False)
    assert r(Objective("mean", (0, 1, 2))) == 5.0
    assert r(Objective("difference", (1, 0))) == 6.0 and r(Objective("difference", (1, 0)), True) == 5.0
    assert r(Objective("pattern", (0, 2), (1.0, 5.0))) == -5.0     # -sqrt(3^2 + 4^2)
    assert math.isnan(r(Objective("mean", (0, 1)), status="aborted"))
    assert math.isnan(r(Objective("difference", (0, 3))))           # a channel not counted: NaN, not 0


def _data(**objective):
    data = config_mod.to_dict(config_mod.load(None))
    data["threads"][0]["objective"] = objective
    return data


def test_objectives_are_checked_at_load():
    cfg = config_mod.from_dict(_data(kind="difference", channels=[1, 0]))
    assert Objective.of_thread(cfg.threads[0]) == Objective("difference", (1, 0))
    assert Objective.of_thread(cfg.threads[1]) == Objective("channel", (1,))
    for objective, match in (({"kind": "difference", "channels": [0]}, r"\[A, B\]"),
                             ({"kind": "mean", "channels": []}, "at least one"),
                             ({"kind": "mean", "channels": [1, 1]}, "distinct"),
                             ({"kind": "pattern", "channels": [0, 1], "target": [3.0]}, "same length"),
                             ({"kind": "mean", "channels": [0], "target": [3.0]}, "pattern' only"),
                             ({"kind": "channel", "channels": [2]}, "threads.channel"),
                             ({"kind": "ratio"}, "kind"), ({"kind": "mean", "channels": [-1]}, "channels")):
        with pytest.raises(ConfigError, match=match):
            config_mod.from_dict(_data(**objective))


async def test_a_recorder_too_narrow_for_an_objective_is_refused_at_hello(tmp_path):
    from tests.test_server import serving
    from xdream.protocol import MsgType
    cfg = small_config(tmp_path, generations=1)
    cfg.threads[0].objective = ObjectiveConfig(kind="difference", channels=[0, 2])
    async with serving(cfg, tmp_path / "session") as (run, pres, rec):   # rec has channels 0 and 1
        await rec.send(MsgType.HELLO, rec.hello)
        err = await rec.expect(MsgType.ERROR)
        assert "channel 0 minus channel 2" in err.body.reason and "at least 3 channels" in err.body.reason


@pytest.fixture(scope="module")
def difference_session(tmp_path_factory):
    """A short dry run: two colour units (red, blue), one thread scored red minus blue."""
    tmp = tmp_path_factory.mktemp("difference")
    cfg = small_config(tmp, generations=12)
    cfg.simulator.units = [RED, BLUE]
    cfg.simulator.rf_size_px = cfg.presentation.image_size_px     # the units see the image, no grey
    cfg.threads[0].generator.kind = "fourier"
    cfg.threads[0].optimizer.kind = "pycma"        # the fastest riser on this pair (docs/benchmarks.md)
    cfg.threads[0].optimizer.population = 20
    cfg.threads[0].objective = ObjectiveConfig(kind="difference", channels=[0, 1])
    path = tmp / "difference.json"
    config_mod.save_json(cfg.validate(), path)
    return dry_run([str(path)], tmp / "out")[1]


def test_a_difference_objective_finds_images_one_unit_likes_and_the_other_does_not(difference_session):
    """The session's best image drives the red unit well above the blue one (noise-free
    fractions of each unit's optimum).  The best of 20 random fourier images reaches a
    difference of about 0.1; 12 generations of pycma reached 0.37 outside the rig (Poisson
    counts, 150 ms) and 0.26 in this dry run: the margin 0.15 is not met by chance, and leaves
    room for another CPU's float path to draw other counts."""
    best = np.asarray(Image.open(difference_session / "best" / "best_a.png").convert("RGB"))
    red, blue = make_known_unit(RED), make_known_unit(BLUE)
    r, b = red.fraction(best)[0], blue.fraction(best)[0]
    assert r - b > 0.15 and b < 0.02, (r, b)


def test_the_objective_is_journaled_replayed_and_exported(difference_session):
    start = journal(difference_session)[0]
    assert start["threads"][0]["objective"] == {"kind": "difference", "channels": [0, 1], "target": []}
    result = replay(difference_session)
    assert result.ok, result.lines()
    session = load_session(difference_session)
    rows = [row for row in tables(session).presentations if row["thread"] == "a" and row["status"] == "shown"]
    assert rows and all(row["response"] == row["count_ch0"] - row["count_ch1"] for row in rows)
