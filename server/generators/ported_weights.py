"""State dicts of the public DeePSiM ports, renamed to our canonical keys.

Canonical ("ours"): the caffe layer names of the published prototxts
(defc7, Rconv6, deconv5, conv5_1, ..., deconv0 / conv1_1), every layer with a
weight and a bias.  Two public PyTorch ports name things differently:

xdream     willwx/XDream, xdream/torch_nets/deepsim.py: fc7/fc6/fc5 for
           defc7/defc6/defc5, conv6-conv8 for Rconv6-Rconv8, tconvN_0 / tconvN_1
           / tconvN for the up-convolutions.  Every layer after the first three
           is built with bias=False, so the file holds no bias for it; we fill
           zeros.  That is exact: in the prototxts (XDream's prototxt/<layer>/
           generator_no_batch.prototxt and the unmodified originals) every
           Deconvolution, and every Convolution after Rconv8, has a second
           `param { lr_mult: 0 }` (the bias) with a constant filler, caffe's
           default value 0, so training never moved those biases off 0.
upconvgan  the Ponce lab's upconvGAN (Binxu Wang, GAN_utils.py; read in
           Animadversio/Neuro-ActMax-GAN-comparison core/utils/GAN_utils.py,
           which has all eight layers, and the older fc6/fc7/fc8/pool5 copies in
           Animadversio/GAN-Geometry core/GAN_utils.py and
           Animadversio/Visual_Neuro_InSilico_Exp GAN_utils.py): caffe names
           inside an nn.Sequential `G`, deconvolutions with biases, tanh and
           scaling as parameter-free modules.  Its published files
           (upconvGAN_<layer>.pt) load into `G`, so their keys are already
           canonical; the whole module's state_dict() adds a "G." prefix; its
           older local files
           (generator_state_dict.pt) carry a ".1." infix ("defc7.1.weight") that
           GAN_utils strips with name.replace(".1.", ".").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import torch

from xdream.errors import GeneratorError

CONVENTIONS = ("auto", "ours", "xdream", "upconvgan")
LABELS = {"ours": "canonical (caffe)", "xdream": "XDream-port", "upconvgan": "upconvGAN"}
ALIASES = {"xdream-willwx": "xdream"}   # the name server/generators/weights.py gives XDream's files

# XDream module name -> caffe layer name, per family, read off
# willwx/XDream xdream/torch_nets/deepsim.py (DeePSiMNorm, DeePSiMConv34,
# DeePSiMPool5, DeePSiMFc) against the prototxts' layer order.
_READ_IN = {"conv6": "Rconv6", "conv7": "Rconv7", "conv8": "Rconv8"}
_UP_FROM_5 = {"tconv5_0": "deconv5", "tconv5_1": "conv5_1", "tconv4_0": "deconv4",
              "tconv4_1": "conv4_1", "tconv3_0": "deconv3", "tconv3_1": "conv3_1",
              "tconv2": "deconv2", "tconv1": "deconv1", "tconv0": "deconv0"}
_XDREAM_FC = {"fc7": "defc7", "fc6": "defc6", "fc5": "defc5", **_UP_FROM_5}
_XDREAM_POOL5 = {**_READ_IN, **_UP_FROM_5}
_XDREAM_CONV34 = {**_READ_IN, "tconv5_0": "deconv5", "tconv5_1": "conv5_1",
                  "tconv4_0": "deconv4", "tconv4_1": "conv4_1", "tconv3_0": "deconv3",
                  "tconv3_1": "conv3_1", "tconv2_0": "deconv2", "conv2_1": "conv2_1",
                  "tconv1_0": "deconv1", "conv1_1": "conv1_1"}
_XDREAM_NORM = {**_READ_IN, "tconv4_0": "deconv4", "conv4_1": "conv4_1",
                "tconv3_0": "deconv3", "conv3_1": "conv3_1", "tconv2_0": "deconv2",
                "conv2_1": "conv2_1", "tconv1_0": "deconv1", "conv1_1": "conv1_1"}
XDREAM_NAMES = {"norm1": _XDREAM_NORM, "norm2": _XDREAM_NORM, "conv3": _XDREAM_CONV34,
                "conv4": _XDREAM_CONV34, "pool5": _XDREAM_POOL5, "fc6": _XDREAM_FC,
                "fc7": _XDREAM_FC, "fc8": _XDREAM_FC}
# the only XDream modules built with a bias (nn.Linear / nn.Conv2d defaults)
XDREAM_BIASED = frozenset({"fc7", "fc6", "fc5", "conv6", "conv7", "conv8"})

_SEQ_INFIX = re.compile(r"^(?:G\.)?(\w+)\.1\.(weight|bias)$")


class Converted(NamedTuple):
    state: dict[str, torch.Tensor]   # canonical key -> tensor
    origin: dict[str, str]           # canonical key -> the file's key ("" where we filled it)
    convention: str


def to_canonical(state, layer: str, own: Mapping[str, torch.Tensor],
                 convention: str = "auto") -> Converted:
    """Rename a loaded state dict of deepsim-`layer` to canonical keys.

    `own` is the target module's state_dict (for the shapes of filled biases).
    Keys that match no convention pass through unchanged, so the caller's
    key check reports them."""
    _check_is_state_dict(state)
    convention = ALIASES.get(convention, convention)
    if convention not in CONVENTIONS:
        raise GeneratorError(f"unknown weights convention {convention!r}; known: {CONVENTIONS}")
    if convention == "auto":
        convention = detect(state.keys(), layer)
    rename = {"ours": lambda k: k, "upconvgan": _from_upconvgan,
              "xdream": lambda k: _from_xdream(k, layer)}[convention]
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in state.items():
        new = rename(key)
        if new in out:
            raise GeneratorError(f"keys {origin[new]!r} and {key!r} both map to {new!r}")
        out[new], origin[new] = tensor, key
    if convention == "xdream":
        _fill_zero_biases(out, origin, own, layer)
    return Converted(out, origin, convention)


def detect(keys, layer: str) -> str:
    """The convention a state dict's keys follow; the three name sets do not
    overlap where it matters (XDream's conv6/tconv*/fc7 are never caffe names)."""
    keys = list(keys)
    if keys and all(k.startswith("G.") for k in keys):
        return "upconvgan"
    if any(_SEQ_INFIX.match(k) for k in keys):
        return "upconvgan"
    table = XDREAM_NAMES.get(layer, {})
    xdream_only = set(table) - set(table.values())
    if any(_module(k) in xdream_only for k in keys):
        return "xdream"
    return "ours"


def _check_is_state_dict(state) -> None:
    if not isinstance(state, Mapping):
        raise GeneratorError(f"the file holds a {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise GeneratorError(f"not a state dict of tensors: entries {bad[:5]} are not "
                             "name -> tensor (a checkpoint wrapping one? save model.state_dict())")


def _module(key: str) -> str:
    return key.rsplit(".", 1)[0]


def _from_upconvgan(key: str) -> str:
    key = key.removeprefix("G.")
    m = _SEQ_INFIX.match(key)
    return f"{m.group(1)}.{m.group(2)}" if m else key


def _from_xdream(key: str, layer: str) -> str:
    module, _, param = key.rpartition(".")
    return f"{XDREAM_NAMES[layer].get(module, module)}.{param}"


def _fill_zero_biases(out: dict, origin: dict, own: Mapping[str, torch.Tensor], layer: str) -> None:
    """Zeros for the biases XDream's bias-free layers lack (fixed at 0 in caffe)."""
    for xd_name, name in XDREAM_NAMES[layer].items():
        key = f"{name}.bias"
        if xd_name not in XDREAM_BIASED and key not in out and key in own:
            out[key] = torch.zeros_like(own[key])
            origin[key] = ""
