"""What every rig source yields: event codes and spikes in the rig's clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RigEvents:
    codes: list[tuple[float, int]] = field(default_factory=list)       # (time s, event code)
    spike_times: np.ndarray = field(default_factory=lambda: np.empty(0))
    spike_channels: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=int))
    watermark: float | None = None   # the rig has delivered every event before this time
    # times (s) a photodiode crossed its threshold (rising), where the rig records one; optional
    photodiode: list[float] = field(default_factory=list)
