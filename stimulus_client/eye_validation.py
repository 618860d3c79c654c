"""Eye-tracker validation: PsychoPy's ValidationProcedure in the presenter's window, judged in degrees.

PsychoPy's procedure (psychopy.iohub.client.eyetracker.validation.procedure.ValidationProcedure,
what Builder's Eyetracker Validation routine writes: experiment/routines/eyetracker_validate)
draws a target at each position in turn, stores the tracker's samples through ioHub, and keeps
per target the samples of its stationary period from 0.55 s to 0.15 s before the target ends
with status 0 (`sample_from_filter_stages['used_samples']`).  Its own errors are in the window's
units, minus ioHub's units: right only for a fullscreen window whose units match ioHub's.  So the
errors are computed here from those samples: each sample's gaze (ioHub's screen pixels) goes
through the eye's own conversion to degrees (the one the fixation check uses), each target's
position (window pixels) through the presenter's px-per-degree.

Its `passed` only says every target had samples; here a target passes when it had samples and
the mean distance of its samples from it is at most `eye.validation.threshold_deg`, and the
validation passes when every target passes.

Pacing is by time (`target_s`, `delay_s`), with no results screen: the result goes to the log.
PsychoPy's own keys stay on: escape cancels, g toggles a gaze cursor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np

from stimulus_client.config import ValidationConfig
from xdream.errors import ConfigError

log = logging.getLogger(__name__)

Point = tuple[float, float]


def check_positions(cfg: ValidationConfig, px_per_deg: float, window_px: Sequence[int]) -> None:
    """Every target, with its radius, inside the window: one outside would never be seen."""
    w, h = window_px
    r = cfg.target_deg / 2.0
    for x, y in cfg.positions_deg:
        if abs(x) + r > w / 2.0 / px_per_deg or abs(y) + r > h / 2.0 / px_per_deg:
            raise ConfigError(f"eye.validation.positions_deg {[x, y]} (target diameter {cfg.target_deg} deg) does "
                              f"not fit the {w}x{h} px window (+-{w / 2 / px_per_deg:.1f} x "
                              f"+-{h / 2 / px_per_deg:.1f} deg)")


def _gaze_columns(samples) -> list[tuple[str, str]]:
    names = samples.dtype.names or ()
    if "eye_x" in names:
        return [("eye_x", "eye_y")]
    return [("left_eye_x", "left_eye_y"), ("right_eye_x", "right_eye_y")]


def target_errors(samples, target_deg: Point, gaze_to_deg: Callable[[float, float], Point]) -> list[float]:
    """Each used sample's distance (deg) from the target; a binocular sample averages its eyes'
    distances, as PsychoPy does; a non-finite gaze is left out."""
    if samples is None or len(samples) == 0 or getattr(samples, "dtype", None) is None:
        return []
    out = []
    columns = _gaze_columns(samples)
    for s in samples:
        dists = []
        for cx, cy in columns:
            x, y = float(s[cx]), float(s[cy])
            if not (math.isfinite(x) and math.isfinite(y)):
                break
            gx, gy = gaze_to_deg(x, y)
            dists.append(math.hypot(gx - target_deg[0], gy - target_deg[1]))
        else:
            out.append(sum(dists) / len(dists))
    return out


def summarize(results: dict, *, threshold_deg: float, gaze_to_deg: Callable[[float, float], Point],
              target_to_deg: Callable[[float, float], Point]) -> dict:
    """PsychoPy's results dict -> what the presenter logs: per target, its position and the mean,
    max and count of its samples' errors (deg); overall, the mean of the targets' means, the max of
    their samples, and pass/fail against the threshold."""
    targets = []
    for pos in results.get("position_results", []):
        tx, ty = target_to_deg(*(float(v) for v in pos["target_position"]))
        used = (pos.get("sample_from_filter_stages") or {}).get("used_samples")
        errors = target_errors(used, (tx, ty), gaze_to_deg)
        entry: dict = {"target_deg": [round(tx, 4), round(ty, 4)], "samples": len(errors)}
        if errors:
            mean = float(np.mean(errors))
            entry.update(mean_error_deg=round(mean, 4), max_error_deg=round(float(np.max(errors)), 4),
                         passed=mean <= threshold_deg)
        else:
            entry.update(mean_error_deg=None, max_error_deg=None, passed=False)
        targets.append(entry)
    means = [t["mean_error_deg"] for t in targets if t["mean_error_deg"] is not None]
    return {"passed": bool(targets) and all(t["passed"] for t in targets), "threshold_deg": threshold_deg,
            "mean_error_deg": round(float(np.mean(means)), 4) if means else None,
            "max_error_deg": max((t["max_error_deg"] for t in targets if t["max_error_deg"] is not None),
                                 default=None),
            "targets_without_samples": sum(1 for t in targets if not t["samples"]), "targets": targets}


def one_line(summary: dict) -> str:
    """The log line (and the server's journal note) of a validation."""
    if summary.get("cancelled"):
        return "eye validation cancelled"
    if "error" in summary:
        return f"eye validation failed to run: {summary['error']}"
    verdict = "passed" if summary["passed"] else "FAILED"
    mean, worst = summary["mean_error_deg"], summary["max_error_deg"]
    errors = (f"mean error {mean:.2f} deg, max {worst:.2f} deg" if mean is not None else "no samples")
    missing = summary["targets_without_samples"]
    return (f"eye validation {verdict}: {errors} over {len(summary['targets'])} targets "
            f"(threshold {summary['threshold_deg']:g} deg)" + (f", {missing} without samples" if missing else ""))


def validate_eye(eye) -> tuple[dict, str]:
    """Run the eye's validation; its summary and one line, logged.
    A procedure that fails to run (no samples at all, a tracker error) is a failed validation
    with its error, never a crash: the session goes on."""
    try:
        summary = eye.validate()
    except Exception as exc:
        log.exception("eye validation failed to run")
        summary = {"passed": False, "error": repr(exc)}
    line = one_line(summary)
    # warning either way: the operator asked for it and `xdream present` shows warnings and up
    # (as 'tracker setup done'); a failure's line says FAILED
    log.warning("%s", line)
    return summary, line


def per_target(data, dtype):
    """PsychoPy's per-target sample arrays as a 1-D object array, one structured array per target.

    ValidationTargetRenderer.getSampleMessageData returns np.asanyarray(list, dtype=object): when
    every target got the same number of samples (always, with one target) numpy makes that a 2-D
    array of plain tuples instead, and ValidationProcedure._createValidationResults fails indexing
    it by field name (IndexError).  The records are rebuilt with `dtype`, the renderer's
    sample_msg_dtype.  Ragged lists, the usual case, pass through unchanged."""
    data = np.asanyarray(data, dtype=object)
    if data.ndim < 2:
        return data
    out = np.empty(len(data), dtype=object)
    for i, row in enumerate(data):
        out[i] = np.array([tuple(r) for r in row], dtype=dtype)
    return out


def run_procedure(win, cfg: ValidationConfig, px_per_deg: float) -> dict | None:
    """PsychoPy's ValidationProcedure with the presenter's settings; its results dict, or None
    when it was cancelled (escape).  Needs a running ioHub with the tracker named 'tracker'."""
    from psychopy import visual
    from psychopy.iohub.client.eyetracker.validation import ValidationProcedure
    radius_px = cfg.target_deg / 2.0 * px_per_deg
    # the target as Builder's validation routine makes it (psychopy.visual.TargetStim)
    target = visual.TargetStim(win, name="xdream-validation-target", radius=radius_px, innerRadius=radius_px / 3,
                               lineWidth=2, fillColor=[64, 64, 64], borderColor=[255, 255, 255],
                               innerFillColor=[0, 255, 0], colorSpace="rgb255", units="pix", autoLog=False)
    positions = [(x * px_per_deg, y * px_per_deg) for x, y in cfg.positions_deg]
    procedure = ValidationProcedure(win, target=target, positions=positions, randomize_positions=cfg.randomize,
                                    target_duration=cfg.target_s, target_delay=cfg.delay_s,
                                    enable_position_animation=False, contract_target=False, expand_scale=None,
                                    progress_on_key=None, gaze_cursor=[0, 255, 0], color_space="rgb255",
                                    unit_type="pix", show_results_screen=False, save_results_screen=False,
                                    show_intro_screen=False)
    sequence = procedure.targetsequence
    sample_data = sequence.getSampleMessageData
    # this instance only (see per_target); sample_data() sets sample_msg_dtype before it is read
    sequence.getSampleMessageData = lambda: per_target(sample_data(), sequence.sample_msg_dtype)
    return procedure.run()
