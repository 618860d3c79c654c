"""The weight-free Fourier space and the pretrained DCGAN face generator."""

import hashlib
from importlib import metadata

import numpy as np
import pytest
import torch
from torch import nn

from server.generators import build_generator
from server.generators import dcgan_face
from server.generators.dcgan_face import DCGANFaceGenerator, DCGANFaceNet
from server.generators.fourier import COLOR_MEAN, FourierGenerator, half_plane_frequencies
from xdream.config import GeneratorConfig
from xdream.errors import GeneratorError


def config(kind, **kw):
    return GeneratorConfig(kind=kind, device="cpu", **kw)


def normal_codes(gen, n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *gen.code_shape))


def roughness(images: np.ndarray) -> np.ndarray:
    """Per image: mean |difference| between neighbouring pixels over the image's
    std (gray).  Scale free; ~0.1-0.3 for photographs and smooth renders, ~1 or
    more for pixel-scale texture or noise."""
    gray = images.astype(float).mean(-1)
    diff = (np.abs(np.diff(gray, axis=1)).mean((1, 2)) + np.abs(np.diff(gray, axis=2)).mean((1, 2))) / 2
    return diff / gray.reshape(len(gray), -1).std(1)


def assert_usable_stimuli(images, n, size, min_std=30, max_clipped=0.01):
    assert images.shape == (n, size, size, 3) and images.dtype == np.uint8
    per_image_std = images.reshape(n, -1, 3).astype(float).std(1).mean(1)
    assert (per_image_std > min_std).all() and (per_image_std < 90).all()   # real contrast
    assert (images <= 1).mean() < max_clipped and (images >= 254).mean() < max_clipped  # not saturated


# --- fourier -----------------------------------------------------------------

@pytest.fixture(scope="module")
def fourier():
    return FourierGenerator(config("fourier"), 128)


def test_fourier_normal_codes_give_contrasty_smooth_images(fourier):
    assert fourier.code_shape == (3 * (1 + 2 * len(half_plane_frequencies(16))),)
    assert 2000 < fourier.code_shape[0] < 3000
    images = fourier.generate(normal_codes(fourier, 8))
    assert_usable_stimuli(images, 8, 128)
    assert (roughness(images) < 0.3).all()   # 1/f: low frequencies dominate


def test_fouriers_band_limit_is_a_config_key_and_sets_the_codes_size():
    """generator.max_cycles: 8 cycles per image give 591 numbers a code (3 x (1 + 2 x 98));
    its images have no frequency above 8 cycles (the spectrum is zero outside the band)."""
    cfg = config("fourier")
    cfg.max_cycles = 8
    gen = FourierGenerator(cfg, 64)
    assert gen.code_shape == (3 * (1 + 2 * len(half_plane_frequencies(8))),) == (591,)
    images = gen.generate(normal_codes(gen, 2))
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    spectrum = gen.spectrum(torch.as_tensor(normal_codes(gen, 1), dtype=torch.float32)).abs()[0, 0]
    fy = torch.fft.fftfreq(gen.render_px, 1 / gen.render_px).abs().view(-1, 1)
    fx = torch.arange(spectrum.shape[1]).view(1, -1)
    outside = (fy ** 2 + fx ** 2) > 8 ** 2
    assert spectrum[outside].max() == 0 and spectrum[~outside].max() > 0


def test_fourier_is_deterministic_and_codes_matter(fourier):
    codes = normal_codes(fourier, 2, seed=1)
    again = build_generator(config("fourier"), 128).generate(codes)
    np.testing.assert_array_equal(fourier.generate(codes), again)
    assert np.abs(again[0].astype(int) - again[1]).mean() > 20
    nudged = codes[:1].copy()
    nudged[0, 1 + unit_of(0, 1)] += 1.0   # the lowest horizontal frequency, first channel
    assert np.abs(fourier.generate(nudged).astype(int) - again[:1]).max() > 10


def unit_of(fy, fx):
    """Index of frequency (fy, fx) among a channel's complex code units."""
    return int(np.flatnonzero((half_plane_frequencies(16) == (fy, fx)).all(1))[0])


@pytest.mark.parametrize("fy, fx", [(0, 1), (1, 0), (5, 0), (-7, 3), (9, 12)])
def test_fourier_code_units_are_cosines_and_sines_with_1_over_f_amplitude(fourier, fy, fx):
    """A real part is a cosine at its frequency, an imaginary part a sine, both
    of amplitude 2*scale; on the fx = 0 axis too, where the conjugate is
    written by hand."""
    k, n, index = fourier.n_freqs, fourier.render_px, unit_of(fy, fx)
    y, x = np.mgrid[0:n, 0:n]
    phase = 2 * np.pi * (fy * y + fx * x) / n
    amplitude = 2 * float(fourier._scales[index])
    for offset, wave in ((1, np.cos(phase)), (1 + k, -np.sin(phase))):
        code = torch.zeros(1, *fourier.code_shape)
        code[0, offset + index] = 1.0
        image = fourier.decorrelated(code)[0, 0].numpy()
        np.testing.assert_allclose(image, amplitude * wave, atol=1e-5)
    lowest = fourier._scales[unit_of(0, 1)]
    assert float(fourier._scales[index] / lowest) == pytest.approx(1 / np.hypot(fy, fx))


def test_fourier_zero_code_is_the_mean_colour_and_size_changes_only_sampling(fourier):
    flat = fourier.generate(np.zeros((1, *fourier.code_shape)))
    np.testing.assert_allclose(flat.reshape(-1, 3).mean(0), np.array(COLOR_MEAN) * 255, atol=1)
    assert flat.std(axis=(0, 1, 2)).max() == 0
    # the same band-limited image sampled at 64 and 128 px
    codes = torch.tensor(normal_codes(fourier, 1), dtype=torch.float32)
    small = FourierGenerator(config("fourier"), 64).decorrelated(codes)
    torch.testing.assert_close(small, fourier.decorrelated(codes)[..., ::2, ::2], atol=1e-4, rtol=0)


def test_fourier_small_stimuli_are_rendered_above_nyquist_then_fitted():
    small = FourierGenerator(config("fourier"), 32)
    assert small.render_px == 64
    assert_usable_stimuli(small.generate(normal_codes(small, 4)), 4, 32)


# --- dcgan-face ----------------------------------------------------------------

@pytest.fixture(scope="module")
def faces():
    return DCGANFaceGenerator(config("dcgan-face"), 64)


def random_weights(net: DCGANFaceNet, seed: int) -> DCGANFaceNet:
    """DCGAN's initialisation (N(0, .02) convolutions, N(1, .02) batch-norm
    scales), with batch-norm statistics measured on N(0,1) codes so that the
    random net gives full-contrast images like the trained one, in eval mode."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
            m.momentum = None   # cumulative average over the calibration batch
    with torch.no_grad():
        net.train()(torch.randn(64, *net.code_shape))
    return net.eval()


def test_dcgan_face_images_are_usable_stimuli(faces):
    assert faces.code_shape == (100,)
    # faces are softer than the Fourier images (per-image std 15-85, median 40),
    # and some have the black backgrounds of the training set (2% black overall)
    face = dict(min_std=12, max_clipped=0.1)
    assert_usable_stimuli(faces.generate(normal_codes(faces, 8)), 8, 64, **face)
    big = build_generator(config("dcgan-face"), 128)
    assert_usable_stimuli(big.generate(normal_codes(big, 2)), 2, 128, **face)


def test_dcgan_face_is_deterministic_per_code_and_codes_matter(faces):
    codes = normal_codes(faces, 6, seed=2)
    batch = faces.generate(codes)
    # eval-mode batch norm: an image depends on its own code only
    alone = DCGANFaceGenerator(config("dcgan-face"), 64).generate(codes[3:4])
    np.testing.assert_array_equal(batch[3:4], alone)
    assert np.abs(batch[0].astype(int) - batch[1]).mean() > 20


def test_packaged_weights_are_found_and_checksummed(faces):
    path = dcgan_face.packaged_weights()
    assert path.name == "weights.tar" and path.parent.name == "gan_face_generate"
    assert faces.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_pretrained_faces_are_smooth_and_warm_unlike_random_weights(faces):
    """Trained: smooth photographs of faces (roughness ~0.1-0.25) with skin
    tones, red > green > blue on average.  Random DCGAN weights give
    pixel-scale checkerboard texture (roughness > 1 for every seed tried)."""
    codes = normal_codes(faces, 16, seed=3)
    trained = faces.generate(codes)
    assert roughness(trained).max() < 0.4
    r, g, b = trained.reshape(-1, 3).astype(float).mean(0)
    assert r > g + 5 and g > b   # RGB order: a BGR mix-up would make faces blue
    for seed in (0, 1):
        faces_random = DCGANFaceGenerator(config("dcgan-face"), 64)
        faces_random.net = random_weights(DCGANFaceNet(), seed)
        assert roughness(faces_random.generate(codes)).min() > 0.8


def test_missing_package_names_the_pip_line(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(dcgan_face.metadata, "distribution", absent)
    with pytest.raises(GeneratorError, match="pip install --no-deps gan-face-generate==1.1.1"):
        build_generator(config("dcgan-face"), 64)


def test_weights_from_a_file_load_bare_or_as_checkpoint(tmp_path):
    net = random_weights(DCGANFaceNet(), 0)
    bare, wrapped = tmp_path / "bare.pt", tmp_path / "wrapped.tar"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, bare)  # nn.DataParallel names
    torch.save({"netG_state_dict": net.state_dict()}, wrapped)
    for path in (bare, wrapped):
        gen = DCGANFaceGenerator(config("dcgan-face", weights=str(path)), 64)
        assert gen.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        torch.testing.assert_close(gen.net.main[3].weight, net.main[3].weight)


def test_missing_truncated_or_wrong_weights_are_clear_errors(tmp_path):
    with pytest.raises(GeneratorError, match="cannot read generator weights"):
        DCGANFaceGenerator(config("dcgan-face", weights=str(tmp_path / "absent.tar")), 64)
    full = tmp_path / "full.tar"
    torch.save({"netG_state_dict": DCGANFaceNet().state_dict()}, full)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(GeneratorError, match="truncated or wrong file"):
        DCGANFaceGenerator(config("dcgan-face", weights=str(truncated)), 64)
    state = DCGANFaceNet().state_dict()
    state["main.6.weight"] = torch.zeros(256, 64, 4, 4)
    torch.save(state, tmp_path / "shape.pt")
    expected = r"main.6.weight has shape \(256, 64, 4, 4\), expected \(256, 128, 4, 4\)"
    with pytest.raises(GeneratorError, match=expected):
        DCGANFaceGenerator(config("dcgan-face", weights=str(tmp_path / "shape.pt")), 64)
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(GeneratorError, match="not a DCGAN face generator"):
        DCGANFaceGenerator(config("dcgan-face", weights=str(tmp_path / "other.pt")), 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind", ["fourier", "dcgan-face"])
def test_runs_on_cuda_like_on_cpu(kind):
    gpu = build_generator(GeneratorConfig(kind=kind, device="cuda"), 64)
    cpu = build_generator(config(kind), 64)
    codes = normal_codes(cpu, 4)
    diff = np.abs(gpu.generate(codes).astype(int) - cpu.generate(codes))
    assert diff.max() <= 2   # float rounding only
