"""Which machine and which float kernels made a session: the `machine` field of `session_start`.

A session replays bit for bit only on the machine and kernel path that made it:
torch picks its CPU kernels at run time (`torch.backends.cpu.get_cpu_capability()`:
DEFAULT, AVX2, AVX512; capped by ATEN_CPU_CAPABILITY), oneDNN its ISA (capped by
ONEDNN_MAX_CPU_ISA) and MKL its code path (MKL_ENABLE_INSTRUCTIONS), and each path
rounds differently. So the journal says which path made the session, and a replay
that differs can say whether it ran on another one (server/replay.py).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# the environment variables that cap a kernel path, journaled when set
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name ('AMD EPYC 9B45'); '' where /proc/cpuinfo is not readable."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return value.strip()
    return ""


def machine_info() -> dict:
    """A small, JSON-safe description of this machine's float path (journaled once per session)."""
    info: dict[str, object] = {"arch": platform.machine(), "cpu": cpu_model(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    env = {k: os.environ[k] for k in KERNEL_ENV if os.environ.get(k)}
    if env:
        info["env"] = env
    return info


def describe(info: dict | None) -> str:
    """One line for a message: 'x86_64, AMD EPYC, torch 2.13.0, AVX2, ATEN_CPU_CAPABILITY=default'."""
    if not info:
        return "a machine the journal does not name (a session from before the machine field)"
    parts = [str(info.get(k)) for k in ("arch", "cpu") if info.get(k)]
    if info.get("torch"):
        parts.append(f"torch {info['torch']}")
    if info.get("cpu_capability"):
        parts.append(str(info["cpu_capability"]))
    env = info.get("env")
    if isinstance(env, dict):
        parts += [f"{k}={v}" for k, v in sorted(env.items())]
    return ", ".join(parts) or "a machine the journal does not name"
