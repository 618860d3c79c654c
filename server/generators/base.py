"""What every image space offers the server: codes in, RGB uint8 images out.

    code_shape            the shape of one latent code
    initial_codes(n, rng) the first generation's codes
    generate(codes)       (n, *code_shape) -> (n, size, size, 3) uint8 RGB

Networks run on CUDA when present; images stay on the device until the
final uint8 copy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from xdream.config import GeneratorConfig
from xdream.errors import ConfigError, GeneratorError

FITS = ("resize", "crop")


def pick_device(name: str | torch.device) -> torch.device:
    """'auto': CUDA when torch sees a device, else the CPU; 'cuda' without one is an error,
    not a silent fall-back.  The one device rule of generators, simulators and benchmarks."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GeneratorError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(name)


def shape_mismatch(own: dict, state: dict) -> tuple[str, tuple, tuple] | None:
    """The first parameter of `own` whose tensor in `state` has another shape:
    (key, shape in state, expected shape); None if all fit.  Keys are checked apart."""
    for key, tensor in own.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            return key, tuple(state[key].shape), tuple(tensor.shape)
    return None


class ImageGenerator:
    name = "generator"
    code_shape: tuple[int, ...] = ()

    def __init__(self, cfg: GeneratorConfig, image_size: int):
        if cfg.fit not in FITS:
            raise ConfigError(f"generator.fit must be one of {FITS}, got {cfg.fit!r}")
        self.cfg = cfg
        self.image_size = image_size
        self.device = pick_device(cfg.device)
        self.weights_sha256 = ""
        self.precision = "fp32"

    def initial_codes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """N(0, init_sd), or per-unit statistics from generator.init_stats (an .npz
        with arrays 'mean' and 'std' of the code's shape); clipped at 0 if asked
        (the DeePSiM generators were trained on post-ReLU features)."""
        cfg = self.cfg
        if cfg.init_stats:
            try:
                stats = np.load(cfg.init_stats)
                mean, std = stats["mean"], stats["std"]
            except (OSError, KeyError, ValueError) as exc:
                raise ConfigError(f"generator.init_stats {cfg.init_stats!r}: {exc}") from None
            if mean.shape != self.code_shape or std.shape != self.code_shape:
                raise ConfigError(f"generator.init_stats holds shapes {mean.shape}/{std.shape}; "
                                  f"codes of {self.name} have shape {self.code_shape}")
            codes = mean + std * rng.standard_normal((n, *self.code_shape))
        else:
            codes = rng.normal(0.0, cfg.init_sd, size=(n, *self.code_shape))
        return np.maximum(codes, 0.0) if cfg.init_clip else codes

    def generate(self, codes: np.ndarray) -> np.ndarray:
        """(n, *code_shape) codes (any float dtype) -> (n, image_size, image_size, 3) uint8 RGB."""
        raise NotImplementedError

    def fit_and_quantise(self, rgb: torch.Tensor) -> np.ndarray:
        """(n, 3, H, W) RGB on a 0-255 scale -> (n, size, size, 3) uint8 on the host.

        'resize' scales the whole image (antialiased); 'crop' takes the centre
        square of the stimulus size (scaling up only if the image is smaller)."""
        size = self.image_size
        if self.cfg.fit == "crop" and min(rgb.shape[-2:]) >= size:
            top, left = (rgb.shape[-2] - size) // 2, (rgb.shape[-1] - size) // 2
            rgb = rgb[..., top:top + size, left:left + size]
        elif tuple(rgb.shape[-2:]) != (size, size):
            rgb = nn.functional.interpolate(rgb.float(), size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)
        rgb = rgb.clamp(0, 255).round().to(torch.uint8)
        return rgb.permute(0, 2, 3, 1).contiguous().cpu().numpy()
