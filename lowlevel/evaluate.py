"""`python -m lowlevel.evaluate`: restore a checkpoint and measure it on the CIFAR-10 test set.

    python -m lowlevel.evaluate --checkpoint checkpoints/RUN           # the run's latest checkpoint
    python -m lowlevel.evaluate --checkpoint checkpoints/RUN --best    # its best by validation accuracy
    python -m lowlevel.evaluate --checkpoint checkpoints/RUN/ckpt-390  # one checkpoint

The model is rebuilt from the run's config.json, so no training flag needs to
be repeated.  Prints test loss and accuracy, per-class accuracy and the confusion
matrix, and writes them beside the checkpoint as CSV and PNG.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from lowlevel import cifar10
from lowlevel.config import Config, ConfigError


class EvalError(Exception):
    """A missing, partial or incompatible checkpoint, told in one sentence."""


def locate(path: str, best: bool) -> tuple[Path, str]:
    """(run folder, checkpoint prefix) for a run folder or one checkpoint prefix."""
    from lowlevel._tf import tf

    p = Path(path)
    if p.is_dir():
        run = p
        folder = run / "best" if best else run
        prefix = tf.train.latest_checkpoint(str(folder))
        if prefix is None:
            what = "best checkpoint" if best else "checkpoint"
            raise EvalError(f"{folder}: holds no {what} (or its 'checkpoint' list is unreadable); "
                            f"train first, or give a checkpoint prefix such as {run}/ckpt-390.")
        return run, prefix
    if Path(f"{p}.index").is_file():
        run = p.parent.parent if p.parent.name == "best" else p.parent
        return run, str(p)
    raise EvalError(f"{p}: is neither a run folder nor a checkpoint (no {p.name}.index); "
                    f"give checkpoints/<run> or checkpoints/<run>/ckpt-N.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lowlevel.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a run folder, or one checkpoint prefix (.../ckpt-N)")
    ap.add_argument("--best", action="store_true", help="with a run folder: its best checkpoint, not the latest")
    ap.add_argument("--data", default="", help="cifar-10-batches-py or its parent (default: the run's --data)")
    args = ap.parse_args(argv)
    try:
        return evaluate(args.checkpoint, args.best, args.data)
    except (EvalError, ConfigError, cifar10.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def evaluate(checkpoint: str, best: bool = False, data_path: str = "") -> int:
    from lowlevel._tf import tf

    from lowlevel import pipeline, plots
    from lowlevel.mobilenet import MobileNetV1
    from lowlevel.train import evaluator

    run, prefix = locate(checkpoint, best)
    if not (run / "config.json").is_file():
        raise EvalError(f"{run}: has no config.json, so the model cannot be rebuilt; "
                        f"give a run folder written by python -m lowlevel.train.")
    cfg = Config.from_json(run / "config.json")
    data = cifar10.load(data_path or cfg.data or "data")
    train_x, _, _, _ = pipeline.split_validation(data.train_images, data.train_labels, cfg.val_size)
    norm = pipeline.Normalization.of(train_x)  # the statistics the run trained with
    model = MobileNetV1(num_classes=len(data.label_names), alpha=cfg.alpha, input_size=32, stem_stride=1,
                        dropout=cfg.dropout, bn_momentum=cfg.bn_momentum, precision=cfg.precision)
    try:
        status = tf.train.Checkpoint(model=model).read(prefix)
        status.assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        first = str(e).strip().splitlines()[0][:200]
        raise EvalError(f"{prefix}: cannot be restored into the model its config.json describes ({first}); "
                        f"it is partial, damaged or from another run.") from None

    test = pipeline.Batches(data.test_images, data.test_labels, norm, 500)
    loss, accuracy, preds = evaluator(model, test)()
    k = len(data.label_names)
    matrix = np.zeros((k, k), np.int64)
    np.add.at(matrix, (data.test_labels, preds), 1)
    per_class = matrix.diagonal() / matrix.sum(1)

    print(f"{prefix}: test loss {loss:.4f}, test accuracy {100 * accuracy:.2f}% ({len(preds)} images)")
    for name, acc in zip(data.label_names, per_class):
        print(f"  {name:<12s} {100 * acc:6.2f}%")
    print("confusion matrix (rows: true class, columns: predicted):")
    print("            " + " ".join(f"{n[:5]:>5s}" for n in data.label_names))
    for name, row in zip(data.label_names, matrix):
        print(f"  {name[:9]:<9s} " + " ".join(f"{v:5d}" for v in row))

    stem = Path(prefix).parent / f"{Path(prefix).name}-test"
    header = ",".join(["true\\predicted", *data.label_names])
    rows = [",".join([n, *map(str, r)]) for n, r in zip(data.label_names, matrix)]
    Path(f"{stem}-confusion.csv").write_text("\n".join([header, *rows]) + "\n")
    per_class_rows = [f"{n},{a:.6f}" for n, a in zip(data.label_names, per_class)]
    Path(f"{stem}-per-class.csv").write_text("\n".join(["class,accuracy", *per_class_rows,
                                                        f"all,{accuracy:.6f}"]) + "\n")
    plots.confusion_matrix(matrix, list(data.label_names), f"{stem}-confusion.png",
                           title=f"{Path(prefix).name}: test accuracy {100 * accuracy:.2f}%")
    print(f"wrote {stem}-confusion.csv, {stem}-per-class.csv and {stem}-confusion.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
