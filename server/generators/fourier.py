"""A weight-free image space: low spatial frequencies in decorrelated colour.

The parameterisation of feature-visualization tools (Olah, Mordvintsev &
Schubert, "Feature Visualization", Distill 2017), after lucid's
`lucid/optvis/param/spatial.py::fft_image` and `lucid/optvis/param/color.py`
(github.com/tensorflow/lucid):

  * the code holds the real and imaginary parts of the Fourier coefficients of
    the lowest spatial frequencies, |f| <= generator.max_cycles cycles per image, one set
    per (decorrelated) colour channel;
  * coefficients are scaled by 1 / max(|f|, 1) (lucid's decay_power = 1), so
    an N(0, 1) code has the 1/f amplitude spectrum of natural images and every
    code unit matters equally to the optimizer;
  * channels are mixed by lucid's square root of the ImageNet colour
    correlation matrix (its columns normalised to a largest norm of 1), and a
    sigmoid maps to 0-255.  Unlike lucid we add logit(colour mean) before the
    sigmoid so a zero code is ImageNet's mean colour, not neutral gray.

Code layout, flat: for each of the 3 channels, [DC, re(f_1..f_k), im(f_1..f_k)]
over the k frequencies of a half plane (fx > 0, or fx = 0 and fy > 0); the
other half is their complex conjugate, which keeps the image real with no
redundant or ignored code units.  With max_cycles = 16 (the default): k = 398,
2391 numbers; with 8, 591.
Images are periodic (they tile), as lucid's are.  They are rendered at the
stimulus size (at least 4 px a cycle of max_cycles), so generator.fit matters only for
smaller stimuli: 'crop' then shows the centre of a 64-px image.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from server.generators.base import ImageGenerator
from xdream.config import GeneratorConfig

log = logging.getLogger(__name__)

MAX_CYCLES = 16          # highest spatial frequency, cycles per image (generator.max_cycles' default)
DECAY_POWER = 1.0        # amplitude ~ 1/f**DECAY_POWER
PIXEL_SD = 2.0           # sd of a pixel in decorrelated space for N(0,1) codes:
                         # image std ~60 on 0-255 (as natural images and
                         # DeePSiM outputs), <0.1% of pixels clipped
RENDER_PX_PER_CYCLE = 4        # render above Nyquist (at least 4 px a cycle), then resize if smaller

# lucid/optvis/param/color.py: color_correlation_svd_sqrt and color_mean
COLOR_CORRELATION_SVD_SQRT = np.array([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]])
COLOR_MEAN = np.array([0.48, 0.46, 0.41])


def half_plane_frequencies(max_cycles: int) -> np.ndarray:
    """(k, 2) integer (fy, fx) with fy**2 + fx**2 <= max_cycles**2, one of each
    conjugate pair (fx > 0, or fx == 0 and fy > 0); DC is not included."""
    r = np.arange(-max_cycles, max_cycles + 1)
    fy, fx = np.meshgrid(r, r, indexing="ij")
    keep = (fy**2 + fx**2 <= max_cycles**2) & ((fx > 0) | ((fx == 0) & (fy > 0)))
    return np.stack([fy[keep], fx[keep]], axis=1)


def frequency_scales(freqs: np.ndarray) -> tuple[float, np.ndarray]:
    """1/f scales for DC and each frequency, normalised so that an N(0,1) code
    gives pixels of sd PIXEL_SD (each half-plane term and its conjugate add
    2*s*(a cos - b sin), of variance 4 s**2)."""
    radius = np.maximum(np.hypot(freqs[:, 0], freqs[:, 1]), 1.0)
    scales = radius ** -DECAY_POWER
    dc = 1.0  # lucid gives DC the scale of the lowest nonzero frequency
    total_sd = math.sqrt(dc**2 + 4.0 * float(np.sum(scales**2)))
    return dc * PIXEL_SD / total_sd, scales * PIXEL_SD / total_sd


def color_matrix() -> np.ndarray:
    """lucid's _linear_decorelate_color: columns scaled to a largest norm of 1."""
    m = COLOR_CORRELATION_SVD_SQRT
    return m / np.max(np.linalg.norm(m, axis=0))


class FourierGenerator(ImageGenerator):
    """Low-frequency Fourier images; no weights, deterministic."""

    name = "fourier"

    def __init__(self, cfg: GeneratorConfig, image_size: int):
        super().__init__(cfg, image_size)
        self.max_cycles = cfg.max_cycles
        self.render_px = max(image_size, RENDER_PX_PER_CYCLE * self.max_cycles)
        freqs = half_plane_frequencies(self.max_cycles)
        self.n_freqs = len(freqs)
        self.code_shape = (3 * (1 + 2 * self.n_freqs),)
        dc_scale, scales = frequency_scales(freqs)
        dev = self.device
        self._dc_scale = dc_scale
        self._scales = torch.tensor(scales, dtype=torch.float32, device=dev)
        # rfft2 layout: rows fy mod N, columns fx in 0..N//2
        self._rows = torch.tensor(freqs[:, 0] % self.render_px, device=dev)
        self._cols = torch.tensor(freqs[:, 1], device=dev)
        on_axis = freqs[:, 1] == 0  # fx = 0: irfft2 needs their conjugates explicitly
        self._axis_idx = torch.tensor(np.flatnonzero(on_axis), device=dev)
        self._axis_rows = torch.tensor(-freqs[on_axis, 0] % self.render_px, device=dev)
        self._color = torch.tensor(color_matrix(), dtype=torch.float32, device=dev)
        logit_mean = np.log(COLOR_MEAN / (1.0 - COLOR_MEAN))
        self._offset = torch.tensor(logit_mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        log.info("fourier image space: |f| <= %d cycles/image, %d code units, rendered at %d px",
                 self.max_cycles, self.code_shape[0], self.render_px)

    def spectrum(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, code) -> (n, 3, N, N//2+1) complex rfft2 spectrum of the image."""
        n, k, size = len(codes), self.n_freqs, self.render_px
        parts = codes.view(n, 3, 1 + 2 * k)
        coef = torch.complex(parts[..., 1:1 + k], parts[..., 1 + k:]) * self._scales
        spec = torch.zeros(n, 3, size, size // 2 + 1, dtype=torch.complex64, device=codes.device)
        spec[..., self._rows, self._cols] = coef
        spec[..., self._axis_rows, 0] = coef[..., self._axis_idx].conj()
        spec[..., 0, 0] = parts[..., 0] * self._dc_scale
        return spec

    def decorrelated(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, code) -> (n, 3, N, N) image in decorrelated colour, before the sigmoid."""
        size = self.render_px
        # norm="forward": the inverse is an unnormalised sum, so pixel values
        # do not depend on the render size
        return torch.fft.irfft2(self.spectrum(codes), s=(size, size), norm="forward")

    def render(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, code) -> (n, 3, N, N) RGB on a 0-255 scale."""
        logits = torch.einsum("rc,nchw->nrhw", self._color, self.decorrelated(codes)) + self._offset
        return torch.sigmoid(logits) * 255.0

    @torch.inference_mode()
    def generate(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.float32).reshape(-1, *self.code_shape)
        return self.fit_and_quantise(self.render(torch.from_numpy(codes).to(self.device)))
