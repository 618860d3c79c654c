"""Simulated neurons: an image on the screen in, a firing rate out.

`build_units(cfg)` gives what a rig uses: one column per configured unit, of
any kind.  A 'convnet' unit (`ConvNetUnits`) is one channel of one layer of a
seeded AlexNet-shaped network, at one spatial position; its activation is
z-scored against a fixed set of noise images, and the rate is baseline +
gain * max(0, z), capped.  Its best image is not known.  The other kinds
(simulators/known_units.py) have a known optimum.
"""

from __future__ import annotations

import numpy as np
import torch

from server.generators.base import pick_device
from simulators.alexnet import preprocess, seeded_alexnet


class ConvNetUnits:
    def __init__(self, cfg, device: str = "auto", units=None, net=None):
        self.cfg = cfg
        self.device = pick_device(device)
        self.net = net if net is not None else seeded_alexnet(cfg.seed).to(self.device)
        self.units = cfg.units if units is None else units
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


class SimulatedUnits:
    """Every configured unit, whatever its kind, as columns of one rate matrix."""

    def __init__(self, cfg, device: str = "auto"):
        from simulators.known_units import make_known_unit
        self.cfg = cfg
        self.device = pick_device(device)
        kinds = [u.kind for u in cfg.units]
        net = None
        if any(k in ("convnet", "convnet-capped") for k in kinds):   # one network, shared
            net = seeded_alexnet(cfg.seed).to(self.device)
            for p in net.parameters():
                p.requires_grad_(False)
        conv = [u for u in cfg.units if u.kind == "convnet"]
        self.convnet = ConvNetUnits(cfg, device, units=conv, net=net) if conv else None
        self.known = {i: make_known_unit(u, net=net, device=self.device, seed=cfg.seed)
                      for i, u in enumerate(cfg.units) if u.kind != "convnet"}
        self._conv_cols = [i for i, k in enumerate(kinds) if k == "convnet"]

    @property
    def channels(self) -> int:
        return len(self.cfg.units)

    def rates(self, views: np.ndarray) -> np.ndarray:
        """Firing rates (Hz) above baseline, (n, units)."""
        out = np.zeros((len(views), self.channels))
        if self.convnet is not None:
            out[:, self._conv_cols] = self.convnet.rates(views)
        for i, unit in self.known.items():
            out[:, i] = unit.rates(views)
        return out


def build_units(cfg, device: str = "auto") -> ConvNetUnits | SimulatedUnits:
    """The rig's neurons: plain ConvNetUnits when every unit is a ConvNet unit (as before)."""
    if all(u.kind == "convnet" for u in cfg.units):
        return ConvNetUnits(cfg, device)
    return SimulatedUnits(cfg, device)
