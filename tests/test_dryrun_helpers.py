"""The rise check of the dry-run tests (tests/dryrun_helpers.py) can fail: on a loop that does
not work, and on one thread that alone carries the rise when each thread must."""

import numpy as np
import pytest

from tests.dryrun_helpers import assert_responses_rise


def session(means: dict[str, list[float]], seed=0, n=20) -> list[dict]:
    """Scores records: Poisson counts around each generation's mean, one NaN (a missing image)."""
    rng = np.random.default_rng(seed)
    records = []
    for thread, per_generation in means.items():
        for g, m in enumerate(per_generation):
            scores = rng.poisson(m, n).astype(float).tolist()
            scores[3] = None
            records.append({"kind": "scores", "thread": thread, "generation": g, "scores": scores})
    return records


CLIMB = [5.0, 5.5, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0]


def test_a_climb_passes_and_a_flat_loop_fails():
    assert_responses_rise(session({"a": CLIMB, "b": CLIMB}, seed=1), generations=10)
    for seed in range(20):      # a loop whose scores do not reach the optimizer: flat responses
        with pytest.raises(AssertionError, match="generation 0"):
            assert_responses_rise(session({"a": [6.0] * 10, "b": [6.0] * 10}, seed=seed), generations=10)


def test_one_flat_thread_passes_pooled_but_not_each_on_its_own():
    records = session({"a": CLIMB, "b": [6.0] * 10}, seed=2)
    assert_responses_rise(records, generations=10)
    with pytest.raises(AssertionError, match="thread b: t"):
        assert_responses_rise(records, generations=10, thread_t_min=3.0)


def test_a_missing_generation_is_named():
    with pytest.raises(AssertionError, match="'b', 9"):
        assert_responses_rise(session({"a": CLIMB, "b": CLIMB[:9]}), generations=10)
