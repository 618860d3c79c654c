"""xdream-lab: closed-loop image evolution for visual neurons.

This package holds what every role shares and that imports neither torch nor
psychopy: the wire protocol, the config tree, the exception tree, the peer
connection and the command line.
"""

__version__ = "0.1.0"
