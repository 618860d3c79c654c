"""The configured eye source: none, the scripted eye, or a real tracker through ioHub."""

from __future__ import annotations

from stimulus_client.config import PresenterConfig
from stimulus_client.eye import EyeSource, make_scripted_eye


def make_eye(cfg: PresenterConfig, display=None) -> EyeSource:
    """The configured eye source; `display` is the presenter's open display (iohub needs its window)."""
    fixation_deg = (cfg.fixation_point.position_deg[0], cfg.fixation_point.position_deg[1])
    if cfg.eye.source == "iohub":
        from stimulus_client.iohub_eye import open_iohub_eye  # psychopy only where a tracker is used
        return open_iohub_eye(cfg, display)
    return make_scripted_eye(cfg.eye, fixation_deg)
