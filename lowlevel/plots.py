"""Figures: learning curves from history.csv, and a confusion matrix.

    python -m lowlevel.plots RUN_DIR        # writes RUN_DIR/learning_curves.png

matplotlib is imported here only, never by the training step.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lowlevel import runs  # noqa: E402
from lowlevel.config import Parser  # noqa: E402


def learning_curves(run: str | Path) -> Path:
    """Loss and accuracy per epoch, train vs validation, from run/history.csv -> run/learning_curves.png."""
    run = Path(run)
    h = pd.read_csv(run / "history.csv")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
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
    fig.tight_layout()
    out = run / "learning_curves.png"
    _save(fig, out)
    return out


def confusion_matrix(matrix: np.ndarray, names: list[str], out: str | Path, title: str = "") -> Path:
    """matrix[i, j] = test images of class i predicted as j -> a PNG with row-normalized colours."""
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
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


def _save(fig, out: Path) -> None:
    """Write the figure as a PNG whole or not at all (a temporary file renamed over `out`), then close it;
    runs.WriteError names `out` if the disk is full."""
    try:
        runs.atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def parser() -> Parser:
    p = Parser(prog="python -m lowlevel.plots", description="Draw a run's learning curves from its history.csv.")
    p.add_argument("run", help="a run folder, e.g. checkpoints/first; writes RUN/learning_curves.png")
    return p


def main(argv: list[str] | None = None) -> int:
    run = Path(parser().parse_args(argv).run)
    if not (run / "history.csv").is_file():
        print(f"error: {run}: has no history.csv; give a run folder written by python -m lowlevel.train.",
              file=sys.stderr)
        return 2
    try:
        print(learning_curves(run))
    except runs.WriteError as e:
        print(f"error: {e}; free some space or fix the folder's permissions.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
