"""The figures of `xdream report` (matplotlib, drawn off screen): trajectories, reference
drift, and a montage of best images.  Each function writes one PNG and returns its path.

Legends sit outside the axes (below them), so that no curve is ever hidden behind one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator


def _plt():  # the Agg backend: no display needed
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, cols_max: int = 2) -> tuple[int, int]:
    cols = min(cols_max, max(1, n))
    return math.ceil(max(1, n) / cols), cols


def trajectories(series: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """series: thread -> {generation, mean, max, sd, ref_mean} arrays: per thread the generated
    images' mean (± one standard deviation) and max, and the reference images' mean."""
    plt = _plt()
    rows, cols = _grid(len(series))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.0 * rows + 0.6), squeeze=False, sharex=True)
    for ax, (thread, s) in zip(axes.flat, series.items()):
        x = s["generation"]
        ax.fill_between(x, s["mean"] - s["sd"], s["mean"] + s["sd"], color="C0", alpha=0.18, linewidth=0,
                        label="generated: mean ± s.d.")
        ax.plot(x, s["mean"], color="C0", label="generated: mean")
        ax.plot(x, s["max"], color="C1", label="generated: max")
        ax.plot(x, s["ref_mean"], color="C2", linestyle="--", label="references: mean")
        ax.set_title(f"thread {thread}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_ylabel("response (spikes)")
    for ax in axes.flat[len(series):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("generation")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2 * cols, fontsize=8, frameon=False)
    legend_in = 0.45 if cols == 1 else 0.25          # inches the legend takes below the axes
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def drift(responses: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]], targets: dict[int, list[str]],
          path: Path) -> Path:
    """responses: channel -> reference image -> (generations, response): one panel per channel;
    targets: channel -> the threads it is the target of."""
    plt = _plt()
    rows, cols = _grid(len(responses))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.0 * rows + 0.8), squeeze=False, sharex=True)
    names: list[str] = []
    for ax, (channel, refs) in zip(axes.flat, responses.items()):
        for name, (x, y) in refs.items():
            if name not in names:
                names.append(name)
            ax.plot(x, y, marker=".", color=f"C{names.index(name) % 10}", label=name)
        threads = ", ".join(targets.get(channel, []))
        ax.set_title(f"channel {channel}" + (f" (target of thread {threads})" if threads else ""), fontsize=10)
        ax.set_ylabel("response (spikes)")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(responses):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("generation")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    ncol = min(4 * cols, max(1, len(labels)))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    legend_in = 0.22 * math.ceil(len(labels) / ncol) + 0.1
    fig.set_figheight(fig.get_figheight() + legend_in)
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def montage(tiles: list[tuple[str, np.ndarray | None]], title: str, path: Path, cols_max: int = 8) -> Path:
    """tiles: (caption, RGB image or None when it could not be had) in order."""
    plt = _plt()
    rows, cols = _grid(len(tiles), cols_max)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.85 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (caption, image) in zip(axes.flat, tiles):
        if image is None:
            ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=8, color="0.4")
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
