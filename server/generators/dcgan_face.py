"""A pretrained 64x64 DCGAN face generator that works offline.

Weights: the PyPI package `gan-face-generate` 1.1.1 (MIT, Chien Liu,
github.com/chien-liu/DCGAN-PyTorch), trained on DigiFace1M; the file is
`gan_face_generate/weights.tar` inside the package, a torch.save'd dict
{"netG_state_dict": ...}.  Its declared dependencies pull torchvision and an
unpinned torch, so it is installed with

    pip install --no-deps gan-face-generate==1.1.1

and none of its modules is imported here (inference.py imports torchvision);
the architecture below is a copy of its `models.Generator` (the PyTorch DCGAN
tutorial): nz=100, ngf=64, nc=3, layer indices kept so that the state-dict
keys ("main.0.weight", ...) load as they are.

Output: tanh, RGB (torchvision ImageFolder loads PIL RGB) normalised with
mean 0.5, sd 0.5, i.e. [-1, 1]; `generate` maps it to 0-255.
"""

from __future__ import annotations

import hashlib
import io
import logging
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from server.generators.base import ImageGenerator, shape_mismatch
from xdream.config import GeneratorConfig
from xdream.errors import GeneratorError

log = logging.getLogger(__name__)

DISTRIBUTION = "gan-face-generate"
VERSION = "1.1.1"
PIP_INSTALL = f"pip install --no-deps {DISTRIBUTION}=={VERSION}"
WEIGHTS_IN_PACKAGE = "gan_face_generate/weights.tar"


class DCGANFaceNet(nn.Module):
    """gan_face_generate.models.Generator(ngpu, nc=3, nz=100, ngf=64)."""

    code_shape = (100,)

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3):
        super().__init__()
        widths = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
            # the first layer maps the 1x1 code to 4x4; the rest double the size
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride, pad, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.nz = nz

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.main(code.view(-1, self.nz, 1, 1))


def packaged_weights() -> Path:
    """The weights file inside the installed package, found from its metadata
    (no import of the package's modules)."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise GeneratorError(f"generator 'dcgan-face' needs the package {DISTRIBUTION} for its "
                             f"weights: {PIP_INSTALL}  (or set generator.weights to the file)") from None
    if dist.version != VERSION:
        log.warning("%s %s is installed; weights were checked with %s", DISTRIBUTION, dist.version, VERSION)
    path = Path(str(dist.locate_file(WEIGHTS_IN_PACKAGE)))   # a SimplePath to the type checker
    if not path.is_file():
        raise GeneratorError(f"{DISTRIBUTION} {dist.version} is installed but has no {WEIGHTS_IN_PACKAGE} "
                             f"(looked at {path}); reinstall with {PIP_INSTALL}")
    return path


def read_state_dict(path: Path) -> tuple[dict, str]:
    """(state dict, SHA-256 of the file).  Accepts the package's checkpoint
    ({"netG_state_dict": ...}) or a bare state dict, with or without the
    "module." prefix of nn.DataParallel."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GeneratorError(f"cannot read generator weights {path}: {exc.strerror}") from None
    sha = hashlib.sha256(data).hexdigest()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or truncated file
        raise GeneratorError(f"{path} is not a torch checkpoint (truncated or wrong file? "
                             f"{PIP_INSTALL} restores the packaged one): {exc}") from None
    if isinstance(state, dict) and "netG_state_dict" in state:
        state = state["netG_state_dict"]
    if not isinstance(state, dict):
        raise GeneratorError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}, sha


def check_and_load(net: nn.Module, state: dict, path: Path) -> None:
    """Load `state` into `net`; a missing key, extra key or wrong shape is a
    GeneratorError that names it."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise GeneratorError(f"{path} is not a DCGAN face generator: missing keys {missing[:5]}, "
                             f"unexpected keys {unexpected[:5]}")
    bad = shape_mismatch(own, state)
    if bad:
        raise GeneratorError(f"{path}: layer {bad[0]} has shape {bad[1]}, expected {bad[2]}")
    net.load_state_dict(state)


class DCGANFaceGenerator(ImageGenerator):
    """100-d N(0,1) codes -> 64x64 faces, resized (or cropped) to the stimulus size."""

    name = "dcgan-face"
    code_shape = DCGANFaceNet.code_shape

    def __init__(self, cfg: GeneratorConfig, image_size: int):
        super().__init__(cfg, image_size)
        path = Path(cfg.weights) if cfg.weights else packaged_weights()
        self.net = DCGANFaceNet()
        state, self.weights_sha256 = read_state_dict(path)
        check_and_load(self.net, state, path)
        # eval: batch norm uses its running statistics, so an image depends
        # on its own code only, not on the rest of the batch
        self.net.eval().to(self.device)
        log.info("loaded dcgan-face weights %s (sha256 %s)", path, self.weights_sha256)

    @torch.inference_mode()
    def generate(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.float32).reshape(-1, *self.code_shape)
        rgb = self.net(torch.from_numpy(codes).to(self.device))
        return self.fit_and_quantise((rgb + 1.0) * 127.5)
