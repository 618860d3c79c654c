import math

import numpy as np
import pytest

from server.references import builtin_references, load_references
from server.scheduler import BlockProgress, Scheduler
from xdream import protocol
from xdream.errors import ConfigError, ProtocolError


def images(n, value=0):
    return np.full((n, 8, 8, 3), value, np.uint8)


def scheduler(seed=0, **kw):
    return Scheduler(builtin_references(3, 8), np.random.default_rng(seed), **kw)


def test_block_holds_every_generated_and_reference_image_once():
    block = scheduler().build_block(0, {"a": (["a/0", "a/1"], images(2)), "b": (["b/0"], images(1))})
    ids = sorted(p.image_id for p in block.presentations)
    assert ids == sorted(["a/0", "a/1", "b/0", "ref/grating_0deg", "ref/grating_45deg",
                          "ref/grating_90deg_coarse"])
    assert len({p.pid for p in block.presentations}) == 6
    assert len({p.code for p in block.presentations}) == 6
    assert {p.thread for p in block.presentations if p.kind == "generated"} == {"a", "b"}


def test_shuffle_is_seeded():
    threads = {"a": ([f"a/{i}" for i in range(10)], images(10))}
    order = lambda s: [p.image_id for p in scheduler(s).build_block(0, threads).presentations]
    assert order(1) == order(1) and order(1) != order(2)
    plain = [p.image_id for p in scheduler(shuffle=False).build_block(0, threads).presentations]
    assert plain[:10] == threads["a"][0]


def test_event_codes_wrap_and_are_never_zero():
    s = scheduler(max_event_code=7)
    codes = []
    for g in range(3):
        codes += [p.code for p in s.build_block(g, {"a": (["x", "y"], images(2))}).presentations]
    assert 0 not in codes and max(codes) == 7
    assert codes[:8] == [1, 2, 3, 4, 5, 6, 7, 1]


def test_block_too_big_for_the_event_codes_is_refused():
    with pytest.raises(ValueError, match="event codes"):
        scheduler(max_event_code=4).build_block(0, {"a": (["x", "y"], images(2))})


@pytest.fixture
def progress():
    block = scheduler().build_block(0, {"a": (["a/0", "a/1"], images(2))})
    return BlockProgress(block)


def shown(progress, pid, status="shown"):
    return protocol.Shown(progress.block.block_id, pid, status, 1.0 if status == "shown" else None, 6)


def counts(progress, pid, values=(3.0, 1.0), baseline=(1.0, 0.0)):
    return protocol.Counts(progress.block.block_id, pid, "ok", list(values), list(baseline), 2.0)


def test_progress_completes_when_every_shown_presentation_has_counts(progress):
    pids = list(progress.by_pid)
    for pid in pids[:-1]:
        progress.record_shown(shown(progress, pid))
        progress.record_counts(counts(progress, pid))
    assert not progress.complete()
    progress.record_shown(shown(progress, pids[-1], "aborted"))   # aborted needs no counts
    assert progress.complete()
    assert math.isnan(progress.response(pids[-1], 0, False))      # aborted: NaN, never 0
    assert progress.response(pids[0], 0, False) == 3.0
    assert progress.response(pids[0], 0, True) == 2.0             # minus baseline


def test_unknown_pid_and_wrong_block_are_rejected(progress):
    with pytest.raises(ProtocolError, match="unknown presentation id"):
        progress.record_shown(shown(progress, "b9999-000"))
    with pytest.raises(ProtocolError, match="block 5"):
        progress.record_counts(protocol.Counts(5, next(iter(progress.by_pid)), "ok", [1.0]))


def test_repeats_are_idempotent_but_conflicts_are_errors(progress):
    pid = next(iter(progress.by_pid))
    assert progress.record_shown(shown(progress, pid))
    assert not progress.record_shown(shown(progress, pid))
    with pytest.raises(ProtocolError, match="already reported"):
        progress.record_shown(shown(progress, pid, "aborted"))


def test_mark_missing_closes_the_block_with_nan(progress):
    pid = next(iter(progress.by_pid))
    progress.record_shown(shown(progress, pid))
    missing = progress.mark_missing("timeout")
    assert pid in missing and progress.complete()
    assert math.isnan(progress.response(pid, 0, False))


def test_references_from_a_folder(tmp_path):
    from PIL import Image
    for name, size in (("b", (40, 20)), ("a", (10, 30))):
        Image.new("RGB", size, (200, 10, 10)).save(tmp_path / f"{name}.png")
    refs = load_references(str(tmp_path), 2, 16)
    assert [r.name for r in refs] == ["a", "b"]
    assert refs[0].pixels.shape == (16, 16, 3) and tuple(refs[0].pixels[8, 8]) == (200, 10, 10)
    with pytest.raises(ConfigError, match="holds 2 images"):
        load_references(str(tmp_path), 3, 16)


def test_builtin_references_are_deterministic_and_distinct():
    a, b = builtin_references(8, 32), builtin_references(8, 32)
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a, b))
    assert len({x.pixels.tobytes() for x in a}) == 8
