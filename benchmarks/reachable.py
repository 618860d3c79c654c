"""What each image space can express: the fraction of a known-optimum unit's optimum
that gradient ascent on the code reaches, with the unit itself as the gradient's
source (white-box; no optimizer could see this).  It separates "the space cannot
make the optimum" from "the optimizer did not find it in 3,000 presentations".

Per (space, unit): `restarts` N(0, 1) codes in one batch, Adam on the unit's drive
for `steps` steps (learning rate cosine-decayed to a tenth), each code projected
onto the ball of radius 8 sqrt(code size) after each step (the white-box bound of
`xdream bench optimizers`/`study`; --bound-factor changes the 8).  The best code met (by drive) of each restart
is then made into an image the way a session makes it (generate(): uint8) and
scored by the unit: the result is a lower bound on what the space can reach
(gradient ascent can stall; fourier's sigmoid saturates).  Same image size as the
validity suite's Goal budget: 64 px.

    python -m benchmarks.reachable                 # every space x every unit
    python -m benchmarks.reachable --spaces fourier --max-cycles 8
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

from benchmarks import validity
from simulators.insilico import project_to_ball


def rgb(gen, z: torch.Tensor) -> torch.Tensor:
    """(n, code) -> (n, 3, H, W) RGB on a 0-255 scale, differentiable: what each space's
    generate() renders before its fit to the stimulus size and its uint8 rounding."""
    if gen.name == "fourier":
        return gen.render(z)
    if gen.name == "dcgan-face":
        return (gen.net(z) + 1.0) * 127.5
    if gen.name.startswith("deepsim-"):
        return (gen.net(z) + gen._mean).flip(1)
    raise ValueError(f"no differentiable path for {gen.name}")


def fit(x: torch.Tensor, size: int) -> torch.Tensor:
    """fit_and_quantise's resize (server/generators/base.py), without the rounding; (n, H, W, 3)."""
    if tuple(x.shape[-2:]) != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 255).permute(0, 2, 3, 1)


def drive(unit, views: torch.Tensor) -> torch.Tensor:
    """The unit's raw drive (simulators/known_units.py, `raw`) of float views (n, H, W, 3) on a 0-255
    scale, in torch; tests/test_reachable.py checks it against `raw` on uint8 images."""
    h, w = views.shape[1:3]
    t = lambda a: torch.as_tensor(a, dtype=views.dtype)  # noqa: E731
    if unit.kind == "colour":
        wts = t(unit.weights(h, w))
        proj = views @ t(unit.u / 255.0)
        return torch.einsum("nhw,hw->n", proj, wts) / wts.sum()
    lum = views.mean(dim=3) / 255.0 - 0.5
    if unit.kind == "gabor-energy":
        a, b = (t(f) for f in unit.pair(h, w))
        return torch.einsum("nhw,hw->n", lum, a) ** 2 + torch.einsum("nhw,hw->n", lum, b) ** 2
    if unit.kind == "blob":
        return torch.einsum("nhw,hw->n", lum, t(unit.weights(h, w)))
    if unit.kind == "convnet-capped":
        return unit._activation(views.float()).to(views.dtype)
    raise ValueError(f"no differentiable drive for unit kind {unit.kind}")


def reachable(gen, unit, size: int, *, restarts: int = 4, steps: int = 300, lr: float = 0.1,
              seed: int = 0, bound_factor: float = 8.0) -> dict:
    """Gradient ascent on the code; the best fraction of the optimum its images reach (uint8, as shown)."""
    for p in getattr(gen, "net", nn.Module()).parameters():
        p.requires_grad_(False)          # the code is what moves
    dim = int(np.prod(gen.code_shape))
    bound = bound_factor * math.sqrt(dim)
    torch_gen = torch.Generator().manual_seed(seed)
    z = project_to_ball(torch.randn(restarts, dim, generator=torch_gen), bound).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr / 10)
    best = torch.full((restarts,), -math.inf)
    best_z = z.detach().clone()
    for _ in range(steps + 1):
        d = drive(unit, fit(rgb(gen, z), size))
        with torch.no_grad():
            better = d.detach() > best
            best = torch.where(better, d.detach(), best)
            best_z[better] = z.detach()[better]
        opt.zero_grad(set_to_none=True)
        (-d.sum()).backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            z.copy_(project_to_ball(z, bound))
    fractions = unit.fraction(gen.generate(best_z.numpy()))
    i = int(np.argmax(fractions))
    return {"fraction": float(fractions[i]), "per_restart": fractions.tolist(),
            "code_norm": float(best_z[i].norm()), "bound": bound}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", default=",".join(validity.SPACES))
    ap.add_argument("--units", default=",".join(validity.UNITS))
    ap.add_argument("--max-cycles", type=int, help="fourier's band limit (generator.max_cycles)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bound-factor", type=float, default=8.0,
                    help="code-norm bound in units of sqrt(code size) (default 8; sphere-es may go to 10)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    units = args.units.split(",")
    rows = ["| space | " + " | ".join(units) + " |", "|---|" + "---|" * len(units)]
    for space in args.spaces.split(","):
        params = {"max_cycles": args.max_cycles} if space == "fourier" and args.max_cycles else {}
        gen = validity._generator({"space": space, "weights": None, "image_size": args.size,
                                   "generator_params": params})
        cells = []
        for name in units:
            unit = validity.known_unit(name, validity.UNITS[name])
            unit.optimum(args.size)
            t0 = time.perf_counter()
            got = reachable(gen, unit, args.size, restarts=args.restarts, steps=args.steps,
                            bound_factor=args.bound_factor)
            cells.append(f"{got['fraction']:.2f}")
            print(f"  {space} {name}: {got['fraction']:.3f} (restarts {', '.join(f'{f:.2f}' for f in got['per_restart'])}"
                  f"; code norm {got['code_norm']:.0f} of {got['bound']:.0f}; {time.perf_counter() - t0:.0f} s)",
                  flush=True)
        label = space + (f" ({args.max_cycles} cycles)" if params else "")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
