"""Image spaces behind one interface (see base.py); `build_generator` picks one
by the config's generator.kind.

Nothing here imports torch at import time: `xdream weights` (weights.py) runs
where torch is not installed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xdream.errors import ConfigError

if TYPE_CHECKING:
    from server.generators.base import ImageGenerator
    from xdream.config import GeneratorConfig


def build_generator(cfg: GeneratorConfig, image_size: int) -> ImageGenerator:
    kind = cfg.kind
    if kind.startswith("deepsim-"):
        from server.generators.deepsim import DeepSimGenerator
        return DeepSimGenerator(cfg, image_size)
    if kind == "fourier":
        from server.generators.fourier import FourierGenerator
        return FourierGenerator(cfg, image_size)
    if kind == "dcgan-face":
        from server.generators.dcgan_face import DCGANFaceGenerator
        return DCGANFaceGenerator(cfg, image_size)
    raise ConfigError(f"unknown generator kind {kind!r}; known: deepsim-<layer>, fourier, dcgan-face")
