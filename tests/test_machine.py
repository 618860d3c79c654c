"""server/machine.py: the `machine` field that says which machine and kernel path made a session."""

import json

import torch

from server.machine import cpu_model, describe, machine_info


def test_the_cpu_model_is_read_from_cpuinfo_or_left_empty(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B45\nflags\t: avx2\n")
    assert cpu_model(info) == "AMD EPYC 9B45"
    info.write_text("processor\t: 0\nfeatures\t: neon\n")          # an ARM cpuinfo has no model name
    assert cpu_model(info) == ""
    assert cpu_model(tmp_path / "absent") == ""


def test_the_kernel_path_and_its_environment_are_named(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    info = machine_info()
    assert json.loads(json.dumps(info)) == info          # journaled as is
    assert info["torch"] == torch.__version__
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["env"] == {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    line = describe(info)
    assert f"torch {torch.__version__}" in line and line.endswith("ATEN_CPU_CAPABILITY=default, ONEDNN_MAX_CPU_ISA=SSE41")


def test_no_kernel_environment_no_env_field(monkeypatch):
    for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(k, raising=False)
    assert "env" not in machine_info()
    assert "does not name" in describe(None)
