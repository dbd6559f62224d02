"""`python -m lowlevel.evaluate`: restore a checkpoint and measure it on its data set's test images (or on its
run's held-out validation images, to choose a setting).

    python -m lowlevel.evaluate --checkpoint checkpoints/RUN           # the run's latest checkpoint
    python -m lowlevel.evaluate --checkpoint checkpoints/RUN --best    # its best by validation accuracy
    python -m lowlevel.evaluate --checkpoint checkpoints/RUN/ckpt-390  # one checkpoint
    python -m lowlevel.evaluate --checkpoint checkpoints/RUN --validation --tta flip-shift  # choose on validation

    python -m lowlevel.evaluate --model checkpoints/RUN/export/int8.tflite      # an exported model
    python -m lowlevel.evaluate --model checkpoints/RUN/export/savedmodel
    python -m lowlevel.evaluate --model checkpoints/RUN/export/int8.tflite --agree-with checkpoints/RUN

The model is rebuilt from the run's config.json, so no training flag needs to
be repeated; an exported model's data set is read from the export.json beside it
(lowlevel.export), or given with --dataset and --data.  Prints test loss (checkpoints
only) and accuracy, per-class accuracy and the confusion matrix, and writes them
beside the checkpoint or the exported file as CSV and PNG.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lowlevel import errors, kernels, runs
from lowlevel.config import TTA, Parser


def parser() -> Parser:
    p = Parser(prog="python -m lowlevel.evaluate", description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a run folder, or one checkpoint prefix (.../ckpt-N)")
    which.add_argument("--model", help="instead: an exported SavedModel folder or .tflite file (lowlevel.export)")
    p.add_argument("--best", action="store_true", help="with a run folder: its best checkpoint, not the latest")
    p.add_argument("--weights", choices=("averaged", "trained"), default=None,
                   help="with a checkpoint of a run trained with --ema: its moving average of the weights "
                        "(the default) or the trained weights themselves")
    p.add_argument("--tta", choices=TTA, default=None,
                   help="with a checkpoint: test-time augmentation, none, flip (the mean of the softmax over "
                        "each image and its mirror image) or flip-shift (also over both moved by one pixel up, "
                        "down, left and right); default: the run's --tta")
    p.add_argument("--validation", action="store_true",
                   help="with a checkpoint: measure the run's held-out validation images (the split it trained "
                        "with) instead of the test images, to choose a setting without looking at the test set")
    p.add_argument("--data", default="", help="the data set's folder or its parent (default: the run's --data)")
    p.add_argument("--dataset", default="", help="with --model and no export.json beside it: the data set "
                                                 "(default cifar10)")
    p.add_argument("--agree-with", default="", help="with --model: also the share of test images on which it "
                                                    "predicts the class that this other model (a checkpoint, "
                                                    "without test-time augmentation, or an exported file) predicts")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.agree_with and not args.model:
        p.error("--agree-with compares an exported --model with another model; add --model")
    if args.validation and args.model:
        p.error("--validation measures a checkpoint on its run's validation images; give --checkpoint, not --model")
    if args.model:
        return errors.as_command("python -m lowlevel.evaluate", lambda: evaluate_exported(
            args.model, args.data, args.dataset, agree_with=args.agree_with))
    return errors.as_command("python -m lowlevel.evaluate", lambda: evaluate(
        args.checkpoint, args.best, args.data, args.weights or "", args.tta, args.validation))


def evaluate(checkpoint: str, best: bool = False, data_path: str = "", weights: str = "",
             tta: str | None = None, validation: bool = False) -> int:
    from lowlevel import pipeline
    from lowlevel.step import evaluator

    loaded = runs.load(checkpoint, best, data_path, weights=weights)
    cfg, data, prefix = loaded.config, loaded.data, loaded.prefix
    tta = cfg.tta if tta is None else tta
    if validation and not cfg.val_size:
        raise runs.RunError(f"{loaded.run}: was trained with --val-size 0, so it holds no validation images; "
                            f"leave out --validation to measure the test images.")
    if not validation:
        runs.check_writable(prefix.parent)  # the reports go beside the checkpoint: fail before the work
    print(kernels.line())
    if loaded.note:
        print(loaded.note)
    measure = evaluator(loaded.model, loaded.normalization, tta)
    measured = ["averaged weights"] if loaded.weights == "averaged" else []
    measured += [f"{tta} TTA"] if tta != "none" else []
    said = f"{', '.join(measured)}{': ' if measured else ''}"
    if validation:  # the images the run held out, split as lowlevel.loop splits them
        _, _, images, labels = pipeline.split_validation(data.train_images, data.train_labels, cfg.val_size)
        loss, accuracy, _ = measure(images, labels)
        print(f"{prefix}: {said}validation loss {loss:.4f}, validation accuracy {100 * accuracy:.2f}% "
              f"({len(labels)} images)")
        return 0
    loss, accuracy, preds = measure(data.test_images, data.test_labels)
    report(data, preds, prefix, f"{said}test loss {loss:.4f}, ")
    return 0


def evaluate_exported(path: str, data_path: str = "", dataset: str = "", batch: int = 500,
                      agree_with: str = "") -> float:
    """The test accuracy of an exported model, reported as for a checkpoint; returns it.  agree_with:
    another model (checkpoint or exported file) whose predicted classes are compared."""
    from lowlevel import datasets, exported

    model = exported.Exported(path)
    if agree_with and Path(agree_with).resolve() == model.path.resolve():
        raise runs.ConfigError(f"--agree-with {agree_with}: is the --model itself; give another model.")
    runs.check_writable(model.path.parent)
    if model.kind == "tflite" and exported.litert_notice():
        print(exported.litert_notice())
    manifest = exported.read_manifest(model.path.parent) or {}
    name = dataset or manifest.get("dataset") or "cifar10"
    data = datasets.load(name, data_path or manifest.get("data", ""), manifest.get("split_seed", 0))
    if tuple(data.test_images.shape[1:]) != model.input_shape:
        raise runs.RunError(f"{model.path}: takes images of shape {model.input_shape}, but the {name} test images "
                            f"are {data.test_images.shape[1:]}; give its data set with --dataset and --data.")
    preds = predicted(model, data.test_images, batch)
    other = predicted_by(agree_with, data, data_path, batch) if agree_with else None
    accuracy = report(data, preds, model.path)
    if other is not None:
        print(f"{model.path}: predicts the class {agree_with} predicts on {100 * np.mean(preds == other):.2f}% "
              f"of the {len(preds)} test images")
    return accuracy


def predicted(model, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """The classes [N] an exported model predicts for uint8 images [N, H, W, C]."""
    return np.concatenate([model.predict(images[i:i + batch]).argmax(-1) for i in range(0, len(images), batch)])


def predicted_by(path: str, data, data_path: str, batch: int = 500) -> np.ndarray:
    """The test classes the model at `path` predicts: an exported file, or a checkpoint (without TTA)."""
    from lowlevel import exported
    from lowlevel.step import evaluator

    p = Path(path)
    if p.suffix == ".tflite" or (p / "saved_model.pb").is_file():
        return predicted(exported.Exported(p), data.test_images, batch)
    loaded = runs.load(path, data_path=data_path)
    if len(loaded.data.test_images) != len(data.test_images):
        raise runs.ConfigError(f"--agree-with {path}: its run measures {len(loaded.data.test_images)} test images, "
                               f"not {len(data.test_images)}; give a model of the same data set.")
    test = loaded.data.test_images, loaded.data.test_labels
    return evaluator(loaded.model, loaded.normalization, "none", batch)(*test)[2]


def report(data, preds: np.ndarray, prefix: Path, loss: str = "") -> float:
    """Print the accuracy, per class and as a confusion matrix, of predictions `preds` [N] of data's test
    images, and write <prefix>-test-confusion.csv, -per-class.csv and -confusion.png; returns the accuracy."""
    from lowlevel import figures

    accuracy = float(np.mean(preds == data.test_labels))
    k = len(data.label_names)
    matrix = np.zeros((k, k), np.int64)
    np.add.at(matrix, (data.test_labels, preds), 1)
    totals = matrix.sum(1)
    per_class = np.divide(matrix.diagonal(), totals, out=np.full(k, np.nan), where=totals > 0)  # nan: no test image

    print(f"{prefix}: {loss}test accuracy {100 * accuracy:.2f}% ({len(preds)} images)")
    for name, acc in zip(data.label_names, per_class):
        print(f"  {name:<12s} {100 * acc:6.2f}%")
    print("confusion matrix (rows: true class, columns: predicted):")
    print("            " + " ".join(f"{n[:5]:>5s}" for n in data.label_names))
    for name, row in zip(data.label_names, matrix):
        print(f"  {name[:9]:<9s} " + " ".join(f"{v:5d}" for v in row))

    stem = prefix.parent / f"{prefix.name.removesuffix('.tflite')}-test"
    header = ",".join(["true\\predicted", *data.label_names])
    rows = [",".join([n, *map(str, r)]) for n, r in zip(data.label_names, matrix)]
    runs.write_text(Path(f"{stem}-confusion.csv"), "\n".join([header, *rows]) + "\n")
    per_class_rows = [f"{n},{a:.6f}" for n, a in zip(data.label_names, per_class)]
    runs.write_text(Path(f"{stem}-per-class.csv"), "\n".join(["class,accuracy", *per_class_rows,
                                                              f"all,{accuracy:.6f}"]) + "\n")
    figures.confusion_matrix(matrix, list(data.label_names), f"{stem}-confusion.png",
                           title=f"{prefix.name}: test accuracy {100 * accuracy:.2f}%")
    print(f"wrote {stem}-confusion.csv, {stem}-per-class.csv and {stem}-confusion.png")
    return accuracy


if __name__ == "__main__":
    sys.exit(main())
