"""xdream-lab: closed-loop image evolution for visual neurons.

This package holds what every role shares and that imports neither torch nor
psychopy: the wire protocol, the config tree, the exception tree, the peer
connection and the command line.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`from xdream import load_session` (xdream/notebook.py), imported only when asked for:
    a presenter that imports xdream.protocol does not read sessions."""
    if name in ("load_session", "Session"):
        from xdream import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'xdream' has no attribute {name!r}")
