"""The DeePSiM family: shapes from the published prototxts, random-weight
images, and weight files in the three key conventions (ours, XDream's port,
upconvGAN).  The expected shapes and the foreign key names below are written
out here from the public sources, not taken from deepsim.py / ports.py."""

import hashlib

import numpy as np
import pytest
import torch

from server.generators import ported_weights as ports
from server.generators.deepsim import ARCHITECTURES, DeepSimGenerator
from xdream.config import GeneratorConfig
from xdream.errors import GeneratorError

LAYERS = ["norm1", "norm2", "conv3", "conv4", "pool5", "fc6", "fc7", "fc8"]
CODE_SHAPES = {"norm1": (96, 27, 27), "norm2": (256, 13, 13), "conv3": (384, 13, 13),
               "conv4": (384, 13, 13), "pool5": (256, 6, 6), "fc6": (4096,), "fc7": (4096,),
               "fc8": (1000,)}
OUTPUT_SIZES = {"norm1": 240, "norm2": 240}   # the rest: 256


# (caffe name, L=InnerProduct / C=Convolution / D=Deconvolution, in, out, kernel),
# in prototxt order, from willwx/XDream prototxt/<layer>/generator_no_batch.prototxt
def _fc(n_in):
    return [("defc7", "L", n_in, 4096, 0), ("defc6", "L", 4096, 4096, 0),
            ("defc5", "L", 4096, 4096, 0), ("deconv5", "D", 256, 256, 4),
            ("conv5_1", "D", 256, 512, 3), ("deconv4", "D", 512, 256, 4),
            ("conv4_1", "D", 256, 256, 3), ("deconv3", "D", 256, 128, 4),
            ("conv3_1", "D", 128, 128, 3), ("deconv2", "D", 128, 64, 4),
            ("deconv1", "D", 64, 32, 4), ("deconv0", "D", 32, 3, 4)]


POOL5 = [("Rconv6", "C", 256, 512, 3), ("Rconv7", "C", 512, 512, 3), ("Rconv8", "C", 512, 512, 3),
         ("deconv5", "D", 512, 256, 4), *_fc(0)[4:]]
CONV34 = [("Rconv6", "C", 384, 384, 3), ("Rconv7", "C", 384, 512, 3), ("Rconv8", "C", 512, 512, 2),
          ("deconv5", "D", 512, 256, 4), ("conv5_1", "D", 256, 256, 3), ("deconv4", "D", 256, 128, 4),
          ("conv4_1", "D", 128, 128, 3), ("deconv3", "D", 128, 128, 4), ("conv3_1", "D", 128, 128, 3),
          ("deconv2", "D", 128, 64, 4), ("conv2_1", "C", 64, 32, 3), ("deconv1", "D", 32, 16, 4),
          ("conv1_1", "C", 16, 3, 3)]


def _norm(cin, c6):
    return [("Rconv6", "C", cin, c6, 3), ("Rconv7", "C", c6, 128, 3), ("Rconv8", "C", 128, 128, 3),
            ("deconv4", "D", 128, 128, 4), ("conv4_1", "C", 128, 128, 3), ("deconv3", "D", 128, 64, 4),
            ("conv3_1", "C", 64, 64, 3), ("deconv2", "D", 64, 32, 4), ("conv2_1", "C", 32, 32, 3),
            ("deconv1", "D", 32, 16, 4), ("conv1_1", "C", 16, 3, 3)]


PROTOTXT = {"norm1": _norm(96, 128), "norm2": _norm(256, 256), "conv3": CONV34, "conv4": CONV34,
            "pool5": POOL5, "fc6": _fc(4096), "fc7": _fc(4096), "fc8": _fc(1000)}

# module names of willwx/XDream xdream/torch_nets/deepsim.py, in forward order;
# the first three keep a bias, the rest are bias=False
_XD_UP = ["tconv5_0", "tconv5_1", "tconv4_0", "tconv4_1", "tconv3_0", "tconv3_1",
          "tconv2", "tconv1", "tconv0"]
_XD_NORM = ["conv6", "conv7", "conv8", "tconv4_0", "conv4_1", "tconv3_0", "conv3_1",
            "tconv2_0", "conv2_1", "tconv1_0", "conv1_1"]
_XD_CONV34 = ["conv6", "conv7", "conv8", "tconv5_0", "tconv5_1", "tconv4_0", "tconv4_1",
              "tconv3_0", "tconv3_1", "tconv2_0", "conv2_1", "tconv1_0", "conv1_1"]
XDREAM = {"norm1": _XD_NORM, "norm2": _XD_NORM, "conv3": _XD_CONV34, "conv4": _XD_CONV34,
          "pool5": ["conv6", "conv7", "conv8", *_XD_UP], "fc6": ["fc7", "fc6", "fc5", *_XD_UP],
          "fc7": ["fc7", "fc6", "fc5", *_XD_UP], "fc8": ["fc7", "fc6", "fc5", *_XD_UP]}


def deepsim(layer, image_size=256, **kw):
    return DeepSimGenerator(GeneratorConfig(kind=f"deepsim-{layer}", device="cpu", **kw), image_size)


def codes(layer, n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *CODE_SHAPES[layer]))


def expected_shapes(layer):
    shapes = {}
    for name, kind, cin, cout, k in PROTOTXT[layer]:
        shapes[f"{name}.weight"] = {"L": (cout, cin), "C": (cout, cin, k, k), "D": (cin, cout, k, k)}[kind]
        shapes[f"{name}.bias"] = (cout,)
    return shapes


def fresh_net(layer, seed=0):
    """A randomly initialised net whose bias-free-in-caffe biases are 0, as in
    the published weights, so foreign files round-trip exactly."""
    torch.manual_seed(seed)
    net = ARCHITECTURES[layer]()
    with torch.no_grad():
        for name, *_ in PROTOTXT[layer][3:]:
            getattr(net, name).bias.zero_()
    return net


def as_xdream(net, layer):
    state = {}
    for i, (xd, (name, *_)) in enumerate(zip(XDREAM[layer], PROTOTXT[layer], strict=True)):
        state[f"{xd}.weight"] = getattr(net, name).weight.detach().clone()
        if i < 3:
            state[f"{xd}.bias"] = getattr(net, name).bias.detach().clone()
    return state


def meta_net(layer):
    """Shapes and names without the cost of initialising 56 M weights."""
    with torch.device("meta"):
        return ARCHITECTURES[layer]()


def save(state, path):
    torch.save(state, path)
    return str(path)


@pytest.fixture(scope="module", params=LAYERS)
def gen(request):
    """Each layer's generator at its native size (so contrast is not smoothed
    away by a resize)."""
    layer = request.param
    return deepsim(layer, OUTPUT_SIZES.get(layer, 256), seed=0)


# -- architecture ---------------------------------------------------------

@pytest.mark.parametrize("layer", LAYERS)
def test_layers_follow_the_prototxt(layer):
    net = meta_net(layer)
    assert net.code_shape == CODE_SHAPES[layer]
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected_shapes(layer)
    assert list(net.state_dict()) == list(expected_shapes(layer))   # prototxt order
    out = net(torch.zeros(1, *CODE_SHAPES[layer], device="meta"))
    size = OUTPUT_SIZES.get(layer, 256)
    assert out.shape == (1, 3, size, size)


def test_code_shape_and_output(gen):
    layer = gen.layer
    assert gen.code_shape == CODE_SHAPES[layer]
    size = OUTPUT_SIZES.get(layer, 256)
    images = gen.generate(codes(layer, 2))
    assert images.shape == (2, size, size, 3) and images.dtype == np.uint8


def test_random_weights_give_contrast_and_depend_on_the_code(gen):
    images = gen.generate(codes(gen.layer, 2))
    assert 35 < images.std() < 90
    assert (images == 0).mean() < 0.1 and (images == 255).mean() < 0.1
    assert np.abs(images[0].astype(int) - images[1]).mean() > 5


def test_deterministic_for_a_seed(gen):
    layer = gen.layer
    again = deepsim(layer, gen.image_size, seed=0).generate(codes(layer, 1))
    np.testing.assert_array_equal(gen.generate(codes(layer, 1)), again)


@pytest.mark.parametrize("layer", ["norm1", "conv4", "pool5"])
def test_another_seed_gives_other_images(layer):
    one, two = (deepsim(layer, seed=s).generate(codes(layer, 1)) for s in (0, 1))
    assert np.abs(one.astype(int) - two).mean() > 5


def test_stimulus_size_is_honoured_for_240_px_generators():
    images = deepsim("norm1", 256, seed=0).generate(codes("norm1", 1))
    assert images.shape == (1, 256, 256, 3)


def test_tanh_layers_are_bounded_by_255_and_the_others_are_not(gen):
    # conv3/conv4/norm1/norm2 end in TanH and Power(scale 255); fc*/pool5 in a Deconvolution
    with torch.no_grad():
        raw = gen.net(100 * torch.randn(1, *gen.code_shape))
    bounded = gen.layer in ("norm1", "norm2", "conv3", "conv4")
    assert (raw.abs().max() <= 255.0) == bounded


# -- weight files -----------------------------------------------------------

def assert_loaded(gen, net):
    for key, tensor in net.state_dict().items():
        torch.testing.assert_close(gen.net.state_dict()[key], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("layer", ["norm1", "conv3", "pool5"])
def test_our_names_round_trip(tmp_path, layer):
    net = fresh_net(layer)
    net.conv3_1.bias.data.normal_()   # canonical files carry every bias, zero or not
    path = save(net.state_dict(), tmp_path / "w.pt")
    loaded = deepsim(layer, weights=path)
    assert loaded.weights_sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert_loaded(loaded, net)


@pytest.mark.parametrize("layer", ["norm2", "conv4", "pool5"])
def test_xdream_port_round_trips_with_zero_biases(tmp_path, layer):
    net = fresh_net(layer)
    state = as_xdream(net, layer)
    assert not any(k.startswith(("defc", "Rconv", "deconv")) for k in state)
    loaded = deepsim(layer, weights=save(state, tmp_path / f"{layer}.pt"))
    assert_loaded(loaded, net)
    x = torch.randn(1, *CODE_SHAPES[layer])
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), net(x))


@pytest.mark.parametrize("layer", LAYERS)
def test_xdream_names_map_for_every_layer(layer):
    net = meta_net(layer)
    own = net.state_dict()
    conv = ports.to_canonical(as_xdream(net, layer), layer, own)
    assert conv.convention == "xdream"
    assert set(conv.state) == set(own)
    assert conv.origin["deconv3.weight"] == "tconv3_0.weight"
    assert conv.origin["deconv3.bias"] == ""              # filled, not in the file
    assert conv.state["deconv3.bias"].shape == own["deconv3.bias"].shape


@pytest.mark.parametrize("style", ["module", "published", "old-local"])
def test_upconvgan_round_trips(tmp_path, style):
    # Binxu Wang's upconvGAN keeps caffe names in an nn.Sequential `G`:
    # upconvGAN.state_dict() -> "G.defc7.weight"; the published files load into
    # G ("defc7.weight"); older local files have "defc7.1.weight".
    layer = "pool5"   # upconvGAN covers pool5, fc6, fc7, fc8; pool5 is the small one
    net = fresh_net(layer)
    net.deconv2.bias.data.normal_()   # upconvGAN's deconvolutions carry biases
    key = {"module": "G.{}.{}", "published": "{}.{}", "old-local": "{}.1.{}"}[style]
    state = {key.format(*k.rsplit(".", 1)): v for k, v in net.state_dict().items()}
    loaded = deepsim(layer, weights=save(state, tmp_path / "ucg.pt"))
    assert_loaded(loaded, net)


@pytest.mark.parametrize("layer", ["fc6", "fc8"])
def test_upconvgan_module_keys_map_for_fc_layers(layer):
    own = meta_net(layer).state_dict()
    conv = ports.to_canonical({f"G.{k}": v for k, v in own.items()}, layer, own)
    assert conv.convention == "upconvgan" and list(conv.state) == list(own)
    assert conv.origin["defc7.weight"] == "G.defc7.weight"


def test_detects_each_convention():
    assert ports.detect(["G.defc7.weight", "G.deconv0.bias"], "fc6") == "upconvgan"
    assert ports.detect(["Rconv6.1.weight"], "pool5") == "upconvgan"
    assert ports.detect(["fc7.weight", "tconv0.weight"], "fc6") == "xdream"
    assert ports.detect(["conv6.weight", "conv4_1.weight"], "norm1") == "xdream"
    assert ports.detect(["Rconv6.weight", "conv4_1.weight"], "norm1") == "ours"
    assert ports.detect(["defc7.weight", "conv5_1.weight"], "fc6") == "ours"


def test_a_convention_can_be_forced_and_a_bad_one_is_refused():
    net = ARCHITECTURES["norm1"]()
    own = net.state_dict()
    assert ports.to_canonical(own, "norm1", own, "ours").convention == "ours"
    xd = as_xdream(net, "norm1")
    assert ports.to_canonical(xd, "norm1", own, "xdream-willwx").convention == "xdream"  # weights.py's name
    with pytest.raises(GeneratorError, match="unknown weights convention"):
        ports.to_canonical(own, "norm1", own, "caffe2")


def test_shape_mismatch_names_the_layer_and_both_shapes(tmp_path):
    # norm2 weights given to norm1: same keys, Rconv6 differs
    path = save(ARCHITECTURES["norm2"]().state_dict(), tmp_path / "norm2.pt")
    with pytest.raises(GeneratorError, match=r"layer Rconv6.weight has shape \(256, 256, 3, 3\), "
                                             r"expected \(128, 96, 3, 3\)"):
        deepsim("norm1", weights=path)


def test_shape_mismatch_in_a_foreign_file_names_its_key_too(tmp_path):
    state = as_xdream(fresh_net("conv4"), "conv4")
    state["tconv3_0.weight"] = torch.zeros(128, 64, 4, 4)
    with pytest.raises(GeneratorError, match=r"layer deconv3.weight has shape \(128, 64, 4, 4\), "
                                             r"expected \(128, 128, 4, 4\) \(file key 'tconv3_0.weight'"):
        deepsim("conv4", weights=save(state, tmp_path / "bad.pt"))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = as_xdream(fresh_net("norm1"), "norm1")
    del state["conv6.bias"]
    state["conv9.weight"] = torch.zeros(1)
    with pytest.raises(GeneratorError, match=r"XDream-port names.*missing keys \['Rconv6.bias'\], "
                                             r"unexpected keys \['conv9.weight'\]"):
        deepsim("norm1", weights=save(state, tmp_path / "w.pt"))


def test_truncated_file_is_a_clear_error(tmp_path):
    full = tmp_path / "full.pt"
    torch.save(ARCHITECTURES["norm1"]().state_dict(), full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(GeneratorError, match="not a torch state dict"):
        deepsim("norm1", weights=str(cut))


@pytest.mark.parametrize("content,message", [
    ([1, 2, 3], "holds a list, not a state dict"),
    ({"state_dict": {"a": torch.zeros(1)}, "epoch": 3}, "not a state dict of tensors"),
])
def test_torch_files_that_are_not_state_dicts(tmp_path, content, message):
    with pytest.raises(GeneratorError, match=message):
        deepsim("norm1", weights=save(content, tmp_path / "x.pt"))
