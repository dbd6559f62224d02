"""`python -m lowlevel.compare`: separable against standard convolutions, measured side by side.

    python -m lowlevel.compare --data cifar-10-batches-py [--epochs 5] [--models mobilenet@0.5,vgg-blocks,...] [--int8]
    python -m lowlevel.compare --dataset fashion-mnist --models fashion-cnn,fashion-cnn-separable,fashion-separable

Trains each configuration (a network name, with @ALPHA for a width multiplier) on one data set
with the same budget, each an ordinary run in checkpoints/compare-<name>/ (--prefix: another word
than compare) trained by lowlevel.train, so a stopped comparison continues where it stopped
(--resume of each run) and a finished run, however it was trained, is not trained again.  Any other flag (--lr, --batch-size, ...) goes to every run;
otherwise each network trains with its own defaults (`python -m lowlevel.train --help`).
Then, for each: parameters and multiply-adds (counted, lowlevel.summary), training images/s (the
median epoch of its history.csv), inference images/s (the folded network on 2,000 test images,
timed here), test accuracy of its last checkpoint (with the run's --tta), and its wall time; with --int8 also the test
accuracy and size of its full-integer LiteRT file (`python -m lowlevel.export --format tflite-int8`,
per-channel weights, calibrated on training images, written into the run's export/).  Writes
checkpoints/compare.csv and compare.png (test accuracy against multiply-adds) and prints the table.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from lowlevel import errors, runs
from lowlevel.config import ConfigError, Parser
from lowlevel.nets import NETS

DEFAULT = {"cifar10": "mobilenet@0.5,mobilenet-standard@0.5,vgg-blocks,vgg-blocks-separable",
           "fashion-mnist": "fashion-cnn,fashion-cnn-separable,fashion-separable,mobilenet@0.25",
           "flowers17": "alexnet,vgg16,inception-v2,mobilenet"}
COLUMNS = ["name", "model", "alpha", "parameters", "mult_adds", "train_images_per_s", "inference_images_per_s",
           "test_accuracy", "wall_time_s", "epochs", "int8_accuracy", "int8_bytes"]


def parser() -> Parser:
    p = Parser(prog="python -m lowlevel.compare", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10", help="cifar10 (default), fashion-mnist or flowers17")
    p.add_argument("--data", default="", help="the data set's folder or its parent (default: data/)")
    p.add_argument("--models", default="", help="comma-separated NAME or NAME@ALPHA (default for cifar10: "
                                                f"{DEFAULT['cifar10']})")
    p.add_argument("--epochs", type=int, default=5, help="epochs for every run (default 5: the cifar10 list in "
                                                         "about 3 hours on a 2-core CPU)")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="where the runs and compare.csv go")
    p.add_argument("--prefix", default="compare", help="the runs' names: PREFIX-<name> (default: compare)")
    p.add_argument("--int8", action="store_true", help="also export each run to int8 LiteRT and measure its test "
                                                       "accuracy and file size")
    return p


def configurations(text: str) -> list[tuple[str, str, float]]:
    """'mobilenet@0.5,vgg-blocks' -> [("mobilenet-0.5", "mobilenet", 0.5), ("vgg-blocks", "vgg-blocks", 1.0)]."""
    found = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        model, _, alpha = item.partition("@")
        if model not in NETS:
            raise ConfigError(f"--models: unknown model {model!r}; the models are {', '.join(NETS)}.")
        try:
            a = float(alpha) if alpha else 1.0
        except ValueError:
            raise ConfigError(f"--models: {item!r} has width {alpha!r}, not a number; write NAME@0.5.") from None
        found.append((f"{model}-{a:g}" if alpha else model, model, a))
    if not found:
        raise ConfigError("--models lists no model; give NAME[@ALPHA],... .")
    return found


class Refused(Exception):
    """python -m lowlevel.train refused a run's settings and said why."""


def train(name: str, model: str, alpha: float, args, extra: list[str]) -> Path:
    """Train (or continue, or just re-test) the run <prefix>-<name>; returns its folder."""
    from lowlevel import train as trainer

    run = Path(args.checkpoint_dir) / f"{args.prefix}-{name}"
    words = ["--checkpoint-dir", args.checkpoint_dir, "--run-name", run.name]
    if (run / "config.json").is_file():
        words.append("--resume")  # the run's own settings come from its config.json
    else:
        words += ["--model", model, "--alpha", str(alpha), "--dataset", args.dataset, "--epochs", str(args.epochs),
                  *(["--data", args.data] if args.data else []), *extra]
    print(f"--- {name}: python -m lowlevel.train {' '.join(words)}", flush=True)
    status = trainer.main(words)
    if status == 2:  # a setting refused: train's one sentence says which
        raise Refused
    if status != 0:
        raise runs.RunError(f"{run}: training stopped with status {status}; run the comparison again to continue it.")
    return run


def int8(run: Path, loaded) -> dict:
    """Export the run's int8 LiteRT file (python -m lowlevel.export) and measure it on the test images."""
    import numpy as np

    from lowlevel import export
    from lowlevel.exported import Exported

    if export.main(["--checkpoint", str(run), "--format", "tflite-int8"]) != 0:
        raise runs.RunError(f"{run}: its int8 export failed (the line above says why); run the comparison again "
                            f"without --int8, or fix the run.")
    path = run / "export" / "int8.tflite"
    model, images = Exported(path), loaded.data.test_images
    predicted = np.concatenate([model.predict(images[i:i + 1000]).argmax(-1) for i in range(0, len(images), 1000)])
    return {"int8_accuracy": float(np.mean(predicted == loaded.data.test_labels)), "int8_bytes": path.stat().st_size}


def measure(name: str, model: str, alpha: float, run: Path, data_path: str, quantized: bool = False) -> dict:
    """One row of compare.csv for a finished run."""
    import pandas as pd

    from lowlevel._tf import tf

    from lowlevel import costs
    from lowlevel import history as history_file
    from lowlevel.step import evaluator

    loaded = runs.load(run, data_path=data_path)
    history = pd.DataFrame(history_file.read(run / "history.csv"))
    totals = costs.totals(costs.rows(loaded.model))
    _, accuracy, _ = evaluator(loaded.model, loaded.normalization, loaded.config.tta)(loaded.data.test_images,
                                                                                    loaded.data.test_labels)
    x = loaded.normalization(loaded.data.test_images[:500])
    infer = tf.function(loaded.model.inference, autograph=False)
    infer(x)  # trace and warm up
    n, start = 0, time.perf_counter()
    while n < 2000 or time.perf_counter() - start < 1.0:
        infer(x).numpy()
        n += len(x)
    return {"name": name, "model": model, "alpha": alpha, "parameters": totals.params, "mult_adds": totals.madds,
            "train_images_per_s": float(history.images_per_s.median()),
            "inference_images_per_s": n / (time.perf_counter() - start), "test_accuracy": accuracy,
            "wall_time_s": float(history.elapsed_s.iloc[-1]), "epochs": int(history.epoch.iloc[-1]),
            **(int8(run, loaded) if quantized else {})}


def compare(args, extra: list[str]) -> Path:
    import pandas as pd

    from lowlevel import figures

    from lowlevel.datasets import DATASETS

    if args.dataset not in DATASETS:
        raise ConfigError(f"--dataset must be {', '.join(DATASETS)}, not {args.dataset!r}.")
    rows = []
    for name, model, alpha in configurations(args.models or DEFAULT.get(args.dataset, "")):
        run = train(name, model, alpha, args, extra)
        rows.append(measure(name, model, alpha, run, args.data, args.int8))
    table = pd.DataFrame(rows, columns=COLUMNS)
    out = Path(args.checkpoint_dir) / "compare.csv"
    runs.write_text(out, table.to_csv(index=False))
    figures.compare(table, out.with_suffix(".png"), f"{args.dataset}, {args.epochs} epochs each")
    print(format_table(table))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return out


def format_table(table) -> str:
    quantized = table.int8_accuracy.notna().any()
    lines = [f"{'name':<24s} {'params':>10s} {'mult-adds':>10s} {'train img/s':>11s} {'infer img/s':>11s} "
             f"{'test acc':>8s} {'wall time':>9s}" + (f" {'int8 acc':>8s} {'int8 size':>9s}" if quantized else "")]
    for r in table.itertuples():
        lines.append(f"{r.name:<24s} {r.parameters / 1e6:9.3f}M {r.mult_adds / 1e6:9.1f}M {r.train_images_per_s:11.0f} "
                     f"{r.inference_images_per_s:11.0f} {100 * r.test_accuracy:7.2f}% {r.wall_time_s / 60:7.1f} min"
                     + (f" {100 * r.int8_accuracy:7.2f}% {r.int8_bytes / 1e6:7.2f} MB" if quantized else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, extra = parser().parse_known_args(argv)
    try:
        return errors.as_command("python -m lowlevel.compare", lambda: compare(args, extra))
    except Refused:
        return 2


if __name__ == "__main__":
    sys.exit(main())
