"""`python -m lowlevel.evaluate`: restore a checkpoint and measure it on its data set's test images.

    python -m lowlevel.evaluate --checkpoint checkpoints/RUN           # the run's latest checkpoint
    python -m lowlevel.evaluate --checkpoint checkpoints/RUN --best    # its best by validation accuracy
    python -m lowlevel.evaluate --checkpoint checkpoints/RUN/ckpt-390  # one checkpoint

The model is rebuilt from the run's config.json, so no training flag needs to
be repeated.  Prints test loss and accuracy, per-class accuracy and the confusion
matrix, and writes them beside the checkpoint as CSV and PNG.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lowlevel import runs
from lowlevel.config import Parser


def parser() -> Parser:
    p = Parser(prog="python -m lowlevel.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run folder, or one checkpoint prefix (.../ckpt-N)")
    p.add_argument("--best", action="store_true", help="with a run folder: its best checkpoint, not the latest")
    p.add_argument("--data", default="", help="cifar-10-batches-py or its parent (default: the run's --data)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return runs.as_command("python -m lowlevel.evaluate", lambda: evaluate(args.checkpoint, args.best, args.data))


def evaluate(checkpoint: str, best: bool = False, data_path: str = "") -> int:
    from lowlevel import pipeline, plots
    from lowlevel.train import evaluator

    loaded = runs.load(checkpoint, best, data_path)
    if loaded.note:
        print(loaded.note)
    data, prefix = loaded.data, loaded.prefix
    test = pipeline.Batches(data.test_images, data.test_labels, loaded.normalization, 500)
    loss, accuracy, preds = evaluator(loaded.model, test)()
    k = len(data.label_names)
    matrix = np.zeros((k, k), np.int64)
    np.add.at(matrix, (data.test_labels, preds), 1)
    totals = matrix.sum(1)
    per_class = np.divide(matrix.diagonal(), totals, out=np.full(k, np.nan), where=totals > 0)  # nan: no test image

    print(f"{prefix}: test loss {loss:.4f}, test accuracy {100 * accuracy:.2f}% ({len(preds)} images)")
    for name, acc in zip(data.label_names, per_class):
        print(f"  {name:<12s} {100 * acc:6.2f}%")
    print("confusion matrix (rows: true class, columns: predicted):")
    print("            " + " ".join(f"{n[:5]:>5s}" for n in data.label_names))
    for name, row in zip(data.label_names, matrix):
        print(f"  {name[:9]:<9s} " + " ".join(f"{v:5d}" for v in row))

    stem = prefix.parent / f"{prefix.name}-test"
    header = ",".join(["true\\predicted", *data.label_names])
    rows = [",".join([n, *map(str, r)]) for n, r in zip(data.label_names, matrix)]
    runs.write_text(Path(f"{stem}-confusion.csv"), "\n".join([header, *rows]) + "\n")
    per_class_rows = [f"{n},{a:.6f}" for n, a in zip(data.label_names, per_class)]
    runs.write_text(Path(f"{stem}-per-class.csv"), "\n".join(["class,accuracy", *per_class_rows,
                                                              f"all,{accuracy:.6f}"]) + "\n")
    plots.confusion_matrix(matrix, list(data.label_names), f"{stem}-confusion.png",
                           title=f"{prefix.name}: test accuracy {100 * accuracy:.2f}%")
    print(f"wrote {stem}-confusion.csv, {stem}-per-class.csv and {stem}-confusion.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
