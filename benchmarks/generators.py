"""`xdream bench generators`: DeePSiM fc6 images per second against the compute bound.

One run measures, on the same machine state:
  * the matmul rate (2048^3, best of several): fp32 through torch.mm, fp32
    through oneDNN (a 1x1 convolution in channels_last: on CPUs where MKL's sgemm
    does not use all of the vector units, e.g. AMD Zen, oneDNN's rate is the
    real ceiling), and bf16 where the device computes it natively;
  * fc6 at batch --batch with random (LSUV-scaled) weights: the eager fp32
    reference, the accelerated variants of server.generators.fast (the
    ablation steps one by one) and bf16; each variant is timed --repeats times
    after a warm-up, round-robin (every round runs every variant once, in a
    rotating order), so that load from other processes spreads over all of
    them alike;
  * the FLOPs of the network, counted from its layer shapes.

The bound of a variant is FLOPs / (torch.mm rate of its precision); its ratio is
time / bound.  The headline ("target ratio") is accelerated-fp32 time over the
fp32 bound.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from server.generators.base import pick_device
from server.generators.deepsim import DeePSiMFc6, random_init
from server.generators.fast import accelerate, bf16_supported, tune_cpu_allocator

MM_N = 2048


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    except OSError:
        pass
    return []


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _times(fn: Callable[[], object], device: torch.device, n: int) -> list[float]:
    out = []
    for _ in range(n):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def matmul_kernels(device: torch.device) -> dict[str, Callable[[], object]]:
    """2048^3 matmuls: fp32 torch.mm, fp32 through oneDNN (CPU), bf16 torch.mm (where native)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(MM_N, MM_N, generator=gen).to(device)
    b = torch.randn(MM_N, MM_N, generator=gen).to(device)
    kernels: dict[str, Callable[[], object]] = {"fp32": lambda: torch.mm(a, b)}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        # the same GEMM as a 1x1 convolution: (2048 pixels x 2048 in) @ (2048 in x 2048 out)
        x = a.view(1, MM_N, MM_N, 1).permute(0, 2, 1, 3).contiguous(memory_format=torch.channels_last)
        w = b.t().reshape(MM_N, MM_N, 1, 1).contiguous(memory_format=torch.channels_last)
        kernels["fp32_onednn"] = lambda: F.conv2d(x, w)
    if bf16_supported(device):
        ab, bb = a.bfloat16(), b.bfloat16()
        kernels["bf16"] = lambda: torch.mm(ab, bb)
    return kernels


def count_flops(net: nn.Module, code_shape: tuple[int, ...]) -> tuple[int, list[dict]]:
    """FLOPs of one image through `net` (2 per multiply-add of every Linear, Conv2d and
    ConvTranspose2d, dense: taps that fall on padding count; biases and activations,
    about 0.1% more, do not), with a per-layer list."""
    layers: list[dict] = []

    def hook(mod, inp, out):
        x = inp[0]
        if isinstance(mod, nn.Linear):
            macs = x.numel() // mod.in_features * mod.in_features * mod.out_features
        elif isinstance(mod, nn.ConvTranspose2d):  # every input pixel meets the whole kernel
            n, cin, h, w = x.shape
            macs = n * h * w * cin * (mod.out_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Conv2d):
            n, cout, h, w = out.shape
            macs = n * h * w * cout * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            return
        layers.append({"layer": names[mod], "type": type(mod).__name__, "in": list(x.shape[1:]),
                       "out": list(out.shape[1:]), "flops": 2 * macs})

    names = {m: n for n, m in net.named_modules()}
    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    try:
        p = next(net.parameters())
        with torch.inference_mode():
            net(torch.zeros(1, *code_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    return sum(layer["flops"] for layer in layers), layers


Variant = tuple[str, str, str, Callable]  # (name, precision, what it adds, module or callable)


def _variants(net: nn.Module, device: torch.device, bf16: bool) -> list[Variant]:
    """The reference, then the rewrites of server.generators.fast added one at a time."""
    out: list[Variant] = [("eager", "fp32", "reference: the module as written (NCHW)", net)]
    if bf16:
        def autocast(x, net=net):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return net(x).float()
        out.append(("eager-autocast", "bf16", "torch.autocast bf16 around the reference", autocast))
    plain = dict(mkldnn=False, phase_max_out_channels=0)
    out += [
        ("channels_last", "fp32", "NHWC activations and weights, layers unchanged",
         accelerate(net, "fp32", stride1_conv=False, fuse=False, **plain)),
        ("+stride1-conv", "fp32", "+ stride-1 ConvTranspose2d as Conv2d",
         accelerate(net, "fp32", fuse=False, **plain)),
        ("+inplace-act", "fp32", "+ activations in place (fx); plain torch ops: the CUDA path",
         accelerate(net, "fp32", **plain)),
    ]
    if device.type == "cpu":  # the oneDNN steps mean nothing elsewhere
        out += [
            ("+onednn-fused", "fp32", "+ bias+LeakyReLU as oneDNN post-ops, Linear through oneDNN",
             accelerate(net, "fp32", phase_max_out_channels=0)),
            ("fast", "fp32", "+ deconv0 (3 channels) as one phase Conv2d: accelerate(net) as shipped",
             accelerate(net, "fp32")),
            ("fast+subpixel", "fp32", "fast, every stride-2 deconv as sub-pixel Conv2d + pixel_shuffle",
             accelerate(net, "fp32", subpixel=True)),
        ]
    else:
        out.append(("fast", "fp32", "accelerate(net) as shipped", accelerate(net, "fp32")))
    if bf16:
        out.append(("fast-bf16", "bf16", "fast, bf16 weights and activations (fp32 in and out)",
                    accelerate(net, "bf16")))
    return out


def _rounds(variants: list[Variant], codes: torch.Tensor, dev: torch.device, repeats: int,
            kernels: dict[str, Callable], mm_times: dict[str, list[float]], ref: torch.Tensor,
            results: dict[str, dict], outs: dict[str, torch.Tensor]) -> None:
    for name, prec, what, fn in variants:  # warm-up (and the equivalence figures)
        y = fn(codes)
        fn(codes)
        outs[name] = y
        diff = (y.float() - ref).abs()
        results[name] = {"precision": prec, "what": what, "max_abs_diff": float(diff.max()),
                         "mean_abs_diff": float(diff.mean()), "times_s": []}
    for r in range(repeats):  # round-robin, in a rotating order
        k = r % len(variants)
        for name, _, _, fn in variants[k:] + variants[:k]:
            results[name]["times_s"] += _times(lambda: fn(codes), dev, 1)
        for name, fn in kernels.items():  # the bound, under the same load as the network
            mm_times[name] += _times(fn, dev, 2)


def bench_generators(batch: int = 40, repeats: int = 5, device: str | None = None, seed: int = 0,
                     allocator: bool = True) -> dict:
    """All the figures of `xdream bench generators` as a dict (see the module doc).

    allocator: afterwards, call fast.tune_cpu_allocator() and time eager, fast and
    fast-bf16 again (suffix "+malloc"); CPU only, and it changes this process."""
    dev = pick_device(device or "auto")
    bf16 = bf16_supported(dev)
    t_start = time.perf_counter()
    kernels = matmul_kernels(dev)
    mm_times: dict[str, list[float]] = {}
    for name, fn in kernels.items():  # warm-up, then a few before the network's rounds
        fn()
        mm_times[name] = _times(fn, dev, 3)

    net = DeePSiMFc6()
    random_init(net, seed)
    net.eval().to(dev)
    flops, layers = count_flops(net, net.code_shape)
    gen = torch.Generator().manual_seed(seed + 1)
    codes = torch.randn(batch, *net.code_shape, generator=gen).to(dev)

    variants = _variants(net, dev, bf16)
    results: dict[str, dict] = {}
    outs: dict[str, torch.Tensor] = {}
    tuned = False
    mm_tuned: dict[str, list[float]] = {}  # the bound of the "+malloc" variants, sampled between them
    with torch.inference_mode():
        ref = net(codes).float()
        _rounds(variants, codes, dev, repeats, kernels, mm_times, ref, results, outs)
        # what the server does after the network: + mean, BGR -> RGB, uint8 on the host
        mean = torch.tensor((104.0, 117.0, 123.0), device=dev).view(1, 3, 1, 1)

        def quantise(y):
            return ((y + mean).flip(1).clamp(0, 255).round().to(torch.uint8)
                    .permute(0, 2, 3, 1).contiguous().cpu().numpy())
        quant = {}
        for name in ("eager", "fast"):
            y = outs[name]
            quant[name] = min(_times(lambda: quantise(y), dev, max(3, repeats)))
        outs.clear()
        if allocator and dev.type == "cpu":
            tuned = tune_cpu_allocator()
            if tuned:
                again = [(name + "+malloc", prec, "the same, after fast.tune_cpu_allocator()", fn)
                         for name, prec, _, fn in variants if name in ("eager", "fast", "fast-bf16")]
                for name, fn in kernels.items():
                    mm_tuned[name] = _times(fn, dev, 2)
                _rounds(again, codes, dev, repeats, kernels, mm_tuned, ref, results, outs)
                for name, *_ in again:
                    results[name]["phase"] = "tuned allocator"
                for name in ("eager", "fast"):
                    y = outs[name + "+malloc"]
                    quant[name + "+malloc"] = min(_times(lambda: quantise(y), dev, max(3, repeats)))

    total = flops * batch

    def rates_of(pool):
        return ({name: 2.0 * MM_N ** 3 / min(ts) / 1e9 for name, ts in pool.items()},
                {name: 2.0 * MM_N ** 3 / statistics.median(ts) / 1e9 for name, ts in pool.items()})

    rates, rates_median = rates_of(mm_times)
    bound = {p: total / (rates[p] * 1e9) for p in ("fp32", "bf16") if p in rates}
    bound_median = {p: total / (rates_median[p] * 1e9) for p in bound}
    eager_best, eager_med = min(results["eager"]["times_s"]), statistics.median(results["eager"]["times_s"])
    for r in results.values():
        # each variant against the matmul rate sampled in its own rounds (same load)
        r_best, r_med = rates_of(mm_tuned) if r.get("phase") else (rates, rates_median)
        ts = r["times_s"]
        best, med = min(ts), statistics.median(ts)
        b_best, b_med = total / (r_best[r["precision"]] * 1e9), total / (r_med[r["precision"]] * 1e9)
        r.update(best_s=best, median_s=med, images_per_s=batch / best, images_per_s_median=batch / med,
                 gflops=total / best / 1e9, gflops_median=total / med / 1e9, bound_s=b_best,
                 ratio_to_bound=best / b_best, ratio_to_bound_median=med / b_med,
                 ratio_to_fp32_bound=best / (total / (r_best["fp32"] * 1e9)),
                 speedup_vs_eager=eager_best / best, speedup_vs_eager_median=eager_med / med)
        if "fp32_onednn" in r_best:
            r["ratio_to_fp32_onednn_bound"] = best / (total / (r_best["fp32_onednn"] * 1e9))

    fast = results["fast"]
    out = {
        "what": "generators",
        "generator": "deepsim-fc6 (random LSUV-scaled weights)",
        "batch": batch,
        "repeats": repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "device": str(dev) if dev.type != "cuda" else f"cuda ({torch.cuda.get_device_name(dev)})",
        "bf16_native": bf16,
        "allocator_tuned": tuned,
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "matmul_gflops": rates,
        "matmul_gflops_median": rates_median,
        "matmul_gflops_tuned_allocator": rates_of(mm_tuned)[0] if mm_tuned else None,
        "flops_per_image": flops,
        "flops_per_generation": total,
        "layers": layers,
        "bound_s": bound,
        "bound_s_median": bound_median,
        "target_ratio": fast["ratio_to_bound"],
        "target_ratio_median": fast["ratio_to_bound_median"],
        "quantise_s": quant,
        "variants": results,
    }
    if "fast+malloc" in results:
        out["target_ratio_tuned_allocator"] = results["fast+malloc"]["ratio_to_bound"]
        out["target_ratio_tuned_allocator_median"] = results["fast+malloc"]["ratio_to_bound_median"]
    out["wall_s"] = time.perf_counter() - t_start
    return out


def format_table(res: dict) -> str:
    rates = res["matmul_gflops"]
    lines = [
        f"xdream bench generators: {res['generator']}, batch {res['batch']}, {res['repeats']} repeats "
        f"(round-robin after warm-up)",
        f"torch {res['torch']}, {res['threads']} threads, device {res['device']}, CPU {res['cpu']}",
        f"  bf16 native: {'yes' if res['bf16_native'] else 'no'}; flags: {' '.join(res['cpu_flags']) or '-'}; "
        f"load average at the end: {', '.join(f'{x:.2f}' for x in res['load_avg'] or [])}",
        "matmul 2048^3 (best / median, sampled in every round): "
        + ", ".join(f"{k} {v:.0f} / {res['matmul_gflops_median'][k]:.0f} GFLOP/s" for k, v in rates.items()),
        f"FLOPs: {res['flops_per_image'] / 1e9:.4f} GFLOP/image ({res['flops_per_image']:,}; 2 per multiply-add, "
        f"dense), {res['flops_per_generation'] / 1e9:.2f} GFLOP/generation",
        "bound (FLOPs / torch.mm rate of the precision): "
        + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in res["bound_s"].items()),
        "",
        f"{'variant':<18}{'prec':<6}{'best s':>8}{'median s':>10}{'img/s':>8}{'GFLOP/s':>9}"
        f"{'x bound':>9}{'(median)':>10}{'x eager':>9}{'max|diff|':>11}",
    ]
    for name, r in res["variants"].items():
        lines.append(f"{name:<18}{r['precision']:<6}{r['best_s']:>8.3f}{r['median_s']:>10.3f}"
                     f"{r['images_per_s']:>8.1f}{r['gflops']:>9.0f}{r['ratio_to_bound']:>9.2f}"
                     f"{r['ratio_to_bound_median']:>10.2f}{r['speedup_vs_eager']:>9.2f}{r['max_abs_diff']:>11.2e}")
    lines += ["", "  (x bound: time / bound of the variant's precision, with the matmul rate sampled in the"
                  " same rounds; max|diff|: against the eager fp32 output, 0-255 scale)"]
    for name, r in res["variants"].items():
        lines.append(f"  {name}: {r['what']}")
    fast = res["variants"]["fast"]
    lines += ["",
              f"target ratio (accelerated fp32 time / fp32 bound): {res['target_ratio']:.2f} best, "
              f"{res['target_ratio_median']:.2f} median"]
    if "ratio_to_fp32_onednn_bound" in fast:
        lines.append(f"  against the oneDNN fp32 rate instead: {fast['ratio_to_fp32_onednn_bound']:.2f} (best)")
    if "target_ratio_tuned_allocator" in res:
        tuned = res["variants"]["fast+malloc"]
        lines.append(f"  with fast.tune_cpu_allocator(): {res['target_ratio_tuned_allocator']:.2f} best, "
                     f"{res['target_ratio_tuned_allocator_median']:.2f} median"
                     + (f"; against the oneDNN fp32 rate: {tuned['ratio_to_fp32_onednn_bound']:.2f}"
                        if "ratio_to_fp32_onednn_bound" in tuned else ""))
    if "fast-bf16" in res["variants"]:
        for name in ("fast-bf16", "fast-bf16+malloc"):
            if name in res["variants"]:
                b = res["variants"][name]
                lines.append(f"{name}: {b['ratio_to_bound']:.2f} x the bf16 bound ({b['ratio_to_bound_median']:.2f} "
                             f"median), {b['ratio_to_fp32_bound']:.2f} x the fp32 bound")
    q = res["quantise_s"]
    lines.append(f"+mean, RGB, uint8 to host after the network: {q['eager'] * 1e3:.1f} ms (NCHW output), "
                 f"{q['fast'] * 1e3:.1f} ms (channels_last output)"
                 + (f"; after tune_cpu_allocator {q['eager+malloc'] * 1e3:.1f} / {q['fast+malloc'] * 1e3:.1f} ms"
                    if "fast+malloc" in q else ""))
    lines.append(f"wall time {res['wall_s']:.1f} s")
    return "\n".join(lines)


def cli_bench(args) -> int:
    if args.what != "generators":
        print(f"unknown benchmark {args.what!r}", file=sys.stderr)
        return 2
    if args.batch < 1 or args.repeats < 1:
        print("--batch and --repeats must be at least 1", file=sys.stderr)
        return 2
    res = bench_generators(batch=args.batch, repeats=args.repeats)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(format_table(res))
    return 0
