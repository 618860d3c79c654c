"""The whole loop as separate OS processes on 127.0.0.1: `xdream dry-run`."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import small_config
from tests.dryrun_helpers import assert_responses_rise, dry_run, embedded_config, journal
from xdream import config as config_mod


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The embedded default config (two threads, two units), 15 generations (and a longer peer
    timeout: see embedded_config)."""
    tmp = tmp_path_factory.mktemp("default")
    return dry_run([embedded_config(tmp), "--generations", "15"], tmp / "out")


def test_simulated_neuron_response_to_generated_images_rises(default_run):
    """15 generations: pooled and each thread on its own, generation 0 against the last 8
    generations, t over 4 and x1.25 asked. Why the margin holds on any CPU: seen here, pooled
    t 15.8 (x2.72), threads a 14.0 and b 9.0 on AVX2 (left alone or forced); t 22.2 (x3.11),
    a 19.4 and b 13.5 on the portable kernels (ATEN_CPU_CAPABILITY=default,
    ONEDNN_MAX_CPU_ISA=SSE41)."""
    _, folder = default_run
    # pooled and each thread on its own: generation 0 against the last 8, t over 4
    assert_responses_rise(journal(folder), generations=15, t_min=4.0, thread_t_min=4.0)
    summary = json.loads((folder / "summary.json").read_text())
    # the reference images are not evolved: the neuron's response to them stays low
    a = [r for r in summary if r["thread"] == "a"]
    assert np.mean([r["ref_mean"] for r in a[-3:]]) < 0.5 * np.mean([r["mean"] for r in a[-3:]])


def test_progress_lines_and_where_the_results_are(default_run):
    result, folder = default_run
    stdout = result.stdout
    lines = [line for line in stdout.splitlines() if line.startswith("gen ")]
    assert len(lines) == 15 and "a: mean" in lines[0] and "b: mean" in lines[0] and "ref" in lines[0]
    assert f"done: session folder {folder}" in stdout
    for thread in ("a", "b"):
        assert f"best image of thread {thread}" in stdout
        assert (folder / "best" / f"best_{thread}.png").is_file()
    assert len(list((folder / "best").glob("gen*_a.png"))) == 15
    assert len(list((folder / "codes").glob("gen*.npz"))) == 30
    saved = config_mod.load(folder / "config.json")
    assert saved.session.generations == 15 and saved.session.seed == 0


def test_journal_holds_every_presentation(default_run):
    _, folder = default_run
    records = journal(folder)
    blocks = [r for r in records if r["kind"] == "block"]
    assert len(blocks) == 15
    sent = [p["pid"] for b in blocks for p in b["presentations"]]
    assert len(sent) == 15 * 48 and len(set(sent)) == len(sent)
    shown = [r["pid"] for r in records if r["kind"] == "shown"]
    counted = [r["pid"] for r in records if r["kind"] == "counts"]
    assert sorted(shown) == sorted(sent) and sorted(counted) == sorted(sent)
    assert not [r for r in records if r["kind"] in ("missing", "rejected", "late_counts", "late_shown")]
    codes = np.load(sorted((folder / "codes").glob("gen014_a.npz"))[0])
    assert codes["codes"].shape == (20, 100)          # the default space: dcgan-face, 100-d codes
    assert [t["generator"] for t in records[0]["threads"]] == ["dcgan-face", "dcgan-face"]


def test_same_seed_same_session(tmp_path):
    """Seeded end to end: a second run of the same length gives the same scores (the
    step-size schedule spans the session, so a run of another length differs)."""
    _, folder = dry_run(["--generations", "3"], tmp_path / "first")
    _, again = dry_run(["--generations", "3"], tmp_path / "second")
    first = [r for r in journal(folder) if r["kind"] == "scores"]
    second = [r for r in journal(again) if r["kind"] == "scores"]
    assert len(first) == 6
    assert [r["scores"] for r in first] == [r["scores"] for r in second]


@pytest.mark.window
def test_neuron_sees_the_frame_psychopy_drew(tmp_path, display):
    """A real PsychoPy window under Xvfb; the simulated rig's eye is the back
    buffer.  The headless presenter composes its frame from the arrays sent,
    so equal scores mean the drawn frames equalled the sent images pixel for
    pixel (any flip, colour swap or rescale would change the unit's response)."""
    cfg = small_config(tmp_path, generations=2)
    cfg.simulator.rf_size_px = 128
    path = tmp_path / "small.json"
    config_mod.save_json(cfg, path)
    _, window = dry_run([str(path), "--window"], tmp_path / "window")
    _, headless = dry_run([str(path)], tmp_path / "headless")
    w = [r["scores"] for r in journal(window) if r["kind"] == "scores"]
    h = [r["scores"] for r in journal(headless) if r["kind"] == "scores"]
    assert len(w) == 2 and w == h
    assert all(s is not None for gen in w for s in gen)


@pytest.mark.parametrize("space", ["fourier", "dcgan-face", "deepsim-fc6", "deepsim-fc6-weights"])
def test_dry_run_in_each_image_space(tmp_path, space):
    """`xdream dry-run` with a config naming each image space, two generations (deepsim-fc6:
    random weights; -weights: a weights file)."""
    import hashlib

    import torch

    from server.generators.deepsim import DeePSiMFc6

    cfg = small_config(tmp_path, generations=2)
    gen = cfg.threads[0].generator
    if space == "deepsim-fc6-weights":
        weights = tmp_path / "fc6.pt"
        torch.save(DeePSiMFc6().state_dict(), weights)
        gen.kind, gen.weights = "deepsim-fc6", str(weights)
    else:
        gen.kind = space
    path = tmp_path / f"{space}.json"
    config_mod.save_json(cfg, path)
    _, folder = dry_run([str(path)], tmp_path / "out")
    start = journal(folder)[0]
    assert start["kind"] == "session_start"
    if space == "deepsim-fc6-weights":
        assert start["threads"][0]["generator_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    else:
        assert start["threads"][0]["generator"] == space
    scores = [r["scores"] for r in journal(folder) if r["kind"] == "scores"]
    assert len(scores) == 2 and all(s is not None for gen_scores in scores for s in gen_scores)
    assert (folder / "best" / "best_a.png").is_file()


@pytest.mark.window
def test_rig_like_dry_run_accounts_for_every_presentation(tmp_path, display):
    """The windowed presenter with a simulated eye that breaks fixation, LSL
    markers, a fixation point and a photodiode patch: every presentation ends
    shown, or aborted and re-shown, or NaN by policy."""
    cfg = small_config(tmp_path, generations=3)
    path = tmp_path / "small.json"
    config_mod.save_json(cfg, path)
    presenter = Path(__file__).parents[1] / "configs" / "presenter-dry-run.toml"
    _, folder = dry_run([str(path), "--window", "--presenter-config", str(presenter)], tmp_path / "out")
    records = journal(folder)
    sent = [p for r in records if r["kind"] == "block" for p in r["presentations"]]
    status = {r["pid"]: r["status"] for r in records if r["kind"] == "shown"}
    counted = {r["pid"] for r in records if r["kind"] == "counts"}
    nan_by_policy = {r["pid"] for r in records if r["kind"] == "abort_scored_nan"}
    assert set(status) == {p["pid"] for p in sent}              # every presentation reported once
    aborted = [pid for pid, s in status.items() if s == "aborted"]
    assert aborted, "the simulated eye never broke fixation"
    for p in sent:
        if status[p["pid"]] == "shown":
            assert p["pid"] in counted                          # shown: counted
    for pid in aborted:                                         # aborted: re-queued, or NaN by policy
        requeued = [p for p in sent if p["requeue_of"] == pid.split("r")[0]]
        assert requeued or pid in nan_by_policy
    assert list(folder.glob("presenter-*.jsonl")), "the presenter's log belongs in the session folder"
