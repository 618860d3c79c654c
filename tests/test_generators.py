import hashlib

import numpy as np
import pytest
import torch

from server.generators.deepsim import DeePSiMFc6, DeepSimGenerator
from xdream.config import GeneratorConfig
from xdream.errors import GeneratorError


def deepsim(image_size=256, **kw):
    return DeepSimGenerator(GeneratorConfig(device="cpu", **kw), image_size)


@pytest.fixture(scope="module")
def gen():
    return deepsim(seed=0)


def test_output_shape_dtype_and_range(gen):
    codes = np.random.default_rng(0).normal(size=(3, 4096))
    images = gen.generate(codes)
    assert images.shape == (3, 256, 256, 3) and images.dtype == np.uint8
    # a usable stimulus: real contrast, little clipping
    assert 30 < images.std() < 90
    assert (images == 0).mean() < 0.1 and (images == 255).mean() < 0.1


def test_same_seed_same_images_and_codes_matter(gen):
    codes = np.random.default_rng(1).normal(size=(2, 4096))
    again = deepsim(seed=0).generate(codes)
    np.testing.assert_array_equal(gen.generate(codes), again)
    assert np.abs(again[0].astype(int) - again[1]).mean() > 5


def test_architecture_matches_deepsim_fc6():
    net = DeePSiMFc6()
    assert sum(p.numel() for p in net.parameters()) > 50e6   # about 56 M parameters
    out = net(torch.zeros(1, 4096))
    assert out.shape == (1, 3, 256, 256)


def test_bgr_mean_subtracted_output_becomes_rgb(gen, monkeypatch):
    # a net that outputs B=+50, G=0, R=-50 (BGR order, mean-subtracted)
    fake = torch.zeros(1, 3, 256, 256)
    fake[:, 0], fake[:, 2] = 50.0, -50.0
    monkeypatch.setattr(gen, "fast_net", lambda x: fake.expand(len(x), -1, -1, -1))
    rgb = gen.generate(np.zeros((1, 4096)))[0, 0, 0]
    assert tuple(rgb) == (123 - 50, 117, 104 + 50)


def test_resizes_to_the_stimulus_size():
    small = deepsim(64, seed=0)
    assert small.generate(np.zeros((1, 4096))).shape == (1, 64, 64, 3)


def test_weights_load_with_checksum(tmp_path):
    net = DeePSiMFc6()
    path = tmp_path / "fc6.pt"
    torch.save(net.state_dict(), path)
    loaded = deepsim(weights=str(path))
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    torch.testing.assert_close(loaded.net.defc7.weight, net.defc7.weight)


def test_weight_shape_mismatch_names_the_layer(tmp_path):
    state = DeePSiMFc6().state_dict()
    state["deconv3.weight"] = torch.zeros(256, 64, 4, 4)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(GeneratorError, match=r"deconv3.weight has shape \(256, 64, 4, 4\), expected \(256, 128, 4, 4\)"):
        deepsim(weights=str(path))


def test_not_a_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(GeneratorError, match="not a torch state dict"):
        deepsim(weights=str(path))
    with pytest.raises(GeneratorError, match="no such file, and not a known generator name"):
        deepsim(weights=str(tmp_path / "absent.pt"))


def test_initial_codes_normal_clipped_and_from_statistics(tmp_path):
    from server.generators.base import ImageGenerator
    from xdream.errors import ConfigError

    class Space(ImageGenerator):
        code_shape = (2, 3)

    rng = lambda: np.random.default_rng(0)
    plain = Space(GeneratorConfig(init_sd=2.0), 8).initial_codes(500, rng())
    assert plain.shape == (500, 2, 3) and 1.8 < plain.std() < 2.2 and plain.min() < 0
    assert Space(GeneratorConfig(init_clip=True), 8).initial_codes(50, rng()).min() == 0.0
    mean, std = np.arange(6.0).reshape(2, 3), np.full((2, 3), 0.01)
    np.savez(tmp_path / "stats.npz", mean=mean, std=std)
    codes = Space(GeneratorConfig(init_stats=str(tmp_path / "stats.npz")), 8).initial_codes(100, rng())
    np.testing.assert_allclose(codes.mean(axis=0), mean, atol=0.01)
    np.savez(tmp_path / "wrong.npz", mean=np.zeros(6), std=np.ones(6))
    with pytest.raises(ConfigError, match=r"shapes \(6,\)/\(6,\)"):
        Space(GeneratorConfig(init_stats=str(tmp_path / "wrong.npz")), 8).initial_codes(1, rng())
    with pytest.raises(ConfigError, match="generator.fit"):
        Space(GeneratorConfig(fit="stretch"), 8)


def test_fit_crop_takes_the_centre_and_resize_takes_everything():
    from server.generators.base import ImageGenerator
    rgb = torch.zeros(1, 3, 8, 8)
    rgb[..., 2:6, 2:6] = 255.0   # a white centre square on black
    crop = ImageGenerator(GeneratorConfig(fit="crop"), 4).fit_and_quantise(rgb)
    assert crop.shape == (1, 4, 4, 3) and (crop == 255).all()
    resized = ImageGenerator(GeneratorConfig(fit="resize"), 4).fit_and_quantise(rgb)
    assert resized[0, 0, 0, 0] < 128 < resized[0, 2, 2, 0]


def test_weights_by_name_are_found_in_the_weights_folder(tmp_path):
    from server.generators.weights import REGISTRY
    net = DeePSiMFc6()
    torch.save(net.state_dict(), tmp_path / REGISTRY["fc6"].filename)
    loaded = deepsim(weights="fc6", weights_dir=str(tmp_path))
    torch.testing.assert_close(loaded.net.deconv0.weight, net.deconv0.weight)
    with pytest.raises(GeneratorError, match="xdream weights --download fc7"):
        DeepSimGenerator(GeneratorConfig(kind="deepsim-fc7", weights="fc7", weights_dir=str(tmp_path),
                                         device="cpu"), 64)
