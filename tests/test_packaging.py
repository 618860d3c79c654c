"""What a lab installs: the wheel holds every runtime module and nothing else, and
every third-party import of the runtime packages is a declared dependency."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNTIME = ("xdream", "server", "stimulus_client", "recording_adapters", "simulators")
# imported, but deliberately not declared (each says why)
UNDECLARED = {
    "pyopxclient": "Plexon's client ships with Plexon's installer (a Windows DLL), not on PyPI",
}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _declared() -> set[str]:
    project = _pyproject()["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _third_party_imports() -> dict[str, str]:
    """top-level module -> one place that imports it."""
    found: dict[str, str] = {}
    for package in RUNTIME:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in RUNTIME and top != "benchmarks":
                        found.setdefault(top, f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_every_third_party_import_is_declared():
    dists = metadata.packages_distributions()
    declared = _declared()
    missing = []
    for module, where in sorted(_third_party_imports().items()):
        if module in UNDECLARED:
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & declared:
            missing.append(f"{where}: imports {module} (distribution {sorted(names)}), not in pyproject.toml")
    assert not missing, "\n".join(missing)


def test_the_wheel_holds_every_runtime_module_and_no_benchmarks_or_tests(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(REPO), "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("xdream_lab-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(REPO)) for pkg in RUNTIME for p in (REPO / pkg).rglob("*.py")}
    assert expected - names == set()
    assert not [n for n in names if n.startswith(("benchmarks/", "tests/"))]
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "xdream/default_config.toml" in names


def test_the_license_is_an_spdx_expression_with_its_file():
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")
    assert project["license-files"] == ["LICENSE"]
