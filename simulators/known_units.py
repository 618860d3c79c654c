"""Model neurons whose best image is known: ground truth for the search.

Each unit maps a receptive-field view (n, H, W, 3) uint8 to a raw drive, and
knows the largest raw drive any uint8 image of that size can give (computed
exactly, or bounded tightly: each class says how), with an image that gives
it.  Its firing rate above baseline is

    rate = peak_hz * min(1, max(0, raw) / (saturation * raw_optimum))

so the optimum rate is exactly peak_hz (reached by the optimum image), and
`fraction(views)` (noise-free rate / optimum rate) is what a search reached.
Spikes are Poisson at that rate, drawn by the rig as for the ConvNet units.

Pixels are read as x = value / 255 in [0, 1]; luminance is the mean of R, G
and B, centred: L = x_mean - 0.5 in [-0.5, 0.5].  Both ends are reachable by
uint8 pixels (0 and 255), so the optima below hold for the quantised images
the presenter shows.

- colour: a Gaussian-weighted mean of each pixel's projection on the chromatic
  part u = c - mean(c) of the preferred hue c (HSV hue, full saturation and
  value).  Linear in the pixels, each pixel's term is largest at x_i = 1 where
  u_i > 0 and 0 elsewhere: the optimum is a uniform field of that cube corner,
  raw optimum sum(w) * sum(max(u_i, 0)), exact.
- gabor-energy: a V1 complex cell (Adelson & Bergen 1985): E = (a.L)^2 + (b.L)^2
  with a, b a zero-mean quadrature pair of Gabors.  sqrt(E) = max over phase phi
  of (cos phi a + sin phi b).L, and over L in [-0.5, 0.5]^n that is
  f(phi) = 0.5 |cos phi a + sin phi b|_1, reached by L = 0.5 sign(...): a
  binarised grating.  f is maximised on a grid of phases; f is F-Lipschitz
  (F its maximum: its derivative is bounded by f(phi + 90 deg)), so the true
  maximum is at most f_grid / (1 - dphi / 2) (0.04 % above on 3,600 phases; the
  energy, its square, 0.09 %).
  The stated optimum is the energy of the binarised image (attained); the upper
  bound is kept beside it.  A full-contrast sinusoidal Gabor reaches about
  (pi/4)^2 = 0.62 of it: set saturation <= 0.6 for a unit that smooth gratings
  saturate.
- blob: a centre-surround (difference of Gaussians) unit on luminance, on- or
  off-centre.  Linear: the optimum is L = 0.5 sign(w), a bright (dark) disc
  where the centre outweighs the surround, on a dark (bright) ground, raw
  optimum 0.5 |w|_1, exact.  Its response grows with contrast and peaks at
  one disc size.
- convnet-capped: a seeded AlexNet channel (simulators/alexnet.py, pre-ReLU, as
  the ConvNet units) through a known nonlinearity: rectified and capped at the
  activation a_wb that gradient ascent on the pixels reaches (the white-box
  reference, as benchmarks/optimizers.py ascends codes; here the image itself,
  through a sigmoid, then rounded to uint8 and re-scored).  The channel's own
  supremum is at least a_wb and not known; the unit's optimum is exactly its
  cap, reached by the white-box image, and an image that drives the channel
  past a_wb saturates it.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

PHASES = 3600   # the gabor-energy unit's phase grid over [0, 180) degrees


@dataclass(frozen=True)
class Optimum:
    """A unit's best over all uint8 images of one size."""
    raw: float            # the raw drive the image reaches
    raw_bound: float      # an upper bound on any image's raw drive (== raw where exact)
    image: np.ndarray     # (size, size, 3) uint8 RGB that reaches `raw`
    rate_hz: float        # the rate above baseline it gives: the unit's peak_hz


def _grid(h: int, w: int, centre) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates relative to the RF centre, in fractions of the view's side."""
    side = float(max(h, w))
    ys = (np.arange(h) + 0.5) / side - centre[1] * h / side
    xs = (np.arange(w) + 0.5) / side - centre[0] * w / side
    return np.meshgrid(xs, ys)


def luminance(views: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, H, W) float64 in [-0.5, 0.5]."""
    return views.astype(np.float64).mean(axis=3) / 255.0 - 0.5


class KnownUnit:
    """The shared part: raw drive -> fraction of the optimum -> rate."""
    kind = ""

    def __init__(self, ucfg):
        self.cfg = ucfg
        self._optima: dict[tuple[int, int], Optimum] = {}

    def raw(self, views: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _optimum(self, h: int, w: int) -> tuple[float, float, np.ndarray]:
        raise NotImplementedError

    def optimum(self, size: int | tuple[int, int]) -> Optimum:
        h, w = (size, size) if isinstance(size, int) else size
        if (h, w) not in self._optima:
            raw, bound, image = self._optimum(h, w)
            if not raw > 0:
                raise ValueError(f"{self.kind} unit: its optimum raw drive is {raw}, not > 0")
            self._optima[(h, w)] = Optimum(float(raw), float(bound), image, float(self.cfg.peak_hz))
        return self._optima[(h, w)]

    def fraction(self, views: np.ndarray) -> np.ndarray:
        """(n,) noise-free rate / optimum rate, in [0, 1]."""
        views = np.asarray(views)
        if views.ndim == 3:
            views = views[None]
        opt = self.optimum(views.shape[1:3])
        return np.clip(self.raw(views) / (self.cfg.saturation * opt.raw), 0.0, 1.0)

    def rates(self, views: np.ndarray) -> np.ndarray:
        """(n,) rate above baseline (Hz)."""
        return self.cfg.peak_hz * self.fraction(views)


class ColourUnit(KnownUnit):
    kind = "colour"

    def __init__(self, ucfg):
        super().__init__(ucfg)
        c = np.array(colorsys.hsv_to_rgb(ucfg.hue_deg / 360.0, 1.0, 1.0))
        self.u = c - c.mean()          # chromatic direction: a grey of any level gives 0
        self._weights: dict[tuple[int, int], np.ndarray] = {}

    def weights(self, h: int, w: int) -> np.ndarray:
        if (h, w) not in self._weights:
            x, y = _grid(h, w, self.cfg.centre)
            self._weights[(h, w)] = np.exp(-(x ** 2 + y ** 2) / (2 * self.cfg.size ** 2))
        return self._weights[(h, w)]

    def raw(self, views):
        wts = self.weights(*views.shape[1:3])
        proj = views.astype(np.float64) @ (self.u / 255.0)      # (n, H, W)
        return np.einsum("nhw,hw->n", proj, wts) / wts.sum()

    def _optimum(self, h, w):
        colour = np.where(self.u > 0, 255, 0).astype(np.uint8)
        image = np.broadcast_to(colour, (h, w, 3)).copy()
        value = float(np.maximum(self.u, 0).sum())
        return float(self.raw(image[None])[0]), value, image


class GaborEnergyUnit(KnownUnit):
    kind = "gabor-energy"

    def __init__(self, ucfg):
        super().__init__(ucfg)
        self._pairs: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def pair(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """The quadrature pair (even, odd), each zero-mean (a uniform field gives 0)."""
        if (h, w) not in self._pairs:
            c = self.cfg
            x, y = _grid(h, w, c.centre)
            th = math.radians(c.orientation_deg)
            along = x * math.cos(th) + y * math.sin(th)    # 0 deg: the carrier runs along x (vertical bars)
            env = np.exp(-(x ** 2 + y ** 2) / (2 * c.size ** 2))
            pair = []
            for carrier in (np.cos, np.sin):
                g = env * carrier(2 * math.pi * c.cycles * along)
                g -= env * (g.sum() / env.sum())
                pair.append(g / np.abs(g).sum())
            self._pairs[(h, w)] = (pair[0], pair[1])
        return self._pairs[(h, w)]

    def raw(self, views):
        a, b = self.pair(*views.shape[1:3])
        lum = luminance(views)
        return np.einsum("nhw,hw->n", lum, a) ** 2 + np.einsum("nhw,hw->n", lum, b) ** 2

    def _optimum(self, h, w):
        a, b = self.pair(h, w)
        phis = np.arange(PHASES) * (math.pi / PHASES)
        af, bf = a.ravel(), b.ravel()
        f = np.array([0.5 * np.abs(math.cos(p) * af + math.sin(p) * bf).sum() for p in phis])
        best = float(phis[int(np.argmax(f))])
        bound = (f.max() / (1 - (math.pi / PHASES) / 2)) ** 2
        lum = np.sign(math.cos(best) * a + math.sin(best) * b)
        image = np.repeat(np.where(lum > 0, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
        return float(self.raw(image[None])[0]), float(bound), image


class BlobUnit(KnownUnit):
    kind = "blob"

    def __init__(self, ucfg):
        super().__init__(ucfg)
        self._weights: dict[tuple[int, int], np.ndarray] = {}

    def weights(self, h: int, w: int) -> np.ndarray:
        """Difference of normalised Gaussians (centre minus surround), signed by polarity."""
        if (h, w) not in self._weights:
            c = self.cfg
            x, y = _grid(h, w, c.centre)
            r2 = x ** 2 + y ** 2
            sc, ss = c.size, c.size * c.surround_ratio
            dog = np.exp(-r2 / (2 * sc ** 2)) / sc ** 2 - np.exp(-r2 / (2 * ss ** 2)) / ss ** 2
            dog = dog if c.polarity == "on" else -dog
            self._weights[(h, w)] = dog / np.abs(dog).sum()
        return self._weights[(h, w)]

    def raw(self, views):
        return np.einsum("nhw,hw->n", luminance(views), self.weights(*views.shape[1:3]))

    def _optimum(self, h, w):
        wts = self.weights(h, w)
        lum = np.where(wts > 0, 255, 0).astype(np.uint8)
        image = np.repeat(lum[..., None], 3, axis=2)
        return float(self.raw(image[None])[0]), 0.5 * float(np.abs(wts).sum()), image

    def disc_radius(self) -> float:
        """Where the on-centre weights cross zero (fraction of the side): the optimal disc's radius."""
        sc, k = self.cfg.size, self.cfg.surround_ratio
        return sc * math.sqrt(2 * math.log(k ** 2) * k ** 2 / (k ** 2 - 1))


class CappedConvNetUnit(KnownUnit):
    """A seeded AlexNet channel, rectified and capped at its white-box activation."""
    kind = "convnet-capped"

    def __init__(self, ucfg, net, device, seed: int):
        super().__init__(ucfg)
        self.net, self.device, self.seed = net, device, seed

    def _activation(self, x):
        from simulators.alexnet import preprocess
        out = self.net(preprocess(x), until=self.cfg.layer)
        if out.ndim == 4:
            pos = self.cfg.position
            row, col = pos if pos else (out.shape[2] // 2, out.shape[3] // 2)
            return out[:, self.cfg.channel, row, col]
        return out[:, self.cfg.channel]

    def raw(self, views):
        import torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(views)).to(self.device)
            # one view per pass: a batch's size may pick another float kernel (simulators/rig.py)
            return np.concatenate([self._activation(v[None]).double().cpu().numpy() for v in x])

    def _optimum(self, h, w):
        """Adam on pixel logits (image = 255 sigmoid(p)), from a seeded grey-ish start; the
        best image met (by activation) is rounded to uint8 and re-scored on the path above."""
        import torch
        gen = torch.Generator().manual_seed(self.seed)
        p = (0.1 * torch.randn(1, h, w, 3, generator=gen)).to(self.device).requires_grad_(True)
        opt = torch.optim.Adam([p], lr=0.1)
        best, best_p = -math.inf, p.detach().clone()
        for _ in range(self.cfg.whitebox_steps):
            a = self._activation(255.0 * torch.sigmoid(p))
            if float(a.detach()) > best:
                best, best_p = float(a.detach()), p.detach().clone()
            opt.zero_grad(set_to_none=True)
            (-a.sum()).backward()
            opt.step()
        image = (255.0 * torch.sigmoid(best_p)).round().to(torch.uint8)[0].cpu().numpy()
        raw = float(self.raw(image[None])[0])
        # the channel's supremum is unknown (>= raw): the unit's optimum is its cap, exactly
        return raw, raw, image


def make_known_unit(ucfg, *, net=None, device="cpu", seed: int = 0) -> KnownUnit:
    if ucfg.kind == "colour":
        return ColourUnit(ucfg)
    if ucfg.kind == "gabor-energy":
        return GaborEnergyUnit(ucfg)
    if ucfg.kind == "blob":
        return BlobUnit(ucfg)
    if ucfg.kind == "convnet-capped":
        return CappedConvNetUnit(ucfg, net, device, seed)
    raise ValueError(f"no known-optimum unit of kind {ucfg.kind!r}")
