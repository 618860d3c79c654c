"""ConvNet units standing in for neurons: an image on the screen in, a firing
rate out.

Each unit is one channel of one layer of a seeded AlexNet-shaped network, at
one spatial position.  Its activation is z-scored against a fixed set of
noise images, and the rate is baseline + gain * max(0, z), capped.
"""

from __future__ import annotations

import numpy as np
import torch

from server.generators.base import pick_device
from simulators.alexnet import preprocess, seeded_alexnet


class ConvNetUnits:
    def __init__(self, cfg, device: str = "auto"):
        self.cfg = cfg
        self.device = pick_device(device)
        self.net = seeded_alexnet(cfg.seed).to(self.device)
        self.units = cfg.units
        self.deepest = max((u.layer for u in self.units), key=_layer_depth)
        self.mean, self.std = self._calibrate()

    @property
    def channels(self) -> int:
        return len(self.units)

    @torch.inference_mode()
    def activations(self, views: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 receptive-field views -> (n, units) raw activations."""
        x = preprocess(torch.from_numpy(np.ascontiguousarray(views)).to(self.device))
        outputs = {}
        for layer in sorted({u.layer for u in self.units}, key=_layer_depth):
            outputs[layer] = self.net(x, until=layer)
        cols = []
        for u in self.units:
            out = outputs[u.layer]
            if out.ndim == 4:
                row, col = u.position if u.position else (out.shape[2] // 2, out.shape[3] // 2)
                cols.append(out[:, u.channel, row, col])
            else:
                cols.append(out[:, u.channel])
        return torch.stack(cols, dim=1).cpu().numpy().astype(np.float64)

    def rates(self, views: np.ndarray) -> np.ndarray:
        """Firing rates (Hz) above baseline, (n, units)."""
        z = (self.activations(views) - self.mean) / self.std
        c = self.cfg
        return np.clip(c.gain_hz * np.maximum(z, 0.0), 0.0, c.max_hz - c.baseline_hz)

    def _calibrate(self, n: int = 32):
        """Activation mean and std over seeded noise images (white and low-pass)."""
        rng = np.random.default_rng(self.cfg.seed)
        size = 224
        white = rng.integers(0, 256, size=(n // 2, size, size, 3), dtype=np.uint8)
        coarse = rng.integers(0, 256, size=(n - n // 2, 14, 14, 3), dtype=np.uint8)
        smooth = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)
        acts = self.activations(np.concatenate([white, smooth]))
        return acts.mean(axis=0), np.maximum(acts.std(axis=0), 1e-6)


def _layer_depth(name: str) -> int:
    from simulators.alexnet import LAYERS
    return LAYERS.index(name)
