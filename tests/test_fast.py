"""server.generators.fast (accelerate) and benchmarks.generators (xdream bench generators)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from server.generators.deepsim import ARCHITECTURES, DeePSiMFc6, random_init
from server.generators.fast import (Accelerated, Act, FastConv2d, FastConvTranspose2d, FastLinear,
                                    PhaseConvTranspose2d, SubPixelConvTranspose2d, accelerate, bf16_supported,
                                    stride1_as_conv)

REPO = Path(__file__).resolve().parents[1]

# (in, out, kernel, stride, padding, output_padding, groups, dilation, bias)
DECONVS = [
    (256, 512, 3, 1, 1, 0, 1, 1, True),    # conv5_1 of fc6
    (128, 128, 3, 1, 1, 0, 1, 1, False),
    (7, 5, 3, 1, 1, 0, 1, 1, True),
    (16, 8, 5, 1, 2, 0, 1, 1, True),
    (16, 8, 3, 1, 0, 0, 1, 1, True),       # growing output (padding 2 as a Conv2d)
    (12, 6, 3, 1, 1, 0, 3, 1, True),       # grouped
    (8, 8, 3, 1, 2, 0, 1, 2, False),       # dilated
    (256, 256, 4, 2, 1, 0, 1, 1, True),    # deconv5 of fc6
    (32, 3, 4, 2, 1, 0, 1, 1, True),       # deconv0 of fc6
    (64, 32, 4, 2, 1, 0, 1, 1, False),
    (5, 7, 4, 2, 1, 0, 1, 1, True),
    (8, 4, 6, 3, 0, 0, 1, 1, True),        # stride 3 sub-pixel
    (8, 4, 8, 4, 2, 0, 1, 1, True),        # stride 4 sub-pixel
    (8, 4, 3, 2, 1, 1, 1, 1, True),        # output_padding: only the direct fast deconv
    (8, 4, 4, 2, 1, 0, 2, 1, True),        # grouped stride 2
    (8, 4, 3, 1, 3, 0, 1, 1, True),        # padding > k-1: no Conv2d equivalent
]


def _deconv(cfg, seed=0):
    cin, cout, k, s, p, op, g, d, bias = cfg
    torch.manual_seed(seed)
    m = nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op, groups=g, dilation=d, bias=bias)
    with torch.no_grad():
        m.weight.normal_(0, 1.0 / (cin * k * k / s / s) ** 0.5)
        if bias:
            m.bias.normal_(0, 0.1)
    return m.eval()


def _close(y, ref, rel=2e-5):
    assert y.shape == ref.shape
    err = (y - ref).abs().max().item()
    assert err <= rel * (1 + ref.abs().max().item()), err


@pytest.mark.parametrize("cfg", DECONVS, ids=lambda c: "x".join(map(str, c[:8])) + ("b" if c[8] else "nb"))
@pytest.mark.parametrize("act", [None, Act("leaky_relu", 0.3), Act("relu")], ids=["noact", "lrelu", "relu"])
def test_each_rewrite_matches_the_transposed_conv(cfg, act):
    m = _deconv(cfg)
    s = cfg[3]
    x = torch.randn(3, cfg[0], 9, 7)
    with torch.inference_mode():
        ref = m(x)
        if act is not None:
            ref = F.leaky_relu(ref, act.slope) if act.kind == "leaky_relu" else F.relu(ref)
        candidates = {"direct": FastConvTranspose2d(m), "direct-nchw": FastConvTranspose2d(m, channels_last=False)}
        conv = stride1_as_conv(m)
        if s == 1 and cfg[4] <= cfg[7] * (cfg[2] - 1):
            assert isinstance(conv, FastConv2d)
            candidates["stride1-conv"] = conv
        else:
            assert conv is None
        sub = SubPixelConvTranspose2d.from_deconv(m)
        if s > 1 and cfg[5] == 0 and cfg[6] == 1:
            assert sub is not None
            candidates["subpixel"] = sub
        else:
            assert sub is None
        phase = PhaseConvTranspose2d.from_deconv(m)
        if s == 1 or cfg[5] or cfg[6] > 1:
            assert phase is None
        elif phase is not None:
            candidates["phases"] = phase
        if s == 2 and cfg[2] == 4 and cfg[4] == 1 and cfg[6] == 1:
            assert phase is not None  # the DeePSiM case
        for name, fast in candidates.items():
            fast.act = act
            for mkldnn in (True, False):  # the oneDNN post-op path and the plain (CUDA) path
                fast.use_mkldnn = mkldnn
                y = fast(x.clone())
                _close(y, ref)
                assert y.dtype == ref.dtype, name


def test_stride2_k4_p1_is_one_conv_with_four_times_the_channels():
    m = _deconv((16, 8, 4, 2, 1, 0, 1, 1, True))
    sub = SubPixelConvTranspose2d.from_deconv(m)
    assert tuple(sub.conv.weight.shape) == (32, 16, 3, 3) and sub.conv.padding == [1, 1] and sub.scale == 2


def test_phases_of_stride2_k4_p1_are_one_2x2_conv():
    m = _deconv((16, 3, 4, 2, 1, 0, 1, 1, True))
    phase = PhaseConvTranspose2d.from_deconv(m)
    assert tuple(phase.conv.weight.shape) == (12, 16, 2, 2) and phase.conv.padding == [1, 1]
    x = torch.randn(2, 16, 5, 6)
    with torch.inference_mode():
        y = phase(x)
        assert y.shape == (2, 3, 10, 12)
        _close(y, m(x))


def test_linear_and_conv_twins():
    torch.manual_seed(1)
    lin = nn.Linear(33, 17).eval()
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1).eval()
    x, xi = torch.randn(5, 33), torch.randn(2, 6, 11, 11)
    with torch.inference_mode():
        for act in (None, Act("leaky_relu", 0.2)):
            fl, fc = FastLinear(lin), FastConv2d.from_conv(conv)
            fl.act = fc.act = act
            rl, rc = lin(x), conv(xi)
            if act:
                rl, rc = F.leaky_relu(rl, 0.2), F.leaky_relu(rc, 0.2)
            _close(fl(x), rl)
            _close(fc(xi), rc)


class Small(nn.Module):
    """Linear -> reshape -> deconvs / convs with module and functional activations,
    a layer whose output is used twice, and a layer called twice."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 8 * 4 * 4)
        self.up = nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1)
        self.mid = nn.ConvTranspose2d(6, 6, 3, padding=1)
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.out = nn.ConvTranspose2d(6, 3, 4, stride=2, padding=1, bias=False)
        self.act = nn.LeakyReLU(0.3)

    def forward(self, z):
        x = self.act(self.fc(z)).view(-1, 8, 4, 4)
        x = F.relu(self.up(x))
        y = self.mid(x)
        x = self.act(y) + 0.5 * y           # y used twice: no in-place fusion
        x = F.leaky_relu(self.conv(x), 0.1)
        x = torch.relu(self.conv(x))        # conv called twice: not fused
        return self.out(x)


class WithOutputSize(nn.Module):
    """A stride-2 deconvolution called with output_size (odd sizes need output_padding)."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1)
        self.same = nn.ConvTranspose2d(3, 2, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.up(x, output_size=[2 * x.shape[-2] + 1, 2 * x.shape[-1]]))
        return self.same(y)


@pytest.mark.parametrize("fuse", [True, False])
def test_deconvolution_called_with_output_size(fuse):
    torch.manual_seed(4)
    net = WithOutputSize().eval()
    x = torch.randn(2, 4, 5, 6)
    with torch.inference_mode():
        ref = net(x)
        fast = accelerate(net, fuse=fuse)
        _close(fast(x), ref)
    assert ref.shape == (2, 2, 11, 12)
    assert type(fast.net.up) is FastConvTranspose2d  # not phases: output_size needs output_padding
    assert type(fast.net.same) is FastConv2d


class Untraceable(Small):
    def forward(self, z):
        if float(z.sum()) > 1e9:  # data-dependent Python: fx cannot trace it
            return z
        return super().forward(z)


@pytest.mark.parametrize("cls", [Small, Untraceable])
@pytest.mark.parametrize("kw", [{}, {"subpixel": True}, {"mkldnn": False}, {"channels_last": False},
                                {"fuse": False, "stride1_conv": False}])
def test_accelerate_a_generic_module(cls, kw):
    torch.manual_seed(2)
    net = cls().eval()
    z = torch.randn(4, 10)
    with torch.inference_mode():
        ref = net(z)
        fast = accelerate(net, **kw)
        _close(fast(z), ref)
    assert isinstance(fast, Accelerated)
    assert fast.traced == (cls is Small)
    kinds = {type(m) for m in fast.modules()}
    assert nn.ConvTranspose2d not in kinds and nn.Conv2d not in kinds and nn.Linear not in kinds
    fused = [r for r in fast.rewrites if "fused" in r]
    if not fast.traced:
        assert {type(m) for m in fast.modules()} >= {FastConvTranspose2d, FastConv2d, FastLinear} and not fused
    elif kw.get("fuse", True):
        assert sorted(r.split(":")[0] for r in fused) == ["fc", "up"]  # not mid (shared output), not conv (twice)


def test_the_original_is_untouched():
    torch.manual_seed(3)
    net = Small().eval()
    net.up.weight.requires_grad_(True)
    before = copy.deepcopy(net.state_dict())
    ptrs = {k: v.data_ptr() for k, v in net.state_dict().items()}
    kinds = [type(m) for m in net.modules()]
    fast = accelerate(net)
    fast(torch.randn(2, 10))
    assert [type(m) for m in net.modules()] == kinds
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]) and v.data_ptr() == ptrs[k]
    ours = {p.data_ptr() for p in net.parameters()}
    assert not ours & {p.data_ptr() for p in fast.parameters()}
    assert net.up.weight.requires_grad and not any(p.requires_grad for p in fast.parameters())
    with torch.no_grad():
        next(fast.parameters()).add_(1.0)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_bad_precision():
    with pytest.raises(ValueError, match="precision"):
        accelerate(Small(), "fp16")


# ------------------------------------------------------------------ the whole fc6

@pytest.fixture(scope="module")
def fc6():
    net = DeePSiMFc6()
    random_init(net, 0)
    net.eval()
    codes = torch.randn(6, 4096, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = net(codes)
        truth = copy.deepcopy(net).double()(codes.double())
    return net, codes, ref, truth


# fp32 tolerance: the output spans about +-400 on the 0-255 scale; the eager fp32
# reference itself is ~5e-4 away from an fp64 evaluation, and any other order of
# summation (NHWC, oneDNN) lands ~1e-3 from the reference.  So: within 2e-3 of
# the reference (5e-6 of the range) and no more than 3x the reference's own
# distance from fp64.
FP32_ABS = 2e-3


@pytest.mark.parametrize("kw", [{}, {"subpixel": True}, {"mkldnn": False}, {"phase_max_out_channels": 0},
                                {"stride1_conv": False, "fuse": False, "phase_max_out_channels": 0}])
def test_accelerated_fc6_matches_the_reference(fc6, kw):
    net, codes, ref, truth = fc6
    fast = accelerate(net, "fp32", **kw)
    with torch.inference_mode():
        y = fast(codes)
    assert y.shape == ref.shape == (6, 3, 256, 256) and y.dtype == torch.float32
    assert (y - ref).abs().max().item() < FP32_ABS
    ref_err = (ref.double() - truth).abs().max().item()
    assert (y.double() - truth).abs().max().item() <= 3 * ref_err
    assert fast.code_shape == (4096,) and fast.precision == "fp32"


def test_fc6_rewrites(fc6):
    fast = accelerate(fc6[0])
    text = "\n".join(fast.rewrites)
    assert fast.traced
    for name in ("conv5_1", "conv4_1", "conv3_1"):
        assert f"{name}: ConvTranspose2d -> FastConv2d [ConvTranspose2d(stride 1)]" in text
    for name in ("deconv5", "deconv4", "deconv3", "deconv2", "deconv1"):
        assert f"{name}: ConvTranspose2d -> FastConvTranspose2d" in text
    assert "deconv0: ConvTranspose2d -> PhaseConvTranspose2d [phases]" in text
    fused = [r.split(":")[0] for r in fast.rewrites if "fused leaky_relu" in r]
    assert len(fused) == 11 and "deconv0" not in fused  # every layer but the last


@pytest.mark.parametrize("layer", sorted(ARCHITECTURES))
def test_every_deepsim_generator_accelerates(layer):
    net = ARCHITECTURES[layer]()
    random_init(net, 0)
    net.eval()
    codes = torch.randn(2, *net.code_shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = net(codes)
        fast = accelerate(net)
        assert fast.traced and any("fused" in r for r in fast.rewrites)
        assert (fast(codes) - ref).abs().max().item() < FP32_ABS
        if bf16_supported("cpu"):
            diff = (accelerate(net, "bf16")(codes) - ref).abs()
            assert diff.max().item() < 8.0 and diff.mean().item() < 0.8
    assert fast.code_shape == net.code_shape
    for attr in ("output_size", "tanh_output", "layer_name"):
        if hasattr(net, attr):
            assert getattr(fast, attr) == getattr(net, attr)


@pytest.mark.skipif(not bf16_supported("cpu"), reason="no native bf16 on this CPU")
def test_bf16_fc6_within_the_stated_tolerance(fc6):
    # bf16 keeps 8 significant bits: on outputs of std ~60 and range +-400 the
    # measured error is max ~4, mean ~0.4 (0-255 scale); allow max 8, mean 0.8.
    net, codes, ref, _ = fc6
    fast = accelerate(net, "bf16")
    assert fast.precision == "bf16" and fast.dtype == torch.bfloat16
    with torch.inference_mode():
        y = fast(codes)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    diff = (y - ref).abs()
    assert diff.max().item() < 8.0 and diff.mean().item() < 0.8
    assert next(net.parameters()).dtype == torch.float32


def test_bf16_falls_back_to_fp32_without_native_support(monkeypatch):
    import server.generators.fast as fast_mod
    monkeypatch.setattr(fast_mod, "bf16_supported", lambda device="cpu": False)
    fast = accelerate(Small().eval(), "bf16")
    assert fast.precision == "fp32" and fast.dtype == torch.float32


def test_tune_cpu_allocator_in_a_fresh_process():
    code = ("import sys, torch; from server.generators.fast import tune_cpu_allocator as t; ok = t(); "
            "x = torch.ones(40, 32, 128, 128); y = (x * 2).sum().item(); "
            "print(ok, y == 2 * x.numel())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ok, right = proc.stdout.split()
    assert right == "True"
    if sys.platform.startswith("linux"):
        import platform
        assert ok == str(platform.libc_ver()[0] == "glibc")


# ------------------------------------------------------------------ xdream bench generators

def test_cli_bench_json_smoke():
    proc = subprocess.run([sys.executable, "-m", "xdream.cli", "bench", "generators", "--json",
                           "--batch", "2", "--repeats", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    for key in ("torch", "threads", "cpu", "device", "matmul_gflops", "flops_per_image", "bound_s",
                "target_ratio", "variants", "layers"):
        assert key in res, key
    assert res["batch"] == 2 and res["repeats"] == 1 and res["threads"] >= 1
    assert 1.9e9 < res["flops_per_image"] < 2.1e9
    assert res["flops_per_image"] == sum(layer["flops"] for layer in res["layers"])
    assert res["matmul_gflops"]["fp32"] > 0 and res["target_ratio"] > 0
    assert {"eager", "fast", "channels_last", "+stride1-conv", "+inplace-act"} <= set(res["variants"])
    if res["bf16_native"]:
        assert "fast-bf16" in res["variants"] and res["matmul_gflops"]["bf16"] > 0
    for name, v in res["variants"].items():
        for key in ("best_s", "median_s", "images_per_s", "gflops", "ratio_to_bound", "ratio_to_fp32_bound"):
            assert v[key] > 0, (name, key)
        assert v["precision"] in ("fp32", "bf16")
        if v["precision"] == "fp32":
            assert v["max_abs_diff"] < FP32_ABS, name


def test_channels_last_output_quantises_like_the_reference(fc6):
    """The server's post-processing (generate + fit_and_quantise) takes the
    channels_last output as it is: same uint8 images but for rare 1-level roundings."""
    from types import SimpleNamespace

    from server.generators.base import ImageGenerator
    net, codes, ref, _ = fc6
    with torch.inference_mode():
        y = accelerate(net)(codes)
    assert y.is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor((104.0, 117.0, 123.0)).view(1, 3, 1, 1)
    for fit, size in (("crop", 224), ("resize", 128)):
        gen = SimpleNamespace(image_size=size, cfg=SimpleNamespace(fit=fit))
        a = ImageGenerator.fit_and_quantise(gen, (ref + mean).flip(1))
        b = ImageGenerator.fit_and_quantise(gen, (y + mean).flip(1))
        assert a.shape == b.shape == (6, size, size, 3) and a.dtype == b.dtype
        diff = abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
