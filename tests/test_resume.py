"""The pieces of a resume, in process: the checkpoint round trip, the block in
flight rebuilt from journal records (aborts and re-queues included), and the
CLI's refusals.  The whole thing with real processes is tests/test_fault.py."""

import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from server.journal import Journal, read_records
from server.references import builtin_references
from server.resume import Recovery, checkpoint_arrays, restore_checkpoint
from server.scheduler import BlockProgress, Scheduler
from server.threads import build_threads
from tests.conftest import small_config
from xdream import protocol
from xdream.errors import SessionError


def fourier_config(tmp_path):
    cfg = small_config(tmp_path)
    cfg.threads[0].generator.kind = "fourier"
    return cfg


def test_checkpoint_restores_optimizers_and_scheduler_exactly(tmp_path):
    cfg = fourier_config(tmp_path)
    threads, rng = build_threads(cfg)
    scheduler = Scheduler(builtin_references(2, 8), rng)
    for generation in range(2):   # two generations told
        asked = threads[0].optimizer.ask()
        scheduler.build_block(generation, {"a": (asked.ids, np.zeros((len(asked.ids), 8, 8, 3), np.uint8))})
        threads[0].optimizer.tell(asked.ids, np.arange(len(asked.ids), dtype=float))
    threads[0].best_score = 5.0
    journal = Journal(tmp_path / "s")
    journal.save_checkpoint(checkpoint_arrays(1, threads, scheduler))

    fresh, fresh_rng = build_threads(cfg)
    fresh_scheduler = Scheduler(builtin_references(2, 8), fresh_rng)
    assert restore_checkpoint(journal.load_checkpoint(), fresh, fresh_scheduler) == 2
    assert fresh[0].best_score == 5.0
    a, b = threads[0].optimizer.ask(), fresh[0].optimizer.ask()
    assert a.ids == b.ids and np.array_equal(a.codes, b.codes)
    imgs = np.zeros((len(a.ids), 8, 8, 3), np.uint8)
    x = scheduler.build_block(2, {"a": (a.ids, imgs)})
    y = fresh_scheduler.build_block(2, {"a": (b.ids, imgs)})
    assert [(p.pid, p.code, p.image_id) for p in x.presentations] == \
           [(p.pid, p.code, p.image_id) for p in y.presentations]
    journal.close()


def test_checkpoint_of_other_threads_is_refused(tmp_path):
    cfg = fourier_config(tmp_path)
    threads, rng = build_threads(cfg)
    scheduler = Scheduler([], rng)
    arrays = checkpoint_arrays(0, threads, scheduler)
    cfg.threads[0].name = "other"
    other, rng2 = build_threads(cfg)
    with pytest.raises(SessionError, match="threads"):
        restore_checkpoint(arrays, other, Scheduler([], rng2))


def journal_of_a_block_with_an_abort(tmp_path):
    """What a server journaled of block 0 before it died: one presentation aborted and
    re-queued, the re-queue aborted again (not yet re-queued), another one shown and counted."""
    journal = Journal(tmp_path / "s")
    scheduler = Scheduler(builtin_references(2, 8), np.random.default_rng(3))
    imgs = np.zeros((3, 8, 8, 3), np.uint8)
    block = scheduler.build_block(0, {"a": (["a/0", "a/1", "a/2"], imgs)})
    progress = BlockProgress(block)
    p0, p1 = block.presentations[:2]

    def write_block(ps):
        journal.write("block", block_id=0, generation=0,
                      presentations=[{"pid": p.pid, "code": p.code, "kind": p.kind, "thread": p.thread,
                                      "image_id": p.image_id, "requeue_of": p.requeue_of} for p in ps])
    write_block(block.presentations)
    journal.write("shown", peer="presenter", **asdict(protocol.Shown(0, p0.pid, "aborted")))
    again = scheduler.requeue(p0)
    progress.add(again)
    write_block([again])
    journal.write("shown", peer="presenter", **asdict(protocol.Shown(0, p1.pid, "shown", 1.5, 6)))
    journal.write("counts", peer="recorder", **asdict(protocol.Counts(0, p1.pid, "ok", [3.0], [0.0], 2.5)))
    journal.write("shown", peer="presenter", **asdict(protocol.Shown(0, again.pid, "aborted")))
    journal.close()
    return read_records(tmp_path / "s"), again


def test_block_in_flight_is_rebuilt_with_its_requeues_and_reports(tmp_path):
    records, again = journal_of_a_block_with_an_abort(tmp_path)
    scheduler = Scheduler(builtin_references(2, 8), np.random.default_rng(3))
    block = scheduler.build_block(0, {"a": (["a/0", "a/1", "a/2"], np.zeros((3, 8, 8, 3), np.uint8))})
    recovery = Recovery(records, 0)
    recovery.check_block(block)
    progress = BlockProgress(block)
    aborted = recovery.replay(progress, scheduler)
    assert again.pid in progress.by_pid and progress.by_pid[again.pid].code == again.code
    assert aborted == [again.pid]      # aborted, not yet re-queued: the resumed server re-queues it
    p1 = block.presentations[1].pid
    assert progress.status(p1) == "shown" and progress.response(p1, 0, False) == 3.0
    unreported = [p.pid for p in recovery.unreported(progress)]
    assert again.pid not in unreported and p1 not in unreported
    assert len(unreported) == len(block.presentations) - 3   # 5 originals less 2 reported, requeue reported
    # the next re-queue gets the code it would have had without the crash
    assert scheduler.requeue(progress.by_pid[again.pid]).pid == f"{again.requeue_of}r2"


def test_block_rebuilt_differently_is_refused(tmp_path):
    records, _ = journal_of_a_block_with_an_abort(tmp_path)
    scheduler = Scheduler(builtin_references(2, 8), np.random.default_rng(4))   # another stream
    block = scheduler.build_block(0, {"a": (["a/0", "a/1", "a/2"], np.zeros((3, 8, 8, 3), np.uint8))})
    with pytest.raises(SessionError, match="rebuilt differently"):
        Recovery(records, 0).check_block(block)


@pytest.mark.parametrize("args, message", [
    (["serve", "--resume", "NOWHERE"], "no config.json there"),
    (["serve", "--resume", "NOWHERE", "default"], "give no CONFIG"),
    (["serve"], "needs a CONFIG"),
])
def test_cli_refuses_what_cannot_be_resumed(tmp_path, args, message):
    args = [a.replace("NOWHERE", str(tmp_path / "nowhere")) for a in args]
    result = subprocess.run([sys.executable, "-m", "xdream.cli", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and message in result.stderr
