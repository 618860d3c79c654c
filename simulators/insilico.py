"""In-silico neurons for the optimizer benchmark: codes -> DeePSiM fc6 -> AlexNet unit.

One `Pipeline` holds the generator and the network on one device and turns a
batch of codes into the activation of one unit, all in torch:

    code (4096) -> DeePSiM-fc6-shaped generator -> BGR, mean-subtracted, 256 px
      -> + mean, BGR -> RGB, clamp 0-255, rounded as uint8 would be
      -> simulators.alexnet.preprocess (resize to 224, ImageNet normalisation)
      -> AlexNet up to the unit's layer -> (channel, centre position)
      -> ReLU for conv1..fc7 (the Ponce lab hooked the ReLU outputs,
         .features.ReLU4 ... .classifier.ReLU5), fc8 raw (classifier.Linear6)

The generator may instead be the dcgan-face space (`generator_kind`, 100-d
codes, 64 px images, resized to 224 as above): `xdream bench study` measures the
optimizers in the embedded default config's image space.

`Pipeline.score` is the black-box path (inference mode, the accelerated
generator of server.generators.fast where it exists); `Pipeline.whitebox` is
the white-box reference (Adam on the code through the same generator and
network, the code projected onto a ball).  Both see the same image, rounding
included (a straight-through estimator gives the rounding a unit gradient).

Weights: the generator from a state dict (deepsim.load_state_dict: caffe,
XDream or upconvGAN names) or seeded random (deepsim.random_init); AlexNet
from a torchvision-style state dict (features.N / classifier.N, mapped onto
conv1..fc8 by `map_alexnet_state`) or seeded random.

Seeded random AlexNet: `seeded_alexnet(seed)` with torch's default init
shrinks the image-driven part of every layer by ~2.5x while the biases stay,
so that from conv4 on a unit's response is almost all bias (fc8: std over
images ~1e-4 of a mean ~1e-2): every image scores alike and there is nothing
to optimise.  Rescaling the layers alone (LSUV on noise images) still leaves
most deep units either silent for every generator image or on with a large
constant offset.  The benchmark therefore standardises each channel, layer
after layer (a batch norm folded into the weights, `condition_alexnet`), on 32
seeded images of the generator under test: every unit then has mean 0 and
std 1 over random-code images, answers about half of them, and what an
optimizer gains is image structure, not an offset.  With trained weights
(--alexnet-weights) nothing is changed.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from server.generators.base import pick_device, shape_mismatch
from server.generators.dcgan_face import DCGANFaceNet, check_and_load, packaged_weights, read_state_dict
from server.generators.deepsim import BGR_MEAN, DeePSiMFc6, load_state_dict, random_init
from simulators.alexnet import LAYERS, AlexNet, preprocess, seeded_alexnet
from xdream.errors import ConfigError, GeneratorError

log = logging.getLogger(__name__)

INPUT_SIZE = 224
# feature-map side of each conv layer at 224 px (the unit sits at its centre)
CONV_SIZES = {"conv1": 55, "conv2": 27, "conv3": 13, "conv4": 13, "conv5": 13}
LINEAR_OUTPUT = ("fc8",)   # units read before any ReLU; the others after it
PIPELINE_VERSION = 1       # bump when what a code scores changes (stored benchmark results go stale)
N_PROBE = 64               # generator images that standardise a seeded AlexNet
PROBE_STREAM = 0xA1E       # numpy seed-sequence key of those images' codes

# torchvision's AlexNet (features / avgpool / classifier) onto our layer names
TORCHVISION_ALEXNET = {
    "features.0": "conv1", "features.3": "conv2", "features.6": "conv3",
    "features.8": "conv4", "features.10": "conv5",
    "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8",
}


# --------------------------------------------------------------------------- units

@dataclass(frozen=True)
class Unit:
    """One simulated neuron: a channel of a layer, at the centre of a conv map."""
    layer: str
    channel: int
    position: tuple[int, int] | None = None

    @classmethod
    def centre(cls, layer: str, channel: int) -> "Unit":
        if layer not in LAYERS:
            raise ConfigError(f"unknown AlexNet layer {layer!r}; layers: {', '.join(LAYERS)}")
        side = CONV_SIZES.get(layer)
        return cls(layer, int(channel), (side // 2, side // 2) if side else None)

    @classmethod
    def from_dict(cls, d: dict) -> "Unit":
        pos = d.get("position")
        return cls(str(d["layer"]), int(d["channel"]), tuple(int(p) for p in pos) if pos else None)

    def to_dict(self) -> dict:
        return {"layer": self.layer, "channel": self.channel,
                "position": list(self.position) if self.position else None}

    @property
    def id(self) -> str:
        pos = f"@{self.position[0]},{self.position[1]}" if self.position else ""
        return f"{self.layer}:c{self.channel}{pos}"

    @property
    def post_relu(self) -> bool:
        return self.layer not in LINEAR_OUTPUT

    def select(self, out: torch.Tensor) -> torch.Tensor:
        """The unit's column of a layer output: (n, C, H, W) or (n, C) -> (n,)."""
        if out.ndim == 4:
            row, col = self.position if self.position else (out.shape[2] // 2, out.shape[3] // 2)
            return out[:, self.channel, row, col]
        return out[:, self.channel]


# --------------------------------------------------------------------------- weights

def map_alexnet_state(state: dict) -> dict:
    """A torchvision-style AlexNet state dict (or one in our names) -> our names.

    Accepts `features.N.weight`, `classifier.N.bias`, ..., with an optional
    `module.` (DataParallel) or `model.` prefix, or a dict holding the state
    under 'state_dict' / 'model'.  Raises GeneratorError naming what is wrong."""
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    out, unknown = {}, []
    for key, value in state.items():
        k = key
        for prefix in ("module.", "model."):
            k = k.removeprefix(prefix)
        base, _, param = k.rpartition(".")
        if base in TORCHVISION_ALEXNET:
            out[f"{TORCHVISION_ALEXNET[base]}.{param}"] = value
        elif base in LAYERS:
            out[k] = value
        else:
            unknown.append(key)
    own = AlexNet().state_dict()
    missing = sorted(set(own) - set(out))
    if missing or unknown:
        raise GeneratorError(f"AlexNet weights do not fit: missing {missing[:5]}, unexpected keys {unknown[:5]} "
                             f"(expected torchvision names features.0/3/6/8/10 and classifier.1/4/6)")
    bad = shape_mismatch(own, out)
    if bad:
        raise GeneratorError(f"AlexNet weights: {bad[0]} has shape {bad[1]}, expected {bad[2]}")
    return out


def load_alexnet(path: str | Path) -> tuple[AlexNet, str]:
    """AlexNet with weights from a torchvision-style state-dict file; and the file's SHA-256."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GeneratorError(f"cannot read AlexNet weights {path}: {exc.strerror}") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise GeneratorError(f"{path} is not a torch state dict: {exc}") from None
    if not isinstance(state, dict):
        raise GeneratorError(f"{path} holds a {type(state).__name__}, not a state dict")
    try:
        mapped = map_alexnet_state(state)
    except GeneratorError as exc:
        raise GeneratorError(f"{path}: {exc}") from None
    net = AlexNet()
    net.load_state_dict(mapped)
    return net.eval(), hashlib.sha256(data).hexdigest()


@torch.no_grad()
def condition_alexnet(net: AlexNet, probe: torch.Tensor) -> AlexNet:
    """Fold a per-channel standardisation into every layer's weight and bias, layer
    after layer: over the probe images (n, 3, 224, 224, network input) each
    channel's pre-activation gets mean 0 and standard deviation 1 (over images
    and positions), as a batch norm folded into the layer would give."""
    layers = [getattr(net, name) for name in LAYERS]

    def hook(layer, inputs, output):
        dims = [d for d in range(output.ndim) if d != 1]
        mean, std = output.mean(dim=dims), output.std(dim=dims).clamp_min(1e-6)
        shape = (-1,) + (1,) * (layer.weight.ndim - 1)
        layer.weight.div_(std.view(shape))
        layer.bias.sub_(mean).div_(std)
        view = (1, -1) + (1,) * (output.ndim - 2)
        return (output - mean.view(view)) / std.view(view)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        net(probe, until="fc8")
    finally:
        for h in handles:
            h.remove()
    return net


def build_alexnet(weights: str | None, seed: int) -> tuple[AlexNet, str]:
    """(network, provenance): from a file (provenance = its SHA-256), else seeded
    (to be conditioned by the Pipeline on its generator's images)."""
    if weights:
        return load_alexnet(weights)
    return seeded_alexnet(seed), f"seeded:{seed}"


class DCGANFaceBGR(torch.nn.Module):
    """The dcgan-face space as the pipeline takes a generator: code (100) -> 64 px
    BGR, mean-subtracted (DeePSiM's output convention), the same image as
    server.generators.dcgan_face makes at its native size."""

    code_shape = DCGANFaceNet.code_shape

    def __init__(self, net: DCGANFaceNet):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        rgb = (self.net(code) + 1.0) * 127.5
        return rgb.flip(1) - self.mean


GENERATOR_KINDS = ("deepsim-fc6", "dcgan-face")


def build_generator(weights: str | None, seed: int, kind: str = "deepsim-fc6") -> tuple[torch.nn.Module, str]:
    """(generator, provenance).  deepsim-fc6: a state dict or seeded random weights;
    dcgan-face: a weights file or the one its PyPI package ships (trained weights only)."""
    if kind == "deepsim-fc6":
        net = DeePSiMFc6()
        if weights:
            prov = load_state_dict(net, Path(weights))
        else:
            random_init(net, seed)
            prov = f"seeded:{seed}"
    elif kind == "dcgan-face":
        path = Path(weights) if weights else packaged_weights()
        face = DCGANFaceNet()
        state, sha = read_state_dict(path)
        check_and_load(face, state, path)
        net, prov = DCGANFaceBGR(face), f"dcgan-face:{sha}"
    else:
        raise ConfigError(f"in-silico generator {kind!r}: known {', '.join(GENERATOR_KINDS)}")
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), prov


# --------------------------------------------------------------------------- the pipeline

def project_to_ball(codes: torch.Tensor, radius: float) -> torch.Tensor:
    """Each row scaled down onto the ball of `radius` if it lies outside."""
    norms = codes.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return codes * (radius / norms).clamp(max=1.0)


class Pipeline:
    """Generator + AlexNet on one device; clean unit activations for batches of codes."""

    def __init__(self, generator_weights: str | None = None, generator_seed: int = 0,
                 alexnet_weights: str | None = None, alexnet_seed: int = 0, device: str = "auto",
                 fast: bool = True, generator_kind: str = "deepsim-fc6"):
        self.device = pick_device(device)
        gen, self.generator_provenance = build_generator(generator_weights, generator_seed, generator_kind)
        self.code_shape = tuple(gen.code_shape)
        net, self.alexnet_provenance = build_alexnet(alexnet_weights, alexnet_seed)
        self.generator = gen.to(self.device)          # eager: the white-box path (autograd)
        self.alexnet = net.to(self.device)
        self._mean = torch.tensor(BGR_MEAN, device=self.device).view(1, 3, 1, 1)
        if not alexnet_weights:
            self.alexnet_provenance += "+standardised"
            with torch.no_grad():
                # numpy's stream, not torch's: torch.Generator().manual_seed(s) would replay
                # the generator's own random_init draws (its weights) as "random" codes
                probe = np.random.default_rng([alexnet_seed, PROBE_STREAM]).standard_normal((N_PROBE, *self.code_shape))
                probe = torch.as_tensor(probe, dtype=torch.float32, device=self.device)
                condition_alexnet(self.alexnet, self._network_input(self.generator(probe)))
        for p in self.alexnet.parameters():
            p.requires_grad_(False)
        self.fast_generator = self.generator
        self.accelerated = False
        if fast and generator_kind == "deepsim-fc6":    # the accelerated path is DeePSiM's
            try:
                from server.generators.fast import accelerate
            except ImportError:
                accelerate = None
            if accelerate is not None:
                self.fast_generator = accelerate(self.generator, "fp32")
                self.accelerated = True
        log.info("in-silico pipeline on %s: generator %s, AlexNet %s, accelerated generator: %s", self.device,
                 self.generator_provenance, self.alexnet_provenance, self.accelerated)

    # the image a code makes, as the network sees it
    def _network_input(self, bgr: torch.Tensor) -> torch.Tensor:
        rgb = (bgr + self._mean).flip(1).clamp(0.0, 255.0)
        rgb = rgb + (rgb.round() - rgb).detach()   # uint8 rounding; identity gradient
        return preprocess(rgb.permute(0, 2, 3, 1))

    def _pre_activation(self, bgr: torch.Tensor, unit: Unit) -> torch.Tensor:
        return unit.select(self.alexnet(self._network_input(bgr), until=unit.layer))

    def _response(self, pre: torch.Tensor, unit: Unit) -> torch.Tensor:
        return torch.relu(pre) if unit.post_relu else pre

    @torch.inference_mode()
    def score(self, codes: np.ndarray, unit: Unit) -> np.ndarray:
        """Clean activations (n,) of `unit` for codes (n, code size): the black-box path."""
        z = torch.as_tensor(np.asarray(codes, dtype=np.float32).reshape(-1, *self.code_shape), device=self.device)
        bgr = self.fast_generator(z)
        return self._response(self._pre_activation(bgr, unit), unit).double().cpu().numpy()

    def images(self, codes: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 RGB (S: 256 for deepsim-fc6, 64 for dcgan-face)."""
        with torch.inference_mode():
            z = torch.as_tensor(np.asarray(codes, dtype=np.float32).reshape(-1, *self.code_shape), device=self.device)
            rgb = (self.fast_generator(z) + self._mean).flip(1).clamp(0, 255).round().to(torch.uint8)
            return rgb.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def whitebox(self, unit: Unit, *, bound: float, restarts: int = 2, steps: int = 200, lr: float = 1.0,
                 seed: int = 0, init_sd: float = 1.0) -> dict:
        """Gradient ascent on the code (Adam, `restarts` codes in one batch, the
        learning rate cosine-decayed to lr/10), every code projected onto the
        ball of radius `bound` after each step.  It ascends the pre-activation
        (ReLU units have a gradient even where they are silent); each restart's
        best code (by pre-activation, tracked over all steps) is re-scored on
        the black-box path, and the best of those is the result."""
        gen = torch.Generator().manual_seed(int(seed))
        z0 = torch.randn(restarts, *self.code_shape, generator=gen) * init_sd
        z = project_to_ball(z0.to(self.device), bound).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr / 10)
        best = torch.full((restarts,), -float("inf"), device=self.device)
        best_codes = z.detach().clone()
        trace = []
        for _ in range(steps + 1):   # the last pass only scores the final codes
            pre = self._pre_activation(self.generator(z), unit)
            with torch.no_grad():
                better = pre.detach() > best
                best = torch.where(better, pre.detach(), best)
                best_codes[better] = z.detach()[better]
                trace.append(float(pre.detach().max()))
            if len(trace) > steps:
                break
            opt.zero_grad(set_to_none=True)
            (-pre.sum()).backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                z.copy_(project_to_ball(z, bound))
        clean = self.score(best_codes.detach().cpu().numpy(), unit)
        i = int(np.argmax(clean))
        return {"best": float(clean[i]), "per_restart": clean.tolist(),
                "best_code_norm": float(best_codes[i].norm()),
                "pre_activation_trace": trace}
