"""The layers of docs/architecture.md, checked on the source: every import,
at module level or inside a function, runs downwards, and nothing closes a
circle between packages.

    xdream (core)  <-  stimulus_client, recording_adapters, server  <-  simulators  <-  benchmarks  <-  xdream.cli
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("xdream", "stimulus_client", "recording_adapters", "server", "simulators", "benchmarks")
TOP = ("xdream.cli", "benchmarks")      # entry points: may import anything below them
LAYER = {"xdream": 0, "stimulus_client": 1, "recording_adapters": 1, "server": 1, "simulators": 2,
         "benchmarks": 3, "xdream.cli": 4}


def _unit(module: str) -> str:
    """The layer unit a module belongs to: its package, or xdream.cli for the CLI."""
    if module == "xdream.cli" or module.startswith("xdream.cli."):
        return "xdream.cli"
    return module.split(".")[0]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_edges() -> list[tuple[str, str, str]]:
    """(importing module, imported module, file:line) for every import of a project package."""
    edges = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            module = _module_name(path)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] in PACKAGES:
                        edges.append((module, name, f"{path.relative_to(REPO)}:{node.lineno}"))
    return edges


def test_every_import_runs_down_the_layers():
    wrong = []
    for src, dst, where in import_edges():
        a, b = _unit(src), _unit(dst)
        if a == b:
            continue
        if LAYER[b] >= LAYER[a]:
            wrong.append(f"{where}: {src} ({a}, layer {LAYER[a]}) imports {dst} ({b}, layer {LAYER[b]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_circle_between_modules():
    """A module-level circle inside one package is an import-order trap too."""
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    for src, dst, _ in import_edges():
        target = dst if dst in modules else dst.rsplit(".", 1)[0]
        if target in modules and target != src and not src.startswith(target + "."):
            graph.setdefault(src, set()).add(target)
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                circles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_check_sees_a_wrong_edge(tmp_path, monkeypatch):
    """The walker finds imports inside functions, so a lazy upward import is caught too."""
    src = "def f():\n    from simulators.rig import SimulatedRig\n"
    found = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)]
    assert found and found[0].module == "simulators.rig"
    assert LAYER[_unit("server.app")] < LAYER[_unit(found[0].module)]


def test_simulated_peers_share_no_code_with_the_adapters_they_feed():
    """A fake rig that decodes with the adapter's own constants passes whatever the adapter misreads
    (design.md, 'Checks that others could have written'): peers may use the neutral RigEvents only."""
    shared = sorted({(src, dst, where) for src, dst, where in import_edges()
                     if src.startswith("simulators.") and src.endswith("_peer")
                     and dst.startswith("recording_adapters") and not dst.startswith("recording_adapters.events")})
    assert not shared, "\n".join(f"{w}: {s} imports {d}" for s, d, w in shared)
