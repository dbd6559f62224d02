"""Figures: learning curves from history.csv, a confusion matrix, and what `inspect` finds inside a run.

Each function writes one PNG, whole or not at all (lowlevel.files).  matplotlib is imported by this
module only, and never by the training step.  The figures are `matplotlib.figure.Figure`s drawn
straight to PNG, without pyplot, so lowlevel leaves the process's backend alone (a notebook keeps
its inline plots).  `python -m lowlevel.plots RUN` redraws a run's curves.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lowlevel import errors, files


def learning_curves(run: str | Path) -> Path:
    """Loss and accuracy per epoch, train vs validation, from run/history.csv -> run/learning_curves.png."""
    from lowlevel import history

    run = Path(run)
    if not (run / "history.csv").is_file():
        raise errors.RunError(f"{run}: has no history.csv; give a run folder written by python -m lowlevel.train.")
    try:
        h = pd.DataFrame(history.read(run / "history.csv"), columns=history.FIELDS)  # checked row by row
    except history.DamagedHistory as e:
        raise errors.RunError(f"{e}; python -m lowlevel.train --resume sets a damaged history.csv aside and keeps "
                              f"its good rows.") from None
    fig, (ax_loss, ax_acc) = _subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(h.epoch, h.train_loss, label="train (with label smoothing)")
    ax_acc.plot(h.epoch, 100 * h.train_accuracy, label="train (augmented)")
    if h.val_accuracy.notna().any():  # a run with --val-size 0 has no validation curve
        ax_loss.plot(h.epoch, h.val_loss, label="validation")
        ax_acc.plot(h.epoch, 100 * h.val_accuracy, label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(run.name)
    # fixed margins: drawn at every epoch's end, where tight_layout's extra drawing pass takes 1.6x the time
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.12, top=0.86, wspace=0.18)
    out = run / "learning_curves.png"
    _save(fig, out)
    return out


def confusion_matrix(matrix: np.ndarray, names: list[str], out: str | Path, title: str = "") -> Path:
    """matrix[i, j] = test images of class i predicted as j -> a PNG with row-normalized colours."""
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = _subplots(figsize=(7, 6))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    _save(fig, Path(out))
    return Path(out)


# ---------------------------------------------------------------- inside a run (python -m lowlevel.inspect)

def _tile(w: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] for display, symmetric about 0 (0 is mid-grey)."""
    m = np.abs(w).max()
    return 0.5 + 0.5 * w / m if m > 0 else np.full_like(w, 0.5)


def stem_filters(kernel: np.ndarray, out: Path, name: str = "stem") -> Path:
    """The first convolution's [k, k, C_in, C] kernel as C tiles of k x k pixels, in colour for RGB
    input (C_in = 3), grey for one channel (each filter scaled on its own)."""
    k, c_in, c = kernel.shape[0], kernel.shape[2], kernel.shape[-1]
    cols = 8
    rows = -(-c // cols)
    fig, axes = _subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9 + 0.4))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i < c:
            tile = _tile(kernel[..., i])
            ax.imshow(tile if c_in == 3 else tile[..., 0], cmap=None if c_in == 3 else "gray", vmin=0, vmax=1,
                      interpolation="nearest")
    fig.suptitle(f"{name}: {c} filters {k}x{k}x{c_in} ({'RGB' if c_in == 3 else 'channel 0'}; grey = 0)")
    _save(fig, Path(out))
    return Path(out)


def depthwise_filters(kernel: np.ndarray, out: Path, name: str) -> Path:
    """A depthwise [k, k, C, 1] kernel as C k x k tiles on one colour scale."""
    w = kernel[..., 0]  # [k, k, C]
    c = w.shape[-1]
    cols = 16
    rows = -(-c // cols)
    m = np.abs(w).max()
    fig, axes = _subplots(rows, cols, figsize=(cols * 0.6, rows * 0.6 + 0.5))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i < c:
            ax.imshow(w[..., i], cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
    fig.suptitle(f"{name}: {c} filters {w.shape[0]}x{w.shape[1]}, one per channel (red > 0 > blue)")
    _save(fig, Path(out))
    return Path(out)


def feature_maps(maps: dict, image: np.ndarray, out: Path, title: str, channels: int = 6) -> Path:
    """One row per layer: the image, then its `channels` most active channels of that layer's output
    (viridis, one scale per layer), each map enlarged to the image's size, drawn as one mosaic image."""
    from matplotlib import colormaps

    def enlarged(m):  # [H, W, ...] -> [size, size, ...], nearest neighbour
        return m[np.arange(size) * m.shape[0] // size][:, np.arange(size) * m.shape[1] // size]

    names, size, gap = list(maps), min(image.shape[0], 96), 2  # a cell is drawn about 84 pixels wide
    cell = size + gap
    mosaic = np.ones((len(names) * cell, (channels + 1) * cell, 3), np.float32)  # white between cells
    rgb = enlarged(image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, -1)).astype(np.float32) / 255
    viridis = colormaps["viridis"]
    for r, name in enumerate(names):
        m = maps[name]  # [H, W, C]
        lo, hi = min(0, m.min()), max(m.max(), 1e-6)
        cells = [rgb] + [viridis((enlarged(m[..., c]) - lo) / (hi - lo))[..., :3]
                         for c in np.argsort(-m.mean((0, 1)))[:channels]]
        for k, picture in enumerate(cells):
            mosaic[r * cell:r * cell + size, k * cell:k * cell + size] = picture
    width = (channels + 1) * 1.1  # inches; 76% of it for the mosaic, so a cell is 0.836 in square
    height = len(names) * 0.76 * 1.1 + 0.7
    fig, ax = _subplots(figsize=(width, height))
    ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for r, name in enumerate(names):
        ax.text(-2, r * cell + size / 2, name, ha="right", va="center", fontsize=7)
    fig.suptitle(f"{title}: the {channels} most active channels of every layer (one scale per layer)")
    fig.subplots_adjust(left=0.22, right=0.98, top=1 - 0.6 / height, bottom=0.1 / height)
    _save(fig, Path(out))
    return Path(out)


def histograms(counts: dict, bins: np.ndarray, out: Path, title: str) -> Path:
    """One row per layer, one column per bin of [0, 6]: the colour is log10 of the share of that layer's
    outputs in the bin, so dead (all at 0) and saturated (at 6) layers stand out down the depth."""
    names = list(counts)
    shares = np.array([c / max(c.sum(), 1) for c in counts.values()])  # [layers, bins]
    fig, ax = _subplots(figsize=(9, 1.5 + 0.2 * len(names)))
    image = ax.imshow(np.log10(np.maximum(shares, 1e-6)), aspect="auto", cmap="viridis", vmin=-6, vmax=0,
                      extent=(bins[0], bins[-1], len(names) - 0.5, -0.5), interpolation="nearest")
    ax.set_yticks(np.arange(len(names)), names, fontsize=7)
    ax.set(xlabel="layer output, clipped to [0, 6]", title=f"{title}: where each layer's outputs fall")
    fig.colorbar(image, ax=ax, label="log10 share of outputs", fraction=0.04)
    fig.tight_layout()
    _save(fig, Path(out))
    return Path(out)


def dead_and_ranges(table, out: Path, title: str) -> Path:
    """Across depth: dead channels per layer, and the folded weight-range ratio (log scale)."""
    fig, (top, bottom) = _subplots(2, 1, figsize=(11, 6), sharex=True)
    x = np.arange(len(table))
    colours = ["tab:orange" if "depthwise" in n else "tab:blue" for n in table.layer]
    top.bar(x, table.dead_channels, color=colours)
    top.set(ylabel="dead channels", title=f"{title} (orange: depthwise)")
    bottom.bar(x, table.weight_range_ratio, color=colours)
    bottom.set(yscale="log", ylabel="max / median channel range\n(batch norm folded)")
    bottom.set_xticks(x, table.layer, rotation=90, fontsize=7)
    fig.tight_layout()
    _save(fig, Path(out))
    return Path(out)


def batch_norms(moving: dict, out: Path, title: str) -> Path:
    """Box plots per layer of the batch norms' moving means and moving variances."""
    names = list(moving)
    fig, (top, bottom) = _subplots(2, 1, figsize=(11, 6), sharex=True)
    top.boxplot([moving[n][0] for n in names], showfliers=False)
    top.set(ylabel="moving mean", title=title)
    bottom.boxplot([moving[n][1] for n in names], showfliers=False)
    bottom.set(yscale="log", ylabel="moving variance")
    bottom.set_xticks(np.arange(1, len(names) + 1), names, rotation=90, fontsize=7)
    fig.tight_layout()
    _save(fig, Path(out))
    return Path(out)


def compare(table, out: Path, title: str) -> Path:
    """Test accuracy against multiply-adds (log axis), one point per network, marker area by parameters."""
    fig, ax = _subplots(figsize=(7, 4.5))
    area = 2000 * table.parameters / table.parameters.max()
    ax.scatter(table.mult_adds, 100 * table.test_accuracy, s=area, alpha=0.5)
    for r in table.itertuples():
        ax.annotate(f"{r.name}\n{r.parameters / 1e6:.2f}M params", (r.mult_adds, 100 * r.test_accuracy),
                    fontsize=8, ha="center", va="center")
    ax.set_xscale("log")
    ax.set_xlabel("multiply-adds per image")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"separable vs standard: {title} (marker area: parameters)")
    ax.margins(0.2)
    _save(fig, Path(out))
    return Path(out)


def _subplots(*grid, figsize, **options):
    """(figure, axes) as pyplot.subplots makes them, on a Figure of its own (no pyplot state)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **options)


def _save(fig, out: Path) -> None:
    """Write the figure as a PNG whole or not at all (a temporary file renamed over `out`);
    errors.WriteError names `out` if the disk is full."""
    files.atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
