"""Inference-speed rewrites of a generator network: `accelerate(net, precision)`.

`accelerate` returns a new module (the original is deep-copied, never touched)
that computes the same function from the same weights, faster:

  * every Conv2d / ConvTranspose2d / Linear is replaced by a "fast" twin that
    keeps images in channels_last (NHWC) memory format: oneDNN's convolutions
    run 1.5-2x faster on NHWC than on NCHW on this CPU;
  * bias + LeakyReLU / ReLU that directly follow a layer are fused into it (a
    oneDNN post-op on CPU, an in-place activation elsewhere), found by tracing
    the forward with torch.fx; Linear layers go through oneDNN too (about 2.5x
    faster than MKL's sgemm at batch 40 on AMD Zen).  A network fx cannot trace
    still gets the per-layer rewrites, without fusion;
  * a strided ConvTranspose2d with few output channels (fc6's deconv0: 3) runs
    as its stride^2 phase convolutions computed by one Conv2d, interleaved by
    two copies (PhaseConvTranspose2d): oneDNN's deconvolution is slow there;
  * a stride-1 ConvTranspose2d becomes the equivalent Conv2d (weights flipped
    and in/out swapped, padding d*(k-1)-p): neutral on this CPU, kept because
    convolutions are the better-tuned path on every backend;
  * precision="bf16" stores weights and activations in bfloat16 where the
    hardware computes it natively (CPU: avx512_bf16 or AMX; CUDA: sm80+),
    taking fp32 codes in and giving fp32 images out.

Opt-in: `subpixel=True` rewrites every strided ConvTranspose2d (e.g. 4x4,
stride 2, padding 1) as one Conv2d producing stride^2 x the channels +
pixel_shuffle.  Exact, but the union kernel is 3x3 for phases of 2x2 taps (2.25x
the FLOPs): 1.5x slower than oneDNN's own deconvolution here.

Process-wide, separate: `tune_cpu_allocator()` (glibc) stops every large tensor
from being mmap'ed and page-faulted afresh each generation: 10% on the fast
fp32 path, 30% on eager (see its doc for the costs).

The module runs on whatever device its input is on: the oneDNN fused ops are
used for CPU tensors only; CUDA tensors take the plain torch ops (channels_last,
in-place activations), so images stay on the GPU.  Outputs of 4-d layers come
back in channels_last strides (same values and shape; call .contiguous() if a
consumer needs NCHW strides).  Measurements: docs/benchmarks.md.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import logging
import platform
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
CL = torch.channels_last

__all__ = ["PRECISIONS", "accelerate", "bf16_supported", "tune_cpu_allocator", "Accelerated", "FastConv2d",
           "FastConvTranspose2d", "FastLinear", "PhaseConvTranspose2d", "SubPixelConvTranspose2d",
           "stride1_as_conv"]


# --------------------------------------------------------------------------- capability

def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def _cpu_bf16_native() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    flags = _cpu_flags()
    if flags:  # Linux x86: oneDNN's bf16 is fast only with avx512_bf16 or AMX
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    try:  # elsewhere (e.g. ARM with bf16 extensions) trust oneDNN's own answer
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether `device` computes bfloat16 natively (fast), not just emulated."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_bf16_native()
    return False


@functools.cache
def _mkldnn_fused_ok(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused (conv / deconv / linear + post-op) CPU ops exist in this
    torch build and agree with the plain ops; they are private torch API, so check."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        mk = torch.ops.mkldnn
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 8, 5, 5, generator=gen).to(dtype).contiguous(memory_format=CL)
        w = torch.randn(8, 4, 4, 4, generator=gen).to(dtype)
        b = torch.randn(4, generator=gen).to(dtype)

        def close(y, ref):  # bf16: a few ulps of the largest value
            tol = 1e-4 if dtype == torch.float32 else 0.05
            return (y.float() - ref).abs().max().item() <= tol * (1.0 + ref.abs().max().item())
        y = mk._convolution_transpose_pointwise(x, w, b, [1, 1], [0, 0], [2, 2], [1, 1], 1,
                                                "leaky_relu", [0.3], "")
        ref = F.leaky_relu(F.conv_transpose2d(x.float(), w.float(), b.float(), 2, 1), 0.3)
        ok = close(y, ref)
        wc = torch.randn(4, 8, 3, 3, generator=gen).to(dtype)
        y = mk._convolution_pointwise(x, wc, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
        ref = F.relu(F.conv2d(x.float(), wc.float(), b.float(), 1, 1))
        ok = ok and close(y, ref)
        xl = torch.randn(3, 16, generator=gen).to(dtype)
        wl = torch.randn(8, 16, generator=gen).to(dtype)
        y = mk._linear_pointwise(xl, wl, b.repeat(2), "leaky_relu", [0.3], "")
        ref = F.leaky_relu(F.linear(xl.float(), wl.float(), b.repeat(2).float()), 0.3)
        ok = ok and close(y, ref)
    except (AttributeError, RuntimeError, NotImplementedError) as exc:
        log.info("oneDNN fused ops unavailable for %s: %s", dtype, exc)
        return False
    if not ok:
        log.warning("oneDNN fused ops disagree with the plain ops for %s; not using them", dtype)
    return ok


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_cpu_allocator(threshold: int = 1 << 30) -> bool:
    """Stop glibc from giving every large tensor fresh pages (mmap + page faults,
    munmap on free); keep freed memory in the process for the next generation.

    A generation allocates ~30-80 MB activations per layer, above glibc's largest
    mmap threshold (32 MB): each is then mmap'ed, page-faulted in, zeroed by the
    kernel and unmapped again, every generation.  Measured on the 2-core dev
    machine: fc6 batch 40, fast fp32 222 -> 202 ms, bf16 120 -> 110 ms, eager
    405 -> 274 ms.  (Setting THP_MEM_ALLOC_ENABLE=1 in the environment before
    torch is imported gets most of it too.)

    Process-wide, so the server calls it once at start-up, before it starts the
    threads that run generators: it also sets M_ARENA_MAX=1, because a thread's
    own malloc arena mmaps large blocks whatever the threshold.  Costs: the
    process keeps its peak heap (a few hundred MB for fc6 at batch 40) instead of
    returning it to the OS, and all threads share one malloc arena.
    Returns whether it was applied (glibc on Linux only)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, int(threshold)) == 1 and ok
        ok = libc.mallopt(_M_ARENA_MAX, 1) == 1 and ok
    except (OSError, AttributeError):
        return False
    return ok


# --------------------------------------------------------------------------- fast layers

@dataclass(frozen=True)
class Act:
    """A fused activation: 'relu' or 'leaky_relu' (with its negative slope)."""
    kind: str
    slope: float = 0.0

    def scalars(self) -> list:
        return [self.slope] if self.kind == "leaky_relu" else []

    def apply_(self, y: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu_(y, self.slope) if self.kind == "leaky_relu" else F.relu_(y)


class _Fast(nn.Module):
    """Common parts: an optional fused activation, oneDNN on CPU, channels_last."""

    act: Act | None = None
    use_mkldnn: bool = True  # switched off (per module) for ablations and tests

    def _fused(self, x: torch.Tensor) -> bool:
        return (self.use_mkldnn and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
                and x.dtype == self.weight.dtype and _mkldnn_fused_ok(x.dtype))

    def _attr(self) -> tuple[str, list]:
        return (self.act.kind, self.act.scalars()) if self.act else ("none", [])

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        return self.act.apply_(y) if self.act else y

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", act={self.act.kind}({self.act.slope:g})" if self.act else "")


class FastConv2d(_Fast):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation,
                 groups: int, channels_last: bool = True, origin: str = "Conv2d"):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups, self.channels_last, self.origin = groups, channels_last, origin
        if channels_last:
            self.weight.data = self.weight.data.contiguous(memory_format=CL)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, channels_last: bool = True) -> FastConv2d:
        return cls(conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                   channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=CL)
        if self._fused(x):
            attr, scalars = self._attr()
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, self.padding, self.stride,
                                                           self.dilation, self.groups, attr, scalars, "")
        return self._finish(F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                     self.groups))

    def extra_repr(self) -> str:
        o, i = self.weight.shape[0], self.weight.shape[1] * self.groups
        return (f"{i}, {o}, kernel_size={tuple(self.weight.shape[2:])}, stride={self.stride}, "
                f"padding={self.padding}, from={self.origin}") + super().extra_repr()


class FastConvTranspose2d(_Fast):
    def __init__(self, deconv: nn.ConvTranspose2d, channels_last: bool = True):
        super().__init__()
        self.weight = nn.Parameter(deconv.weight.detach().clone(), requires_grad=False)
        self.bias = None if deconv.bias is None else nn.Parameter(deconv.bias.detach().clone(),
                                                                  requires_grad=False)
        self.stride, self.padding = list(deconv.stride), list(deconv.padding)
        self.output_padding, self.dilation = list(deconv.output_padding), list(deconv.dilation)
        self.groups, self.channels_last = deconv.groups, channels_last
        if channels_last:
            self.weight.data = self.weight.data.contiguous(memory_format=CL)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        out_pad = self.output_padding
        if output_size is not None:  # as nn.ConvTranspose2d.forward(x, output_size)
            out_pad = nn.modules.conv._ConvTransposeNd._output_padding(
                self, x, list(output_size), self.stride, self.padding, list(self.weight.shape[2:]), 2,
                self.dilation)
        if self.channels_last:
            x = x.contiguous(memory_format=CL)
        if self._fused(x):
            attr, scalars = self._attr()
            return torch.ops.mkldnn._convolution_transpose_pointwise(
                x, self.weight, self.bias, self.padding, list(out_pad), self.stride, self.dilation,
                self.groups, attr, scalars, "")
        return self._finish(F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                               list(out_pad), self.groups, self.dilation))

    def extra_repr(self) -> str:
        i, o = self.weight.shape[0], self.weight.shape[1] * self.groups
        return (f"{i}, {o}, kernel_size={tuple(self.weight.shape[2:])}, stride={self.stride}, "
                f"padding={self.padding}") + super().extra_repr()


class FastLinear(_Fast):
    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(lin.weight.detach().clone(), requires_grad=False)
        self.bias = None if lin.bias is None else nn.Parameter(lin.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and self._fused(x):
            attr, scalars = self._attr()
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, attr, scalars, "")
        return self._finish(F.linear(x, self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}" + super().extra_repr()


def stride1_as_conv(deconv: nn.ConvTranspose2d, channels_last: bool = True) -> FastConv2d | None:
    """The Conv2d equal to a stride-1 ConvTranspose2d, or None when there is none
    (stride > 1, output_padding, or padding > dilation*(kernel-1))."""
    if tuple(deconv.stride) != (1, 1) or any(deconv.output_padding) or deconv.padding_mode != "zeros":
        return None
    pad = [d * (k - 1) - p for k, p, d in zip(deconv.kernel_size, deconv.padding, deconv.dilation)]
    if min(pad) < 0:
        return None
    g = deconv.groups
    w = deconv.weight.detach()  # (Cin, Cout/g, kh, kw)
    cin, cout_g, kh, kw = w.shape
    # per group: (Cin/g, Cout/g) -> (Cout/g, Cin/g), kernel rotated by 180 degrees
    w = w.view(g, cin // g, cout_g, kh, kw).transpose(1, 2).reshape(g * cout_g, cin // g, kh, kw).flip(2, 3)
    return FastConv2d(w.contiguous(), deconv.bias, (1, 1), pad, deconv.dilation, g, channels_last,
                      origin="ConvTranspose2d(stride 1)")


def _plain_stride(deconv: nn.ConvTranspose2d) -> int | None:
    """s, for a ConvTranspose2d of stride (s, s) with s >= 2, one group, no dilation, no output
    padding and zero padding: the ones the strided rewrites below handle; else None."""
    s = deconv.stride[0]
    if (s < 2 or tuple(deconv.stride) != (s, s) or deconv.groups != 1 or tuple(deconv.dilation) != (1, 1)
            or any(deconv.output_padding) or deconv.padding_mode != "zeros"):
        return None
    return s


class SubPixelConvTranspose2d(_Fast):
    """A strided ConvTranspose2d as one Conv2d with stride^2 x the output channels
    followed by pixel_shuffle (exact; see `from_deconv` for when it applies)."""

    def __init__(self, conv: FastConv2d, scale: int):
        super().__init__()
        self.conv, self.scale = conv, scale

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    @classmethod
    def from_deconv(cls, deconv: nn.ConvTranspose2d, channels_last: bool = True) -> SubPixelConvTranspose2d | None:
        s = _plain_stride(deconv)
        if s is None:
            return None
        w = deconv.weight.detach()  # (Cin, Cout, kh, kw)
        cin, cout = w.shape[:2]
        taps, pads = [], []
        for k, p in zip(deconv.kernel_size, deconv.padding):
            if (k - 2 * p) % s or k - 2 * p < s:  # phases of unequal length, or nothing to shuffle
                return None
            t_n = -(-k // s)
            c = [(r + p) // s for r in range(s)]
            dmin, dmax = min(c) - t_n + 1, max(c)
            d_n = dmax - dmin + 1
            # taps[r][j] = kernel index used by phase r at window position j (or -1)
            tap = [[-1] * d_n for _ in range(s)]
            for r in range(s):
                for t in range(t_n):
                    kk = (r + p) % s + s * t
                    if kk < k:
                        tap[r][c[r] - t - dmin] = kk
            q_extra = (k - 2 * p) // s - 1  # phase length is L + q_extra
            lo, hi = -dmin, q_extra + d_n - 1 + dmin
            if lo < 0 or hi < 0 or lo != hi:
                return None
            taps.append(tap)
            pads.append(lo)
        (th, tw) = taps
        dh, dw = len(th[0]), len(tw[0])
        wc = w.new_zeros(cout, s, s, cin, dh, dw)
        for rh in range(s):
            for jh in range(dh):
                kh = th[rh][jh]
                if kh < 0:
                    continue
                for rw in range(s):
                    for jw in range(dw):
                        kw = tw[rw][jw]
                        if kw >= 0:
                            wc[:, rh, rw, :, jh, jw] = w[:, :, kh, kw].t()
        bias = None if deconv.bias is None else deconv.bias.detach().repeat_interleave(s * s)
        conv = FastConv2d(wc.reshape(cout * s * s, cin, dh, dw), bias, (1, 1), pads, (1, 1), 1, channels_last,
                          origin=f"ConvTranspose2d(stride {s}, sub-pixel)")
        return cls(conv, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv.act, self.conv.use_mkldnn = self.act, self.use_mkldnn  # activation commutes with the shuffle
        y = F.pixel_shuffle(self.conv(x), self.scale)
        return y.contiguous(memory_format=CL) if self.conv.channels_last else y


class PhaseConvTranspose2d(_Fast):
    """A strided ConvTranspose2d as its s*s phase convolutions computed by ONE Conv2d
    (kernel ceil(k/s), s*s*Cout channels, no wasted taps but a one-pixel border), the
    phases interleaved into the output by a single strided copy.

    oneDNN's transposed convolution is slow for few output channels (deconv0 of
    fc6: 3 channels, ~70 GFLOP/s); the phase Conv2d has s*s times as many."""

    def __init__(self, conv: FastConv2d, scale: int, cout: int, shift: tuple[int, int], out_len: tuple[int, int]):
        super().__init__()
        self.conv, self.scale, self.cout, self.shift, self.out_len = conv, scale, cout, shift, out_len

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    @classmethod
    def from_deconv(cls, deconv: nn.ConvTranspose2d, channels_last: bool = True) -> PhaseConvTranspose2d | None:
        s = _plain_stride(deconv)
        if s is None:
            return None
        w = deconv.weight.detach()  # (Cin, Cout, kh, kw)
        cin, cout = w.shape[:2]
        t_n = -(-max(deconv.kernel_size) // s)
        kidx, pads, shifts, extra = [], [], [], []
        for k, p in zip(deconv.kernel_size, deconv.padding):
            if (k - 2 * p) % s or k - 2 * p < s:  # phases of unequal length
                return None
            c = [(r + p) // s for r in range(s)]
            sh = [ci - min(c) for ci in c]
            if any(sh[r] != r * sh[1] for r in range(s)) or sh[1] > 1:  # the interleave must be one strided view
                return None
            pad = t_n - 1 - min(c)
            if pad < 0 or 2 * pad - t_n + 1 < (k - 2 * p) // s - 1 + sh[-1]:
                return None
            # kidx[r][j]: kernel index that phase r applies at window position j (-1: none)
            kidx.append([[(r + p) % s + s * (t_n - 1 - j) if (r + p) % s + s * (t_n - 1 - j) < k else -1
                          for j in range(t_n)] for r in range(s)])
            pads.append(pad)
            shifts.append(sh[1])
            extra.append((k - 2 * p) // s - 1)
        wc = w.new_zeros(s, s, cout, cin, t_n, t_n)
        for rh in range(s):
            for rw in range(s):
                for jh, kh in enumerate(kidx[0][rh]):
                    for jw, kw in enumerate(kidx[1][rw]):
                        if kh >= 0 and kw >= 0:
                            wc[rh, rw, :, :, jh, jw] = w[:, :, kh, kw].t()
        bias = None if deconv.bias is None else deconv.bias.detach().repeat(s * s)
        conv = FastConv2d(wc.reshape(s * s * cout, cin, t_n, t_n), bias, (1, 1), pads, (1, 1), 1, channels_last,
                          origin=f"ConvTranspose2d(stride {s}, phases)")
        return cls(conv, s, cout, tuple(shifts), tuple(extra))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv.act, self.conv.use_mkldnn = self.act, self.use_mkldnn  # the activation commutes
        y = self.conv(x).permute(0, 2, 3, 1)  # (N, Hc, Wc, s*s*Cout), contiguous if channels_last
        n, _, wc, _ = y.shape
        s, cout = self.scale, self.cout
        (dh, dw), qh, qw = self.shift, x.shape[-2] + self.out_len[0], x.shape[-1] + self.out_len[1]
        # out[n, qh*s + rh, qw*s + rw, c] = y[n, qh + dh*rh, qw + dw*rw, (rh*s + rw)*cout + c],
        # in two copies (rows, then columns): one 6-d strided copy is twice as slow
        rows = torch.stack([y[:, dh * r:dh * r + qh, :, r * s * cout:(r + 1) * s * cout] for r in range(s)], 2)
        rows = rows.view(n, qh, s, wc, s, cout)
        out = torch.stack([rows[:, :, :, dw * r:dw * r + qw, r] for r in range(s)], 4)
        return out.view(n, qh * s, qw * s, cout).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- the rewrite

class Accelerated(nn.Module):
    """What `accelerate` returns: the rewritten network plus what was done to it.

    forward(x): x in any float dtype (e.g. fp32 codes) -> output in x's dtype."""

    def __init__(self, net: nn.Module, precision: str, dtype: torch.dtype, rewrites: list[str], traced: bool):
        super().__init__()
        self.net = net
        self.precision, self.dtype, self.rewrites, self.traced = precision, dtype, rewrites, traced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        y = self.net(x.to(self.dtype) if x.dtype != self.dtype else x)
        return y.to(in_dtype) if isinstance(y, torch.Tensor) and y.dtype != in_dtype else y


_ACT_FUNCS = {F.relu: "relu", torch.relu: "relu", F.leaky_relu: "leaky_relu"}


def _as_act(node: torch.fx.Node, modules: dict[str, nn.Module]) -> Act | None:
    if node.op == "call_module":
        m = modules.get(node.target)
        if type(m) is nn.LeakyReLU:
            return Act("leaky_relu", float(m.negative_slope))
        if type(m) is nn.ReLU:
            return Act("relu")
        return None
    if node.op == "call_function" and node.target in _ACT_FUNCS:
        if len(node.args) != 1 and _ACT_FUNCS[node.target] == "relu":
            return None
        if _ACT_FUNCS[node.target] == "leaky_relu":
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            return Act("leaky_relu", float(slope)) if isinstance(slope, (int, float)) else None
        return Act("relu")
    return None


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


# A strided ConvTranspose2d with at most this many output channels runs as phase
# convolutions (PhaseConvTranspose2d): measured 30 -> 22 ms for fc6's deconv0
# (3 channels), slower from 8 channels up.
PHASE_MAX_OUT_CHANNELS = 4


def accelerate(net: nn.Module, precision: str = "fp32", *, channels_last: bool = True,
               stride1_conv: bool = True, fuse: bool = True, subpixel: bool = False,
               phase_max_out_channels: int = PHASE_MAX_OUT_CHANNELS, mkldnn: bool = True) -> Accelerated:
    """An equivalent, faster module for inference, built from a deep copy of `net`.

    precision: "fp32" (the reference within ~1e-5 of the output's range) or "bf16"
    (weights and activations in bfloat16 where the device computes it natively;
    elsewhere a warning and fp32; fp32 in and out either way).  Check
    `.precision` on the result for what was used.

    The forward is traced with torch.fx, once, to find the activation after each
    layer and how each layer is called; like any fx trace this assumes its Python
    control flow does not depend on the input's values.  A net fx cannot trace
    gets the per-layer rewrites only (channels_last, oneDNN), no fusion, and
    keeps its transposed convolutions as such.

    The keyword switches exist for ablations (benchmarks/generators.py) and tests; the
    defaults are what measured fastest on CPU (docs/benchmarks.md).  Call it after
    the weights are loaded and `net` is on its device; the result is in eval mode,
    needs no grad, and does not follow later changes to `net`'s weights.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    params = list(net.parameters())
    device = params[0].device if params else torch.device("cpu")
    dtype = torch.float32
    if precision == "bf16":
        if bf16_supported(device):
            dtype = torch.bfloat16
        else:
            log.warning("bf16 asked for but %s has no native bfloat16; using fp32", device)
            precision = "fp32"

    model = copy.deepcopy(net).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    root: nn.Module = model
    graph = None
    try:  # the graph tells which activation follows which layer, and how each layer is called
        root = torch.fx.symbolic_trace(model)
        graph = root.graph
    except Exception as exc:  # fx raises many kinds for untraceable Python
        log.info("accelerate: %s is not fx-traceable (%s); rewriting layers without fusion",
                 type(net).__name__, exc)
        root = model

    # deconvolutions only ever called as layer(x), never layer(x, output_size): they may become
    # modules of another shape; the others (and all, when fx could not trace) keep the deconvolution
    plain: set[str] = set()
    if graph is not None:
        odd = {n.target for n in graph.nodes if n.op == "call_module" and (len(n.args) != 1 or n.kwargs)}
        plain = {n.target for n in graph.nodes if n.op == "call_module"} - odd

    rewrites: list[str] = []
    for name, mod in list(root.named_modules()):
        new: nn.Module | None = None
        if type(mod) is nn.ConvTranspose2d and name not in plain:
            if mod.padding_mode == "zeros":
                new = FastConvTranspose2d(mod, channels_last)
        elif type(mod) is nn.ConvTranspose2d:
            if subpixel:
                new = SubPixelConvTranspose2d.from_deconv(mod, channels_last)
            elif mod.out_channels <= phase_max_out_channels:
                new = PhaseConvTranspose2d.from_deconv(mod, channels_last)
            if new is None and stride1_conv:
                new = stride1_as_conv(mod, channels_last)
            if new is None and mod.padding_mode == "zeros":
                new = FastConvTranspose2d(mod, channels_last)
        elif type(mod) is nn.Conv2d and mod.padding_mode == "zeros" and not isinstance(mod.padding, str):
            new = FastConv2d.from_conv(mod, channels_last)
        elif type(mod) is nn.Linear:
            new = FastLinear(mod)
        if new is not None:
            new.use_mkldnn = mkldnn
            _set_module(root, name, new)
            rewrites.append(f"{name}: {type(mod).__name__} -> {type(new).__name__}"
                            + (f" [{new.origin}]" if isinstance(new, FastConv2d) and new.origin != "Conv2d" else "")
                            + (" [phases]" if isinstance(new, PhaseConvTranspose2d) else "")
                            + (" [sub-pixel]" if isinstance(new, SubPixelConvTranspose2d) else ""))
        elif type(mod) is nn.ConvTranspose2d:
            rewrites.append(f"{name}: ConvTranspose2d kept (padding_mode {mod.padding_mode})")

    if graph is not None and fuse:
        modules = dict(root.named_modules())
        calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        for node in list(graph.nodes):
            if node.op != "call_module" or not isinstance(modules.get(node.target), _Fast):
                continue
            layer = modules[node.target]
            if calls[node.target] != 1 or len(node.args) != 1 or node.kwargs or layer.act is not None:
                continue  # shared layer, or called with output_size etc.
            users = list(node.users)
            if len(users) != 1:
                continue
            act = _as_act(users[0], modules)
            if act is None or users[0].args[0] is not node:
                continue
            layer.act = act
            users[0].replace_all_uses_with(node)
            graph.erase_node(users[0])
            rewrites.append(f"{node.target}: fused {act.kind}")
        graph.eliminate_dead_code()
        root.recompile()

    if dtype != torch.float32:
        root.to(dtype)
        if channels_last:  # .to(dtype) keeps strides, but be sure
            for m in root.modules():
                if isinstance(m, (FastConv2d, FastConvTranspose2d)) and m.channels_last:
                    m.weight.data = m.weight.data.contiguous(memory_format=CL)
    out = Accelerated(root, precision, dtype, rewrites, traced=graph is not None)
    for attr in dir(type(net)):  # the class's plain constants: code_shape, output_size, tanh_output, ...
        value = getattr(type(net), attr, None)
        if (not attr.startswith("_") and not hasattr(nn.Module, attr) and not hasattr(out, attr)
                and isinstance(value, (bool, int, float, str, tuple))):
            setattr(out, attr, getattr(net, attr))
    return out.eval()
