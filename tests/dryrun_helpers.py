"""For the tests that run `xdream dry-run` as OS processes and read a session's journal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import small_config
from xdream import config as config_mod


def dry_run(args, out: Path, timeout=600) -> tuple[subprocess.CompletedProcess, Path]:
    """`xdream dry-run --out OUT ARGS`; the finished process and its one session folder.
    (LSLAPICFG reaches the child through os.environ: tests/conftest.py sets it.)"""
    result = subprocess.run([sys.executable, "-m", "xdream.cli", "dry-run", "--out", str(out), *args],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    folders = list(out.iterdir())
    assert len(folders) == 1, folders
    return result, folders[0]


def journal(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines()]


def dry_run_journal(args, out: Path, timeout=600) -> list[dict]:
    return journal(dry_run(args, out, timeout)[1])


def assert_responses_rise(records, generations: int, edge: int = 2, t_min: float = 3.0, note: str = "") -> None:
    """Threads a and b each scored `generations` times, and their last `edge` generations
    beat their first `edge` far beyond the Poisson noise (Welch's t over t_min) and by 25%."""
    scores = {}
    for r in records:
        if r["kind"] == "scores":
            scores.setdefault(r["thread"], []).append(r["scores"])
    for thread in ("a", "b"):
        assert len(scores[thread]) == generations
        first = np.array(scores[thread][:edge], dtype=float).ravel()
        last = np.array(scores[thread][-edge:], dtype=float).ravel()
        t = (last.mean() - first.mean()) / np.sqrt(last.var(ddof=1) / last.size + first.var(ddof=1) / first.size)
        assert t > t_min and last.mean() > 1.25 * first.mean(), \
            f"thread {thread}: {first.mean()} -> {last.mean()}{note}"


def assert_every_presentation_counted(records) -> None:
    sent = [p["pid"] for r in records if r["kind"] == "block" for p in r["presentations"]]
    assert sorted(r["pid"] for r in records if r["kind"] == "counts") == sorted(sent)
    assert not [r for r in records if r["kind"] in ("missing", "rejected", "late_counts")]


def assert_wire_counts_like_in_process(rig: str, tmp_path: Path, generations: int = 3) -> None:
    """The same seeded small session through `rig`'s wire format and in-process: the counts
    agree (up to a spike within one 1/30 kHz sample of a window edge)."""
    path = tmp_path / "small.json"
    config_mod.save_json(small_config(tmp_path, generations=generations), path)
    wire = [r["scores"] for r in dry_run_journal([str(path), "--rig", rig], tmp_path / "wire")
            if r["kind"] == "scores"]
    plain = [r["scores"] for r in dry_run_journal([str(path)], tmp_path / "plain") if r["kind"] == "scores"]
    wire, plain = np.array(wire, dtype=float).ravel(), np.array(plain, dtype=float).ravel()
    assert wire.size == plain.size == generations * 6 and not np.isnan(wire).any()
    assert (wire == plain).mean() >= 0.9
