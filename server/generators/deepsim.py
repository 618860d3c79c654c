"""The DeePSiM generators (Dosovitskiy & Brox 2016), by their published names.

Each network inverts one AlexNet layer; shapes follow the published caffe
prototxts (willwx/XDream prototxt/<layer>/generator_no_batch.prototxt; conv3
uses conv4's), module names are the caffe layer names, LeakyReLU(0.3) between
layers, every Convolution/Deconvolution with its bias.

    layer   code         first layers                    output
    fc6     4096         defc7, defc6, defc5 -> 256x4x4  3x256x256 raw
    fc7     4096         as fc6                          3x256x256 raw
    fc8     1000         as fc6                          3x256x256 raw
    pool5   256x6x6      Rconv6-8 -> 512x4x4             3x256x256 raw
    conv3/4 384x13x13    Rconv6-8 -> 512x8x8             3x256x256 255*tanh
    norm1   96x27x27     Rconv6 (stride 2)-8 -> 128x15x15 3x240x240 255*tanh
    norm2   256x13x13    Rconv6-8 -> 128x15x15           3x240x240 255*tanh

Every network's output is BGR, mean-subtracted (104, 117, 123), on a 0-255
scale: the conv/norm prototxts end in TanH and Power(scale 255) so that their
forward includes the 255*tanh; the others end in a plain Deconvolution.  XDream
de-processes all eight the same way (add the mean, clip to 0-255, BGR -> RGB),
and so does `DeepSimGenerator.generate`.

Weights come from a state dict in our (caffe) names, XDream's PyTorch port or
the Ponce lab's upconvGAN port; see ported_weights.py.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from server.generators import ported_weights
from server.generators.base import ImageGenerator
from server.generators.fast import accelerate
from server.generators.weights import resolve_weights, weights_folder
from xdream.config import GeneratorConfig
from xdream.errors import ConfigError, GeneratorError

log = logging.getLogger(__name__)

BGR_MEAN = (104.0, 117.0, 123.0)
IMAGE_STD = 60.0   # contrast of a real DeePSiM image on the 0-255 scale


class DeePSiMFc6(nn.Module):
    layer_name = "fc6"
    code_shape = (4096,)
    output_size = 256
    tanh_output = False

    def __init__(self):
        super().__init__()
        self.defc7 = nn.Linear(self.code_shape[0], 4096)
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


class DeePSiMFc7(DeePSiMFc6):
    """fc6's architecture, trained to invert fc7."""
    layer_name = "fc7"


class DeePSiMFc8(DeePSiMFc6):
    """fc6's architecture with a 1000-d input (defc7 is 1000 -> 4096)."""
    layer_name = "fc8"
    code_shape = (1000,)


class ConvInputDeePSiM(nn.Module):
    """The generators that read a feature map: Rconv6-8, then up-convolutions.

    Subclasses register their layers in prototxt order; a LeakyReLU follows
    each one except the last and those in `linear_after`."""
    layer_name = ""
    code_shape: tuple[int, ...] = ()
    output_size = 256
    tanh_output = False          # the prototxt ends in TanH, Power(scale 255)
    linear_after: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.act = nn.LeakyReLU(0.3)

    def named_layers(self) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in self.named_children() if m is not self.act]

    def layers(self) -> list[nn.Module]:
        return [m for _, m in self.named_layers()]

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        named = self.named_layers()
        x = code
        for name, layer in named[:-1]:
            x = layer(x)
            if name not in self.linear_after:
                x = self.act(x)
        x = named[-1][1](x)
        return 255.0 * torch.tanh(x) if self.tanh_output else x


def _conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad)


def _deconv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=pad)


class DeePSiMPool5(ConvInputDeePSiM):
    layer_name = "pool5"
    code_shape = (256, 6, 6)

    def __init__(self):
        super().__init__()
        self.Rconv6 = _conv(256, 512, 3, pad=1)
        self.Rconv7 = _conv(512, 512, 3, pad=1)
        self.Rconv8 = _conv(512, 512, 3)            # 6x6 -> 4x4
        self.deconv5 = _deconv(512, 256, 4, 2, 1)
        self.conv5_1 = _deconv(256, 512, 3, 1, 1)   # caffe Deconvolution
        self.deconv4 = _deconv(512, 256, 4, 2, 1)
        self.conv4_1 = _deconv(256, 256, 3, 1, 1)
        self.deconv3 = _deconv(256, 128, 4, 2, 1)
        self.conv3_1 = _deconv(128, 128, 3, 1, 1)
        self.deconv2 = _deconv(128, 64, 4, 2, 1)
        self.deconv1 = _deconv(64, 32, 4, 2, 1)
        self.deconv0 = _deconv(32, 3, 4, 2, 1)


class DeePSiMConv4(ConvInputDeePSiM):
    layer_name = "conv4"
    code_shape = (384, 13, 13)
    tanh_output = True

    def __init__(self):
        super().__init__()
        self.Rconv6 = _conv(384, 384, 3)            # 13 -> 11
        self.Rconv7 = _conv(384, 512, 3)            # -> 9
        self.Rconv8 = _conv(512, 512, 2)            # -> 8
        self.deconv5 = _deconv(512, 256, 4, 2, 1)
        self.conv5_1 = _deconv(256, 256, 3, 1, 1)   # caffe Deconvolution
        self.deconv4 = _deconv(256, 128, 4, 2, 1)
        self.conv4_1 = _deconv(128, 128, 3, 1, 1)
        self.deconv3 = _deconv(128, 128, 4, 2, 1)
        self.conv3_1 = _deconv(128, 128, 3, 1, 1)
        self.deconv2 = _deconv(128, 64, 4, 2, 1)
        self.conv2_1 = _conv(64, 32, 3, pad=1)      # caffe Convolution
        self.deconv1 = _deconv(32, 16, 4, 2, 1)
        self.conv1_1 = _conv(16, 3, 3, pad=1)


class DeePSiMConv3(DeePSiMConv4):
    """conv4's architecture (conv3 and conv4 are both 384x13x13), its own weights."""
    layer_name = "conv3"


class DeePSiMNorm1(ConvInputDeePSiM):
    layer_name = "norm1"
    code_shape = (96, 27, 27)
    output_size = 240
    tanh_output = True
    linear_after = ("deconv1",)   # no ReLU between deconv1 and conv1_1 in the prototxt
    rconv6 = (96, 128, 2)         # in, out, stride (kernel 3, pad 2): 27 -> 15

    def __init__(self):
        super().__init__()
        cin, cout, stride = self.rconv6
        self.Rconv6 = _conv(cin, cout, 3, stride, 2)
        self.Rconv7 = _conv(cout, 128, 3, pad=1)
        self.Rconv8 = _conv(128, 128, 3, pad=1)
        self.deconv4 = _deconv(128, 128, 4, 2, 1)
        self.conv4_1 = _conv(128, 128, 3, pad=1)    # caffe Convolution
        self.deconv3 = _deconv(128, 64, 4, 2, 1)
        self.conv3_1 = _conv(64, 64, 3, pad=1)
        self.deconv2 = _deconv(64, 32, 4, 2, 1)
        self.conv2_1 = _conv(32, 32, 3, pad=1)
        self.deconv1 = _deconv(32, 16, 4, 2, 1)
        self.conv1_1 = _conv(16, 3, 3, pad=1)


class DeePSiMNorm2(DeePSiMNorm1):
    layer_name = "norm2"
    code_shape = (256, 13, 13)
    rconv6 = (256, 256, 1)        # 13 -> 15 (pad 2)


# the two families: what random_init and load_state_dict take
DeePSiMNet = DeePSiMFc6 | ConvInputDeePSiM

ARCHITECTURES: dict[str, type[DeePSiMNet]] = {cls.layer_name: cls for cls in (
    DeePSiMNorm1, DeePSiMNorm2, DeePSiMConv3, DeePSiMConv4, DeePSiMPool5,
    DeePSiMFc6, DeePSiMFc7, DeePSiMFc8)}


class DeepSimGenerator(ImageGenerator):
    """A DeePSiM generator with weights from a file, or seeded random weights."""

    def __init__(self, cfg: GeneratorConfig, image_size: int):
        super().__init__(cfg, image_size)
        self.layer = cfg.kind.removeprefix("deepsim-")
        if self.layer not in ARCHITECTURES:
            raise ConfigError(f"unknown DeePSiM generator {self.layer!r}; known: {sorted(ARCHITECTURES)}")
        self.name = cfg.kind
        self.net = ARCHITECTURES[self.layer]()
        self.code_shape = self.net.code_shape
        if cfg.weights:
            # a path, or a known generator's name looked up in the weights folder
            path = resolve_weights(cfg.weights, weights_folder(cfg.weights_dir or None))
            self.weights_sha256 = load_state_dict(self.net, path)
        else:
            random_init(self.net, cfg.seed)
        self.net.eval().to(self.device)
        # `net` keeps the canonical layers (weights to inspect, gradients for white-box
        # search); `fast_net` is the same network rewritten for speed (fast.py), and is
        # what generates. bf16 falls back to fp32 where the hardware has none.
        self.fast_net = accelerate(self.net, cfg.precision)
        self.precision = self.fast_net.precision
        self._mean = torch.tensor(BGR_MEAN, device=self.device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def generate(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.float32).reshape(-1, *self.code_shape)
        bgr = self.fast_net(torch.from_numpy(codes).to(self.device))
        return self.fit_and_quantise((bgr + self._mean).flip(1))  # BGR -> RGB


def random_init(net: DeePSiMNet, seed: int, n_probe: int = 8) -> None:
    """Seeded random weights, rescaled layer by layer (LSUV-style) so that a
    N(0,1) code gives unit-variance pre-activations and an image with the
    contrast of a real DeePSiM output (std about 60 on the 0-255 scale).
    Without the rescale, default init gives a flat gray image whatever the code.

    One probe forward pass does it: a hook on each layer rescales that layer's
    weight and bias (the output is linear in both) and passes the rescaled
    output on, so later layers are measured on what they will really see."""
    gen = torch.Generator().manual_seed(seed)
    layers = net.layers()
    # the last layer's target: the image std, before 255*tanh where there is one
    last_std = IMAGE_STD / 255.0 if getattr(net, "tanh_output", False) else IMAGE_STD
    with torch.no_grad():
        for layer in layers:
            weight, bias = _weight_and_bias(layer)
            nn.init.normal_(weight, 0.0, 1.0, generator=gen)
            nn.init.normal_(bias, 0.0, 0.1, generator=gen)
        probe = torch.randn(n_probe, *net.code_shape, generator=gen)
        hooks = [layer.register_forward_hook(_rescale_to(last_std if layer is layers[-1] else 1.0))
                 for layer in layers]
        try:
            net(probe)
        finally:
            for hook in hooks:
                hook.remove()


def _rescale_to(target_std: float):
    def hook(layer: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        scale = target_std / float(output.std())
        weight, bias = _weight_and_bias(layer)
        weight.mul_(scale)
        bias.mul_(scale)
        return output * scale
    return hook


def _weight_and_bias(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    # every DeePSiM layer is a Linear or a (transposed) convolution with a bias
    weight, bias = layer.weight, layer.bias
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise GeneratorError(f"layer {layer!r} has no weight and bias tensors to initialise")
    return weight, bias


def load_state_dict(net: DeePSiMNet, path: Path, convention: str = "auto") -> str:
    """Load weights for `net` from a state-dict file; return the file's SHA-256.

    The keys may follow our caffe names, XDream's port or upconvGAN's
    (ported_weights.py; `convention` forces one).  Every tensor's shape is checked, and
    a mismatch names the layer and both shapes."""
    data = _read(path)
    sha = hashlib.sha256(data).hexdigest()
    state = _torch_load(data, path)
    own = net.state_dict()
    try:
        conv = ported_weights.to_canonical(state, net.layer_name, own, convention)
    except GeneratorError as exc:
        raise GeneratorError(f"{path}: {exc}") from None
    _check_keys(conv, own, path, net.layer_name)
    _check_shapes(conv, own, path)
    net.load_state_dict(conv.state)
    log.info("loaded deepsim-%s weights %s (%s names, sha256 %s)", net.layer_name, path,
             ported_weights.LABELS[conv.convention], sha)
    return sha


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise GeneratorError(f"cannot read generator weights {path}: {exc.strerror}") from None


def _torch_load(data: bytes, path: Path):
    # weights_only: a weights file must never run code on load
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or truncated file
        raise GeneratorError(f"{path} is not a torch state dict (truncated or wrong file?): {exc}") from None


def _check_keys(conv: ported_weights.Converted, own: dict, path: Path, layer: str) -> None:
    missing = sorted(set(own) - set(conv.state))
    unexpected = sorted(conv.origin[k] for k in set(conv.state) - set(own))
    if missing or unexpected:
        raise GeneratorError(f"{path} (read as {ported_weights.LABELS[conv.convention]} names) does not fit "
                             f"deepsim-{layer}: missing keys {missing[:5]}, "
                             f"unexpected keys {unexpected[:5]}")


def _check_shapes(conv: ported_weights.Converted, own: dict, path: Path) -> None:
    for key, tensor in own.items():
        got, want = tuple(conv.state[key].shape), tuple(tensor.shape)
        if got != want:
            origin = conv.origin[key]
            where = f" (file key {origin!r}, {ported_weights.LABELS[conv.convention]} names)" if origin != key else ""
            raise GeneratorError(f"{path}: layer {key} has shape {got}, expected {want}{where}")
