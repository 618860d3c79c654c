"""The re-segmenting TCP proxy now lives in simulators/resegmenting_proxy.py, so that a simulated
rig started by `xdream record --simulate` (a process of its own in a dry run) can route its peer's
ports through it too; tests import it from here as before."""

from simulators.resegmenting_proxy import DOWN, UP, ResegmentingProxy, resegment  # noqa: F401
