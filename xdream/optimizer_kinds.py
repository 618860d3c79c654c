"""The optimizer kinds a config may name.

The names live in the core, so that a config is checked where it is loaded
(xdream/config.py) without importing server/; the classes live in
server/optimizers/, whose registry is built against this tuple and refuses to
import if the two differ.  An old name stays an alias: a config or a
checkpoint that says "ours" loads the optimizer that is now called "sphere-es".
"""

from __future__ import annotations

OPTIMIZER_KINDS: tuple[str, ...] = ("ga", "cmaes", "sphere-cma", "pycma", "pycma-diag", "nevergrad-cma",
                                    "sphere-es")

# old name -> the kind it names now
OPTIMIZER_ALIASES: dict[str, str] = {"ours": "sphere-es"}


def canonical_kind(kind: str) -> str:
    """The current name of a kind: aliases resolved, anything else unchanged (checked elsewhere)."""
    return OPTIMIZER_ALIASES.get(kind, kind)
