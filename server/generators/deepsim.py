"""The DeePSiM generators (Dosovitskiy & Brox 2016), by their published names.

fc6: 4096-d code -> defc7, defc6, defc5 (4096 each) -> 256x4x4 -> transposed
convolutions -> 3x256x256, LeakyReLU(0.3) between layers.  The network's
output is BGR, mean-subtracted (104, 117, 123), on a 0-255 scale;
`DeepSimGenerator.generate` adds the mean back and returns RGB.
Layer names follow the caffe prototxt (defc7 ... deconv0); every
Deconvolution there has a bias (kept at 0 in training: lr_mult 0).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from server.generators.base import ImageGenerator
from xdream.errors import ConfigError, GeneratorError

log = logging.getLogger(__name__)

BGR_MEAN = (104.0, 117.0, 123.0)


class DeePSiMFc6(nn.Module):
    code_shape = (4096,)

    def __init__(self):
        super().__init__()
        self.defc7 = nn.Linear(4096, 4096)
        self.defc6 = nn.Linear(4096, 4096)
        self.defc5 = nn.Linear(4096, 4096)
        self.deconv5 = nn.ConvTranspose2d(256, 256, 4, stride=2, padding=1)
        self.conv5_1 = nn.ConvTranspose2d(256, 512, 3, stride=1, padding=1)
        self.deconv4 = nn.ConvTranspose2d(512, 256, 4, stride=2, padding=1)
        self.conv4_1 = nn.ConvTranspose2d(256, 256, 3, stride=1, padding=1)
        self.deconv3 = nn.ConvTranspose2d(256, 128, 4, stride=2, padding=1)
        self.conv3_1 = nn.ConvTranspose2d(128, 128, 3, stride=1, padding=1)
        self.deconv2 = nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1)
        self.deconv1 = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)
        self.deconv0 = nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1)
        self.act = nn.LeakyReLU(0.3)

    def layers(self) -> list[nn.Module]:
        return [self.defc7, self.defc6, self.defc5, self.deconv5, self.conv5_1, self.deconv4,
                self.conv4_1, self.deconv3, self.conv3_1, self.deconv2, self.deconv1, self.deconv0]

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = code
        for layer in self.layers()[:-1]:
            if layer is self.deconv5:
                x = x.view(-1, 256, 4, 4)
            x = self.act(layer(x))
        return self.deconv0(x)


ARCHITECTURES = {"fc6": DeePSiMFc6}


class DeepSimGenerator(ImageGenerator):
    """A DeePSiM generator with weights from a file, or seeded random weights."""

    def __init__(self, cfg, image_size: int):
        super().__init__(cfg, image_size)
        self.layer = cfg.kind.removeprefix("deepsim-")
        if self.layer not in ARCHITECTURES:
            raise ConfigError(f"unknown DeePSiM generator {self.layer!r}; known: {sorted(ARCHITECTURES)}")
        self.name = cfg.kind
        self.net = ARCHITECTURES[self.layer]()
        self.code_shape = self.net.code_shape
        if cfg.weights:
            self.weights_sha256 = load_state_dict(self.net, Path(cfg.weights))
        else:
            random_init(self.net, cfg.seed)
        self.net.eval().to(self.device)
        self._mean = torch.tensor(BGR_MEAN, device=self.device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def generate(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.float32).reshape(-1, *self.code_shape)
        bgr = self.net(torch.from_numpy(codes).to(self.device))
        return self.fit_and_quantise((bgr + self._mean).flip(1))  # BGR -> RGB


def random_init(net: DeePSiMFc6, seed: int, n_probe: int = 8) -> None:
    """Seeded random weights, rescaled layer by layer (LSUV-style) so that a
    N(0,1) code gives unit-variance activations and an image with the contrast
    of a real DeePSiM output (std about 60 on the 0-255 scale).  Without the
    rescale, default init gives a flat gray image whatever the code."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers():
            nn.init.normal_(layer.weight, 0.0, 1.0, generator=gen)
            nn.init.normal_(layer.bias, 0.0, 0.1, generator=gen)
        x = torch.randn(n_probe, *net.code_shape, generator=gen)
        last = net.layers()[-1]
        for layer in net.layers():
            if layer is net.deconv5:
                x = x.view(-1, 256, 4, 4)
            y = layer(x)
            scale = (60.0 if layer is last else 1.0) / float(y.std())
            layer.weight.mul_(scale)
            layer.bias.mul_(scale)
            x = net.act(layer(x)) if layer is not last else None


def load_state_dict(net: nn.Module, path: Path) -> str:
    """Load a state dict with this module's (caffe) layer names; return its SHA-256.

    Every tensor's shape is checked, and a mismatch names the layer and both
    shapes.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GeneratorError(f"cannot read generator weights {path}: {exc.strerror}") from None
    sha = hashlib.sha256(data).hexdigest()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or truncated file
        raise GeneratorError(f"{path} is not a torch state dict (truncated or wrong file?): {exc}") from None
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise GeneratorError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for key, tensor in own.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise GeneratorError(f"{path}: layer {key} has shape {tuple(state[key].shape)}, "
                                 f"expected {tuple(tensor.shape)}")
    net.load_state_dict(state)
    log.info("loaded generator weights %s (sha256 %s)", path, sha)
    return sha
