"""The session folder under hostile conditions (issue 12): two servers on one
folder, a lost or damaged checkpoint, journals that say nothing, and starts
that fail half-way.  Each test builds the folder it needs with the server's
own Journal and checkpoint code, then does what an adversary did."""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from server.app import EvolutionServer
from server.journal import LOCK, Journal
from server.references import builtin_references
from server.replay import replay
from server.resume import checkpoint_arrays
from server.scheduler import Scheduler
from server.threads import build_threads
from tests.conftest import small_config
from xdream import config as config_mod
from xdream.cli import main as cli_main
from xdream.errors import ConfigError, SessionError

CLI = [sys.executable, "-m", "xdream.cli"]


def fourier_config(tmp_path, **session):
    cfg = small_config(tmp_path, **session)
    cfg.threads[0].generator.kind = "fourier"   # tiny and deterministic: these tests are about the folder
    return cfg


def stopped_session(tmp_path, generations_done: int = 2, checkpoint: bool = True) -> tuple[Path, object]:
    """A folder as a server leaves it when killed after `generations_done` finished generations:
    session_start, codes, scores and checkpoint records, and checkpoint.npz (unless told not)."""
    cfg = fourier_config(tmp_path, generations=5)
    folder = tmp_path / "s"
    journal = Journal(folder)
    journal.save_config(cfg)
    journal.write("session_start", session=folder.name, threads=[{"name": "a"}])
    threads, rng = build_threads(cfg)
    scheduler = Scheduler(builtin_references(cfg.reference.count, 8), rng)
    for g in range(generations_done):
        asked = threads[0].optimizer.ask()
        journal.save_codes(g, "a", asked.ids, asked.codes)
        scheduler.build_block(g, {"a": (asked.ids, np.zeros((len(asked.ids), 8, 8, 3), np.uint8))})
        scores = np.arange(len(asked.ids), dtype=float)
        threads[0].optimizer.tell(asked.ids, scores)
        journal.write("scores", generation=g, thread="a", ids=asked.ids, scores=scores.tolist())
        if checkpoint:
            journal.save_checkpoint(checkpoint_arrays(g, threads, scheduler))
        journal.write("checkpoint", generation=g)
    journal.close()
    return folder, cfg


# ----------------------------------------------------------------- defect 2
def test_a_second_server_on_a_locked_folder_is_refused_before_it_writes(tmp_path):
    folder, cfg = stopped_session(tmp_path)
    holder = EvolutionServer(cfg, folder, resume=True)       # the first resumed server holds the lock
    before = (folder / "journal.jsonl").read_bytes()
    try:
        with pytest.raises(SessionError, match=f"in use by another server \\(process {os.getpid()} holds"):
            EvolutionServer(cfg, folder, resume=True)
        # the same from another process, as `xdream serve --resume` while S's server runs
        result = subprocess.run(CLI + ["serve", "--resume", str(folder), "--bind", "tcp://127.0.0.1:0"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert f"process {os.getpid()} holds" in result.stderr and "Traceback" not in result.stderr
        assert (folder / "journal.jsonl").read_bytes() == before     # nothing appended, nothing cut
    finally:
        holder.journal.close()
    # released with the server: the next resume takes it
    again = EvolutionServer(cfg, folder, resume=True)
    assert (folder / LOCK).read_text().strip() == str(os.getpid())
    again.journal.close()


def test_the_lock_goes_with_a_killed_holder(tmp_path):
    """flock belongs to the open file: a SIGKILLed server leaves no stale lock."""
    folder, cfg = stopped_session(tmp_path)
    code = ("import sys, time; from server.journal import FolderLock; "
            f"FolderLock({str(folder)!r}).acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(SessionError, match=f"process {proc.pid} holds"):
            EvolutionServer(cfg, folder, resume=True)
    finally:
        proc.kill()
        proc.wait()
    EvolutionServer(cfg, folder, resume=True).journal.close()


# ----------------------------------------------------------------- defect 3
def test_a_missing_checkpoint_the_journal_promises_is_refused(tmp_path):
    folder, cfg = stopped_session(tmp_path)
    (folder / "checkpoint.npz").unlink()
    before = {p: p.read_bytes() for p in [folder / "journal.jsonl", *sorted((folder / "codes").iterdir())]}
    with pytest.raises(SessionError, match=r"checkpoint\.npz is missing, but the journal says generation 1 "
                                           r"was checkpointed"):
        EvolutionServer(cfg, folder, resume=True)
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("damage", [b"not a zip at all", b"PK\x03\x04truncated"])
def test_a_corrupt_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    folder, cfg = stopped_session(tmp_path)
    (folder / "checkpoint.npz").write_bytes(damage)
    before = (folder / "journal.jsonl").read_bytes()
    with pytest.raises(SessionError) as info:
        EvolutionServer(cfg, folder, resume=True)
    assert str(folder / "checkpoint.npz") in str(info.value) and "cannot be read" in str(info.value)
    assert (folder / "journal.jsonl").read_bytes() == before
    # and the CLI says it in one line, with no traceback
    result = subprocess.run(CLI + ["serve", "--resume", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "cannot be read" in result.stderr and "Traceback" not in result.stderr


def test_an_older_checkpoint_is_refused(tmp_path):
    """checkpoint.npz of generation 0 while the journal checkpointed generation 1: a copy put back."""
    folder, cfg = stopped_session(tmp_path, generations_done=1)
    old = (folder / "checkpoint.npz").read_bytes()
    folder2, _ = stopped_session(tmp_path / "two", generations_done=2)
    (folder2 / "checkpoint.npz").write_bytes(old)
    with pytest.raises(SessionError, match="checkpoint of generation 0, but the journal says generation 1"):
        EvolutionServer(cfg, folder2, resume=True)


def test_a_checkpoint_written_just_before_the_kill_is_resumed(tmp_path):
    """The server died after checkpoint.npz of generation 1 and before its journal record: legal."""
    folder, cfg = stopped_session(tmp_path, generations_done=2)
    lines = (folder / "journal.jsonl").read_bytes().splitlines(keepends=True)
    (folder / "journal.jsonl").write_bytes(b"".join(lines[:-1]))   # the last 'checkpoint' record never came
    server = EvolutionServer(cfg, folder, resume=True)
    assert server.start_generation == 2
    server.journal.close()


# ----------------------------------------------------------------- defect 4
def _replay_cli(folder, capsys) -> tuple[int, str]:
    code = cli_main(["replay", str(folder)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_an_empty_journal_does_not_reproduce(tmp_path, capsys):
    folder, _ = stopped_session(tmp_path)
    (folder / "journal.jsonl").write_bytes(b"")
    result = replay(folder)
    assert not result.ok and result.generations_checked == 0
    code, text = _replay_cli(folder, capsys)
    assert code != 0 and "holds no record (0 bytes)" in text and "NOT reproduced" in text
    assert "reproduced: 0 generations" not in text.replace("NOT reproduced", "")


def test_a_journal_without_session_start_does_not_reproduce(tmp_path, capsys):
    folder, _ = stopped_session(tmp_path)
    lines = (folder / "journal.jsonl").read_text().splitlines(keepends=True)
    # renumber the rest so that only the missing session_start is wrong
    import json
    kept = [json.loads(line) for line in lines[1:]]
    for i, r in enumerate(kept):
        r["seq"] = i
    (folder / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    code, text = _replay_cli(folder, capsys)
    assert code != 0 and "no session_start record" in text


def test_codes_the_journal_lacks_do_not_reproduce(tmp_path, capsys):
    folder, _ = stopped_session(tmp_path, generations_done=3)
    # the journal cut after session_start: codes/ holds generations 0-2 it knows nothing of
    first = (folder / "journal.jsonl").read_text().splitlines(keepends=True)[0]
    (folder / "journal.jsonl").write_text(first)
    code, text = _replay_cli(folder, capsys)
    assert code != 0 and "holds generation(s) [0, 1, 2] that the journal has no block or scores for" in text


def test_a_folder_that_is_no_session_does_not_reproduce(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    code, text = _replay_cli(tmp_path / "x", capsys)
    assert code != 0 and "not a session folder" in text
    assert "threads  re-derived" not in text


# ----------------------------------------------------------------- defect 8
def test_a_start_that_fails_leaves_no_folder(tmp_path):
    cfg = fourier_config(tmp_path)
    cfg.reference.folder = str(tmp_path / "no-such-references")
    with pytest.raises(ConfigError, match="reference.folder"):
        EvolutionServer(cfg, tmp_path / "s1")
    assert not (tmp_path / "s1").exists()
    cfg = fourier_config(tmp_path)
    cfg.threads[0].generator.kind = "deepsim"
    cfg.threads[0].generator.weights = str(tmp_path / "no-weights.pt")
    with pytest.raises(Exception):
        EvolutionServer(cfg, tmp_path / "s2")
    assert not (tmp_path / "s2").exists()


def test_a_failed_bind_leaves_no_folder_and_one_clear_error(tmp_path):
    taken = zmq.Context.instance().socket(zmq.ROUTER)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    try:
        cfg = fourier_config(tmp_path)
        server = EvolutionServer(cfg, tmp_path / "s", bind=f"tcp://127.0.0.1:{port}")
        with pytest.raises(SessionError, match=f"cannot listen at tcp://127.0.0.1:{port}.*the port is in use"):
            asyncio.run(server.run())
        assert not (tmp_path / "s").exists()
    finally:
        taken.close(0)


def test_serve_with_a_bad_bind_says_one_line_and_makes_no_folder(tmp_path):
    path = tmp_path / "c.json"
    config_mod.save_json(fourier_config(tmp_path), path)
    for bind, message in [("nonsense", "not an endpoint"), ("tcp://127.0.0.1:99999", "port '99999'"),
                          ("tcp://10.255.255.1:5555", "not one of this machine's")]:
        # --insecure: an address beyond loopback is otherwise refused earlier, for want of CURVE keys
        result = subprocess.run(CLI + ["serve", str(path), "--bind", bind, "--insecure"], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, (bind, result.stderr)
        assert "Traceback" not in result.stderr and "ZMQError" not in result.stderr
        assert not (tmp_path / "sessions").exists() or not list((tmp_path / "sessions").iterdir())


# ----------------------------------------------------------------- disk full
class _DiskFullSession:
    """A small simulated session as real processes (server, recorder, headless presenter),
    for the two disk-full tests: started, stopped by a full disk, resumed to its end."""

    def __init__(self, tmp_path, generations: int):
        cfg = fourier_config(tmp_path, generations=generations)
        cfg.simulator.rf_size_px = 64
        cfg.simulator.baseline_hz = 0.0
        self.config = tmp_path / "c.json"
        config_mod.save_json(cfg, self.config)
        self.out = tmp_path / "run"
        self.out.mkdir()
        self.procs: list[subprocess.Popen] = []

    def start(self, sessions: Path, env=None, log_dir: Path | None = None) -> None:
        from tests.test_fault import _line, _start
        from xdream.stdout_lines import LISTENING, SCREEN_TAP, SESSION_FOLDER
        out = self.out
        self.server = self._keep(_start(CLI + ["-v", "serve", str(self.config), "--out", str(sessions)],
                                        out / "server0.log", env))
        self.folder = Path(_line(self.server, SESSION_FOLDER, out / "server0.log"))
        self.endpoint = _line(self.server, LISTENING, out / "server0.log")
        self.recorder = self._keep(_start(CLI + ["-v", "record", "--server", self.endpoint, "--simulate",
                                                 str(self.config)], out / "rec.log"))
        tap = _line(self.recorder, SCREEN_TAP, out / "rec.log")
        self.presenter = self._keep(_start(CLI + ["-v", "present", "--server", self.endpoint, "--screen-tap", tap,
                                                  "--headless", "--window-size", "128", "128", "--log-dir",
                                                  str(log_dir or self.folder)], out / "pres.log"))

    def stopped_for_space(self) -> None:
        """The server stopped with one clear line (exit 2), no traceback, no session_end."""
        from server.journal import read_journal
        self.server.stdout.read()
        assert self.server.wait(timeout=300) == 2, (self.out / "server0.log").read_text()[-3000:]
        log0 = (self.out / "server0.log").read_text()
        assert "No space left on device" in log0 and f"xdream serve --resume {self.folder}" in log0
        assert "Traceback" not in log0
        assert not [r for r in read_journal(self.folder).records if r["kind"] == "session_end"]

    def resume_to_end(self) -> None:
        """Space is back: the resumed server takes the unacknowledged reports and finishes."""
        from tests.test_fault import _line, _start
        from xdream.stdout_lines import LISTENING
        resumed = self._keep(_start(CLI + ["-v", "serve", "--resume", str(self.folder)], self.out / "server1.log"))
        assert _line(resumed, LISTENING, self.out / "server1.log") == self.endpoint
        resumed.stdout.read()
        assert resumed.wait(timeout=300) == 0, (self.out / "server1.log").read_text()[-3000:]
        for peer, name in ((self.recorder, "rec"), (self.presenter, "pres")):
            assert peer.wait(timeout=60) == 0, (self.out / f"{name}.log").read_text()[-3000:]

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def _keep(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc


def _every_report_once(records: list[dict], n_presentations: int) -> None:
    """Every presentation sent once, shown and counted exactly once, none lost, a finished end."""
    from collections import Counter
    sent = [p["pid"] for r in records if r["kind"] == "block" for p in r["presentations"]]
    assert len(sent) == len(set(sent)) == n_presentations
    for kind in ("shown", "counts"):
        got = Counter(r["pid"] for r in records if r["kind"] == kind)
        assert set(got) == set(sent) and set(got.values()) == {1}, kind
    assert not [r for r in records if r["kind"] in ("missing", "orphan_shown", "orphan_counts")]
    assert records[-1]["kind"] == "session_end" and records[-1]["reason"] == "finished"


def test_a_full_disk_stops_the_session_cleanly_and_resume_goes_on(tmp_path):
    """XDREAM_FAULT=enospc:6: from the 6th report record on, every journal write fails with
    ENOSPC.  The server stops with one clear line, acknowledges nothing it did not write,
    sends no END (the session is to be resumed); the peers keep their unacknowledged
    report and give it to the resumed server, which runs the session to its end."""
    from server.journal import read_journal, read_records

    session = _DiskFullSession(tmp_path, generations=2)
    try:
        session.start(session.out / "sessions", {"XDREAM_FAULT": "enospc:6"})
        session.stopped_for_space()
        read = read_journal(session.folder)
        assert read.dropped_bytes == 0                 # nothing half-written
        reports = [r for r in read.records if r["kind"] in ("shown", "counts")]
        assert len(reports) == 5                       # the 6th was refused, so never acknowledged
        session.resume_to_end()
    finally:
        session.kill()
    _every_report_once(read_records(session.folder), 2 * 8)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_a_real_full_disk_stops_the_session_cleanly_and_resume_goes_on_once_space_is_back(tmp_path):
    """The same as above on a real filesystem that fills: a small tmpfs holds the session
    folder, a filler file takes its last byte once the first block is out, so whatever the
    server writes next (journal, codes, checkpoint, summary, images) fails with ENOSPC.
    The server stops with one clear line and no traceback; nothing acknowledged is lost;
    the filler removed, `serve --resume` runs the session to its end with every report once.
    Needs a tmpfs mount (root or CAP_SYS_ADMIN); the injected-ENOSPC test above runs anywhere."""
    from server.journal import read_records

    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "16m"):
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    session = _DiskFullSession(tmp_path, generations=3)
    try:
        session.start(disk / "sessions", log_dir=session.out)
        deadline = time.monotonic() + 120
        while '"kind": "block"' not in (session.folder / "journal.jsonl").read_text():
            assert time.monotonic() < deadline and session.server.poll() is None, \
                (session.out / "server0.log").read_text()[-3000:]
            time.sleep(0.05)
        with open(disk / "filler", "wb") as f:    # the disk is full from here on
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        session.stopped_for_space()
        (disk / "filler").unlink()                 # space is back
        session.resume_to_end()
        records = read_records(session.folder)
    finally:
        session.kill()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    _every_report_once(records, 3 * 8)
