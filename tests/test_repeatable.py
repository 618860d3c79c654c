"""A simulated session with one seed is the same every time on one machine (issue 12, defect 12).

Three runs of `xdream serve CFG --simulate` with a headless presenter gave different
generation-2 means.  Here the same small seeded session runs as real processes (the
server with its in-process recorder and simulated rig, a headless presenter) two times;
every generation's scores must be identical, bit for bit: the simulated rig's spikes
are drawn from seeds and from what is shown, never from when a message arrived or how
many screen frames one poll of the rig happened to collect.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import small_config
from tests.dryrun_helpers import journal
from xdream import config as config_mod
from xdream.stdout_lines import LISTENING, SCREEN_TAP, SESSION_FOLDER

CLI = [sys.executable, "-m", "xdream.cli"]


def _serve_and_present(cfg_file: Path, out: Path, timeout_s: float = 300) -> dict[tuple[int, str], list]:
    """One session: `serve --simulate` plus `present --headless`; {(generation, thread): scores}."""
    server = subprocess.Popen([*CLI, "serve", str(cfg_file), "--out", str(out), "--simulate"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    presenter = None
    try:
        found = {}
        for line in server.stdout:
            for prefix in (LISTENING, SCREEN_TAP, SESSION_FOLDER):
                if line.startswith(prefix):
                    found[prefix] = line[len(prefix):].strip()
            if LISTENING in found:
                break
        assert LISTENING in found and SCREEN_TAP in found, (found, server.stderr.read()[-3000:])
        presenter = subprocess.Popen([*CLI, "present", "--server", found[LISTENING], "--screen-tap",
                                      found[SCREEN_TAP], "--headless", "--window-size", "128", "128",
                                      "--log-dir", str(out / "presenter")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rest, err = server.communicate(timeout=timeout_s)
        assert server.returncode == 0, rest + err[-3000:]
        presenter.wait(timeout=30)
    finally:
        for proc in (server, presenter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    records = journal(Path(found[SESSION_FOLDER]))
    assert not [r for r in records if r["kind"] == "missing"], "a presentation went missing"
    return {(r["generation"], r["thread"]): r["scores"] for r in records if r["kind"] == "scores"}


@pytest.mark.timeout(900)
def test_two_runs_of_one_seeded_simulated_session_score_every_generation_the_same(tmp_path):
    cfg = small_config(tmp_path, generations=4, seed=3)
    cfg_file = tmp_path / "small.json"
    cfg_file.write_text(json.dumps(config_mod.to_dict(cfg)))
    first = _serve_and_present(cfg_file, tmp_path / "run1")
    second = _serve_and_present(cfg_file, tmp_path / "run2")
    assert sorted(first) == [(g, "a") for g in range(4)]
    for key in sorted(first):   # generation by generation: the first that differs is named
        assert first[key] == second[key], f"generation {key[0]} thread {key[1]} differs between runs"
