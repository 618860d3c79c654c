"""The presenter config, its geometry, the simulated eye and the marker outputs
at their boundary (fake port objects that record the writes)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from stimulus_client import config as pconfig
from stimulus_client.eye import AWAY_DEG, NoEye, SimulatedEye
from stimulus_client.eye_sources import make_eye
from stimulus_client.geometry import Layout, deg2pix
from stimulus_client.markers import ParallelMarkers, SerialMarkers, strobe_bytes
from tests.test_stimulus_fakes import REPO, FakeParallelPort, FakeSerialPort, config
from xdream.errors import ConfigError

EXAMPLE = REPO / "stimulus_client" / "presenter.example.toml"


# ------------------------------------------------------------------ config
def test_defaults_are_what_the_dry_run_expects():
    cfg = pconfig.load(None)
    assert cfg.monitor.resolution == [800, 600] and cfg.monitor.refresh_hz == 60.0
    assert cfg.stimulus.size_deg is None and cfg.stimulus.position_deg == [0.0, 0.0]
    assert cfg.markers.kind == "none" and cfg.eye.source == "none"
    assert not cfg.fixation_point.enabled and not cfg.photodiode.enabled
    assert cfg.keys.quit == "escape"


def test_the_example_config_loads():
    cfg = pconfig.load(EXAMPLE)
    assert cfg.monitor.refresh_hz == 120.0 and cfg.markers.kind == "parallel"
    assert pconfig.parallel_address(cfg.markers.address) == 0x378


@pytest.mark.parametrize("text, key", [
    ("[monitor]\nrefresh = 60\n", "monitor.refresh"),
    ("[monitr]\nrefresh_hz = 60\n", "monitr"),
    ("[eye]\nsource = 'simulated'\n[[eye.breaks]]\ntrial = 1\nat = 5\n", "eye.breaks[0].at"),
    ("[eye]\n[[eye.breaks]]\ntrial = 1\n", "eye.breaks[0].at_ms"),
])
def test_unknown_or_missing_keys_are_named(tmp_path, text, key):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"'{key}'".replace("[", r"\[").replace("]", r"\]")):
        pconfig.load(path)


@pytest.mark.parametrize("text, needle", [
    ("[monitor]\nrefresh_hz = 'fast'\n", "monitor.refresh_hz"),
    ("[monitor]\nfullscreen = 1\n", "monitor.fullscreen"),
    ("[monitor]\nresolution = [800]\n", "monitor.resolution"),
    ("[trial]\npresentations = 2.5\n", "trial.presentations"),
    ("[photodiode]\ncorner = 'middle'\n", "photodiode.corner"),
    ("[markers]\nkind = 'usb'\n", "markers.kind"),
    ("[markers]\nkind = 'serial'\n", "markers.port"),
    ("[markers]\nkind = 'parallel'\naddress = 'lpt one'\n", "markers.address"),
    ("[eye]\nbreak_probability = 1.5\n", "eye.break_probability"),
    ("[fixation_point]\ncolor = [255, 0]\n", "fixation_point.color"),
    ("[keys]\npause = 'escape'\n", "keys.pause"),
    ("not toml [", "not valid TOML"),
])
def test_wrong_values_are_named(tmp_path, text, needle):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        pconfig.load(path)


def test_flags_override_the_file(tmp_path):
    cfg = pconfig.apply_overrides(pconfig.load(EXAMPLE), server="tcp://127.0.0.1:1", window_size=[160, 120],
                                  frame_rate=75.0, name="p2", log_dir=str(tmp_path))
    assert cfg.connection.server == "tcp://127.0.0.1:1" and cfg.monitor.resolution == [160, 120]
    assert cfg.monitor.refresh_hz == 75.0 and cfg.connection.name == "p2" and cfg.log.dir == str(tmp_path)
    assert cfg.monitor.fullscreen  # not given: the file's value stays


def test_cli_reports_a_bad_config_by_key(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[stimulus]\nsize = 4\n")
    out = subprocess.run([sys.executable, "-m", "xdream.cli", "present", "--config", str(path), "--headless"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "'stimulus.size'" in out.stderr


def test_cli_needs_a_server_from_somewhere(tmp_path):
    out = subprocess.run([sys.executable, "-m", "xdream.cli", "present", "--headless", "--log-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--server" in out.stderr


# ------------------------------------------------------------------ geometry
def test_deg2pix_is_psychopys(display):
    from psychopy import monitors
    from psychopy.tools.monitorunittools import deg2pix as psychopy_deg2pix
    for distance, width, res in [(57.0, 40.0, 800), (70.0, 53.1, 1920), (30.0, 20.0, 320)]:
        mon = monitors.Monitor("xdream-test", width=width, distance=distance, verbose=False, autoLog=False)
        mon.setSizePix([res, res // 2])
        for deg in (0.2, 1.0, 6.5, -3.0):
            assert deg2pix(deg, distance, width, res) == pytest.approx(psychopy_deg2pix(deg, mon), rel=1e-12)


def test_layout_places_image_fixation_and_patch():
    cfg = config(stimulus={"size_deg": 6.0, "position_deg": [-4.0, 2.0], "background": 100},
                 fixation_point={"enabled": True, "size_deg": 1.0, "color": [1, 2, 3]},
                 photodiode={"enabled": True, "corner": "bottom-right", "size_px": 10})
    layout = Layout(cfg)
    assert layout.px_per_deg == pytest.approx(10.0, abs=0.01)
    img = np.zeros((10, 15, 3), np.uint8)
    img[:5] = (255, 0, 0)   # top half red
    canvas = layout.compose(img, fixation=True, photodiode_white=True)
    # 6 deg wide = 60 px, 40 px high, centred 40 px left of and 20 px above the centre
    red = np.argwhere((canvas == (255, 0, 0)).all(axis=2))
    black = np.argwhere((canvas == (0, 0, 0)).all(axis=2))
    assert red[:, 0].min() == 80 and red[:, 0].max() == 99 and black[:, 0].max() == 119
    assert red[:, 1].min() == 90 and red[:, 1].max() == 149
    assert (canvas[230:, 310:] == 255).all()
    fix = np.argwhere((canvas == (1, 2, 3)).all(axis=2))
    assert fix.mean(axis=0) == pytest.approx([119.5, 159.5]) and np.ptp(fix[:, 0]) + 1 == 10
    assert canvas[0, 0].tolist() == [100, 100, 100]
    off = layout.compose(None, fixation=False, photodiode_white=False)
    assert (off[230:, 310:] == 0).all() and (off[:230] == 100).all()


def test_native_size_image_is_pasted_pixel_for_pixel():
    layout = Layout(config())
    img = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    canvas = layout.compose(img, fixation=True, photodiode_white=False)
    np.testing.assert_array_equal(canvas[100:140, 130:190], img)


# ------------------------------------------------------------------ eye
def test_simulated_eye_scripted_breaks_and_away_time():
    eye = SimulatedEye((0.0, 0.0), breaks={1: 100.0}, away_ms=200.0)
    eye.begin_trial(0, 1.0, 0.5)
    assert eye.gaze(1.0) == (0.0, 0.0) and eye.gaze(1.45) == (0.0, 0.0)
    eye.end_trial()
    eye.begin_trial(1, 2.0, 0.5)
    assert eye.gaze(2.05) == (0.0, 0.0)
    assert eye.gaze(2.1) == AWAY_DEG and eye.gaze(2.29) == AWAY_DEG
    assert eye.gaze(2.31) == (0.0, 0.0)


def test_simulated_eye_seeded_break_probability():
    def breaks(seed):
        eye = SimulatedEye((0.0, 0.0), seed=seed, break_probability=0.3, away_ms=10.0)
        out = []
        for trial in range(400):
            eye.begin_trial(trial, trial * 1.0, 0.5)
            ts = np.arange(0, 0.5, 1 / 60) + trial
            out.append(any(eye.gaze(t) == AWAY_DEG for t in ts))
            eye.end_trial()
        return out
    a, b = breaks(7), breaks(7)
    assert a == b and 0.2 < np.mean(a) < 0.4 and breaks(8) != a


def test_make_eye():
    assert isinstance(make_eye(pconfig.from_dict({})), NoEye)
    eye = make_eye(pconfig.from_dict({"eye": {"source": "simulated", "breaks": [{"trial": 2, "at_ms": 5.0}]},
                                      "fixation_point": {"position_deg": [1.0, 2.0]}}))
    assert isinstance(eye, SimulatedEye) and eye.breaks == {2: 5.0} and eye.target == (1.0, 2.0)


# ------------------------------------------------------------------ markers
def test_parallel_markers_write_the_code_then_zero():
    port = FakeParallelPort()
    m = ParallelMarkers(0x378, port=port)
    m.send(17)
    m.clear()
    m.send(255)
    m.close()
    assert [v for _, v in port.writes] == [0, 17, 0, 255, 0]
    assert m.max_code == 255


@pytest.mark.parametrize("strobe, code, data", [
    ("byte", 200, b"\xc8"), ("u16le", 513, b"\x01\x02"), ("u16be", 513, b"\x02\x01"), ("ascii", 42, b"42\n")])
def test_serial_strobe_formats(strobe, code, data):
    port = FakeSerialPort()
    m = SerialMarkers("COM9", 115200, strobe, port=port)
    m.send(code)
    m.clear()  # a strobe box needs no reset
    m.close()
    assert port.writes == [(-1, data)] and port.closed
    assert strobe_bytes(code, strobe) == data
    assert m.max_code == (255 if strobe == "byte" else 65535)


def test_lsl_string_markers_in_process():
    import os
    import uuid
    assert os.environ["LSLAPICFG"].endswith("tests/lsl_api.cfg")  # set by test_stimulus_fakes
    import pylsl  # the [present] extra, which the test command installs: missing is a failure, not a skip

    from stimulus_client.markers import LslMarkers
    name = f"xdream-test-{uuid.uuid4().hex[:8]}"
    m = LslMarkers(name, "string")
    streams = pylsl.resolve_byprop("name", name, timeout=10)
    assert streams, "the marker stream was not found"
    inlet = pylsl.StreamInlet(streams[0])
    inlet.open_stream(timeout=10)
    for code in (3, 1, 2):
        m.send(code)
    got = [inlet.pull_sample(timeout=5)[0] for _ in range(3)]
    assert got == [["3"], ["1"], ["2"]]
    inlet.close_stream()
    m.close()


def test_refresh_mismatch_rule():
    from stimulus_client.runner import refresh_mismatch
    assert not refresh_mismatch(59.9, 60.0) and not refresh_mismatch(120.5, 120.0)
    assert refresh_mismatch(None, 60.0) and refresh_mismatch(75.0, 60.0) and refresh_mismatch(117.0, 120.0)


def test_the_client_imports_neither_torch_nor_for_headless_psychopy():
    code = ("import sys, xdream.cli, stimulus_client.runner, stimulus_client.presenter, stimulus_client.display, "
            "stimulus_client.markers, stimulus_client.eye, xdream.peer; "
            "from stimulus_client.display import HeadlessDisplay; from stimulus_client import config; "
            "HeadlessDisplay(config.load(None)).capture(); "
            "print(sorted(m for m in ('torch', 'psychopy', 'pylsl', 'serial') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
