"""The training configuration: one frozen dataclass that is the defaults, the CLI and config.json.

Each field's help text is its comment: it becomes the flag's help (`--batch-size`
for `batch_size`), and `config.json` in the run folder records every setting of
the run, so `--resume` and `python -m lowlevel.evaluate` rebuild exactly the same
run.  Three kinds of field:

  * settings of the run (the schedule, the model, the data's treatment): saved,
    and a `--resume` that would change one is refused;
  * `ADJUSTABLE` ones (where the data is, steps per call): saved, and a `--resume`
    may change them, because they do not change what is computed;
  * `INVOCATION` ones (`--max-steps`, `--resume`, `--progress`, where the run is):
    limits and choices of one command, never saved and never read back, so a
    command printed for the user to run next does what it says.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path

from lowlevel.datasets import DATASETS
from lowlevel.errors import ConfigError
from lowlevel.nets import NETS

TTA = ("none", "flip", "flip-shift")  # test-time augmentation: lowlevel.step.log_probabilities
FLIPS = ("random", "alternate")  # the horizontal flip of training images: lowlevel.pipeline.Batches
# a --qat run fine-tunes a trained one (docs/quantization.md): a few epochs at a small learning rate (at
# the float run's 0.1 a tiny EfficientNet-B0 broke down once its batch norms froze), measured without TTA
# as its exported int8 file is, and without a moving average, which costs accuracy in runs this short
# (docs/recipe.md)
QAT_DEFAULTS = {"epochs": 3, "lr": 0.005, "warmup_epochs": 0.0, "tta": "none", "ema": 0.0}


class Parser(argparse.ArgumentParser):
    """argparse with its errors in lowlevel's form: one line on stderr, exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message}; `{self.prog} --help` lists the flags.\n")


RUN, ADJUSTABLE, INVOCATION = "run", "adjustable", "invocation"  # the kinds of field (module docstring)


def _f(default, help: str, kind: str = RUN, choices: tuple = ()):
    """A field: its default, its help (the flag's), its kind, and the values allowed (if a list)."""
    return dataclasses.field(default=default, metadata={"help": help, "kind": kind, "choices": choices})


@dataclasses.dataclass(frozen=True)
class Config:
    # where things are
    data: str = _f("", "the data set's folder (e.g. cifar-10-batches-py) or its parent; empty: data/, "
                       "downloaded there if missing", kind=ADJUSTABLE)
    checkpoint_dir: str = _f("checkpoints", "folder holding one folder per run", kind=INVOCATION)
    run_name: str = _f("", "the run's folder in --checkpoint-dir; empty: a new timestamped name "
                           "(with --resume: the most recent run)", kind=INVOCATION)
    resume: bool = _f(False, "continue the run in --run-name exactly where its last checkpoint left it",
                        kind=INVOCATION)
    from_checkpoint: str = _f("", "with --resume: continue from this checkpoint of the run (ckpt-N or "
                                  "best/ckpt-N) instead of the latest; later ones are moved to a set-aside folder",
                        kind=INVOCATION)
    # the schedule
    epochs: int = _f(150, "passes over the training images")
    batch_size: int = _f(128, "images per training step")
    optimizer: str = _f("sgd", "sgd (with Nesterov momentum) or adam", choices=("sgd", "adam"))
    lr: float = _f(0.1, "peak learning rate, reached after the warmup")
    momentum: float = _f(0.9, "SGD momentum (Adam: beta_1)")
    weight_decay: float = _f(5e-4, "L2 weight decay on the kinds of parameter --decay-on names (Adam: decoupled)")
    decay_on: str = _f("conv,pointwise,depthwise,dense", "the kinds of parameter weight decay applies to, "
                       "comma-separated, of: conv (k x k kernels), pointwise (1 x 1), depthwise, dense, norm "
                       "(batch-norm scales and shifts), bias (lowlevel/optim.py); empty: none")
    decay_gates: bool = _f(True, "with pointwise kernels decayed, also the 1 x 1 kernels of the "
                                 "squeeze-and-excitation gates (MobileNetV3, EfficientNet; --no-decay-gates: not "
                                 "theirs; networks without gates: no effect)")
    warmup_epochs: float = _f(1.0, "epochs of linear learning-rate warmup from 0")
    schedule: str = _f("cosine", "after warmup: cosine (to 0), linear (to 0: with the warmup, a one-cycle "
                                 "schedule) or step (x0.1 at 50%% and 75%% of the epochs)",
                        choices=("cosine", "linear", "step"))
    label_smoothing: float = _f(0.1, "weight of the uniform distribution mixed into the one-hot targets")
    ema: float = _f(0.999, "decay of an exponential moving average of the weights (lowlevel/ema.py), which then "
                           "serves validation, the best checkpoint, the test, evaluate and export (about a point "
                           "at a checkpoint chosen before the schedule's end, docs/recipe.md); 0: none")
    tta: str = _f("flip", "test-time augmentation of validation and the final test: none; flip (the mean of "
                          "the softmax over each image and its mirror image: about a point on CIFAR-10, "
                          "docs/recipe.md); flip-shift (also over both moved by one pixel up, down, left and "
                          "right: 10 views)", choices=TTA)
    # the model
    model: str = _f("mobilenet", "the network, one of: " + ", ".join(NETS) + " (python -m lowlevel.summary "
                                 "--model NAME shows its layers)", choices=tuple(NETS))
    alpha: float = _f(1.0, "width multiplier: a layer of C channels gets max(8, int(alpha * C))")
    dropout: float = _f(0.0, "dropout rate of the network's dropout layers (MobileNet: before the classifier); "
                             "default: the network's own (0.5 for alexnet and vgg16, else 0)")
    bn_momentum: float = _f(0.99, "batch-norm moving-average momentum")
    precision: str = _f("float32", "float32, or mixed precision with the 1x1 convolutions in bfloat16 (CPUs with "
                                   "AVX512-BF16, recent GPUs) or float16 (GPUs; with dynamic loss scaling)",
                        choices=("float32", "bfloat16", "float16"))
    # quantization-aware training (lowlevel/quantize.py): fine-tuning a trained run as its int8 network
    from_run: str = _f("", "start from this run's weights (its folder, or one checkpoint; the averaged weights of "
                           "an --ema run) and its network, instead of new weights")
    qat: str = _f("", "train as the int8 network computes (fake quantization), with per-channel or per-tensor "
                      "weight scales; empty: in float.  A fine-tuning: unless given, --epochs 3 --lr 0.005 "
                      "--warmup-epochs 0 --tta none --ema 0", choices=("", "per-channel", "per-tensor"))
    qat_freeze_bn: float = _f(1.0, "with --qat: epochs in which the batch norms use batch statistics; after them "
                                   "the moving statistics are frozen")
    # the data
    dataset: str = _f("", "the data set: " + ", ".join(DATASETS) + "; empty: the one the model was designed for",
                        choices=("", *DATASETS))
    augment: bool = _f(True, "random 4-pixel-padded crop and horizontal flip of training images")
    flip: str = _f("random", "the horizontal flip of training images: random (each image at each step with "
                             "probability 1/2) or alternate (each image at random in the first epoch, then the "
                             "other way each epoch: Jordan, 2024; lowlevel/pipeline.py)", choices=FLIPS)
    cutout: int = _f(16, "side in pixels of the random square zeroed in each training image after "
                         "normalization, i.e. set to the mean colour (0: no cutout)")
    cutmix: float = _f(0.0, "probability that a training batch is mixed by CutMix: one random box of every image "
                            "replaced by the same box of another image of the batch, the target shared between "
                            "the two labels as their pixels are (lowlevel/pipeline.py; 0: none)")
    val_size: int = _f(5000, "training images held out to choose the best checkpoint (0: none)")
    seed: int = _f(0, "seeds the initial weights, the shuffle, the augmentation and dropout")
    split_seed: int = _f(0, "seeds the 80/20 train/test split of a data set without an official test set "
                            "(flowers17); saved with the run, so the split is too")
    # bookkeeping
    keep: int = _f(3, "recent checkpoints to keep (the best is kept besides)")
    steps_per_call: int = _f(10, "training steps per call of the compiled step (fewer Python round trips)",
                        kind=ADJUSTABLE)
    max_steps: int = _f(0, "stop, saving a checkpoint, once the run has done this many steps in all (0: no "
                           "limit); a limit of this command only, not saved with the run", kind=INVOCATION)
    progress: str = _f("auto", "a progress bar within each epoch: auto (when stderr is a terminal), bar or none",
                        kind=INVOCATION, choices=("auto", "bar", "none"))
    strategy: str = _f("default", "default (one device), mirrored (every visible GPU: tf.distribute."
                                  "MirroredStrategy) or multi-worker (several machines named by TF_CONFIG: "
                                  "MultiWorkerMirroredStrategy); --batch-size stays the global batch, split among "
                                  "the replicas",
                        kind=INVOCATION, choices=("default", "mirrored", "multi-worker"))
    sync_bn: bool = _f(True, "with several replicas, each batch norm normalizes with the global batch's statistics "
                             "(one all-reduce per layer; --no-sync-bn: each replica with its own slice's)",
                        kind=INVOCATION)
    tensorboard: bool = _f(True, "write TensorBoard event files into the run's tensorboard/ folder "
                                 "(view them with: tensorboard --logdir checkpoints)", kind=ADJUSTABLE)

    # Settings added after runs were already made: a config.json without one gets the value
    # that reproduces how that run was trained, not the current default.
    BEFORE_ADDED = {"cutout": 0, "cutmix": 0.0, "flip": "random", "model": "mobilenet", "dataset": "cifar10",
                    "split_seed": 0, "tta": "none", "ema": 0.0}

    def check(self, source: str = "") -> "Config":
        """Refuse a setting no run can have, in one sentence (the data's sizes: `check_data`).
        source: the config.json the settings came from, named in the sentence instead of a flag."""
        def n(field: str) -> str:
            return f"{source}: {field}" if source else f"--{_flag(field)}"

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{n(f.name)} must be a finite number, not {value}.")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "keep": self.keep, "steps_per_call": self.steps_per_call, "alpha": self.alpha}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{n(name)} must be greater than 0, not {value}.")
        choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(self) if f.metadata["choices"]}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                allowed = [a for a in allowed if a]
                raise ConfigError(f"{n(name)} must be {', '.join(allowed[:-1])} or {allowed[-1]}, "
                                  f"not {getattr(self, name)!r}.")
        if self.strategy == "multi-worker" and not self.run_name:
            raise ConfigError("--strategy multi-worker needs --run-name, the same on every worker, so that all "
                              "of them train the same run.")
        if self.strategy != "default" and self.precision == "float16":
            raise ConfigError(f"--precision float16 (its loss scaling) is written for one device, not for --strategy "
                              f"{self.strategy}; use float32 or bfloat16.")
        from lowlevel.optim import KINDS  # (TensorFlow, which --help does not need)

        unknown = [k for k in self.decay_on.split(",") if k and k not in KINDS]
        if unknown:
            raise ConfigError(f"{n('decay_on')} names {unknown[0]!r}, not a kind of parameter; give a "
                              f"comma-separated list of: {', '.join(KINDS)}.")
        for name in ("label_smoothing", "dropout", "momentum", "bn_momentum", "ema"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{n(name)} must be in [0, 1), not {getattr(self, name)}.")
        if not 0.0 <= self.cutmix <= 1.0:
            raise ConfigError(f"{n('cutmix')} is a probability and must be in [0, 1], not {self.cutmix}.")
        for name in ("weight_decay", "warmup_epochs", "val_size", "max_steps", "cutout", "qat_freeze_bn"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{n(name)} must not be negative, not {getattr(self, name)}.")
        for field in ("data", "checkpoint_dir", "run_name"):
            long = [part for part in Path(getattr(self, field)).parts if len(os.fsencode(part)) > 255]
            if long:
                raise ConfigError(f"{n(field)} has a name of {len(os.fsencode(long[0]))} bytes ({long[0][:20]}...); "
                                  f"file systems allow at most 255 per folder or file name: use a shorter one.")
        name = self.run_name
        if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
            raise ConfigError(f"--run-name {name!r} must be a plain folder name, without a path separator and "
                              f"not starting with '.'; use --checkpoint-dir to choose where runs go.")
        if Path(self.checkpoint_dir).is_file():
            raise ConfigError(f"--checkpoint-dir {self.checkpoint_dir}: is a file, not a folder; "
                              f"give a folder (it is created if missing).")
        if self.qat and self.precision != "float32":
            raise ConfigError(f"--qat simulates int8 from float32 weights and activations; drop --precision "
                              f"{self.precision}.")
        if self.from_checkpoint and not self.resume:
            raise ConfigError("--from-checkpoint continues a run: add --resume (and its --run-name).")
        return self

    def with_defaults(self, explicit: set[str]) -> "Config":
        """A new run's config: the data set the model was designed for when --dataset is empty, and the
        settings the model and the data set want (`nets.Entry.defaults`, `datasets.Entry.defaults`, such as
        dropout 0.5 for alexnet, or no cutout on 28x28 images), and a --qat fine-tuning's (QAT_DEFAULTS),
        wherever the command line did not give one."""
        self = dataclasses.replace(self.check(), dataset=self.dataset or NETS[self.model].dataset)
        wanted = {**DATASETS[self.dataset].defaults, **NETS[self.model].defaults, **(QAT_DEFAULTS if self.qat else {})}
        return dataclasses.replace(self, **{k: v for k, v in wanted.items() if k not in explicit})

    def check_data(self, train_images: int, image_side: int) -> "Config":
        """Refuse settings the data set cannot satisfy: hold-out, batch and cutout sizes."""
        if self.val_size >= train_images:
            raise ConfigError(f"--val-size {self.val_size} leaves no training image: the data set has "
                              f"{train_images}; hold out fewer.")
        if self.batch_size > train_images - self.val_size:
            raise ConfigError(f"--batch-size {self.batch_size} is larger than the {train_images - self.val_size} "
                              f"training images; use a smaller batch.")
        if self.cutout > image_side:
            raise ConfigError(f"--cutout {self.cutout} is larger than the {image_side}-pixel image; "
                              f"use at most {image_side} (0: no cutout).")
        return self

    # ------------------------------------------------------------ CLI and JSON

    @classmethod
    def parser(cls, defaults: bool = True) -> argparse.ArgumentParser:
        """The CLI; with defaults=False, a flag not given is left out of the parsed namespace."""
        p = Parser(prog="python -m lowlevel.train",
                                    description="Train a network (MobileNet v1 on CIFAR-10 by default) from raw "
                                                "TensorFlow ops.",
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            default = f.default if defaults else argparse.SUPPRESS
            if f.type in ("bool", bool):
                p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f.metadata["help"])
            else:
                kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
                p.add_argument(flag, type=kind, default=default, help=f.metadata["help"])
        return p

    @classmethod
    def from_args(cls, argv=None) -> tuple["Config", set[str]]:
        """The config, and the names of the flags given explicitly on the command line."""
        p = cls.parser()
        args = p.parse_args(argv)
        only_given = cls.parser(defaults=False).parse_args(argv)  # a flag left out is not in it
        return cls(**vars(args)), set(vars(only_given))

    def to_json(self) -> str:
        """config.json's text: every setting of the run (INVOCATION fields left out)."""
        saved = {k: v for k, v in dataclasses.asdict(self).items() if k not in self.INVOCATION}
        return json.dumps(saved, indent=2) + "\n"

    @classmethod
    def from_json(cls, path: Path) -> "Config":
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot be read as a run's config ({e}); is this a run folder?") from None
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names) if isinstance(values, dict) else ["(not a JSON object)"]
        if unknown:
            raise ConfigError(f"{path}: has unknown settings {unknown}; it was written by another version "
                              f"of lowlevel or edited by hand.")
        run = {k: v for k, v in values.items() if k not in cls.INVOCATION}  # older files saved them too
        kinds = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(cls)}
        for k, v in run.items():
            ok = {"bool": isinstance(v, bool), "int": isinstance(v, int) and not isinstance(v, bool),
                  "float": isinstance(v, (int, float)) and not isinstance(v, bool), "str": isinstance(v, str)}
            if not ok[kinds[k]]:
                raise ConfigError(f"{path}: {k} is {v!r}, not a {kinds[k]}; the file was edited by hand or damaged.")
        return cls(**{**cls.BEFORE_ADDED, **run}).check(source=str(path))

    def resumed_with(self, given: "Config", explicit: set[str]) -> "Config":
        """This saved config, continued by the command `given` (whose explicit flags are `explicit`).

        INVOCATION fields come from the command (its defaults where not given), never from
        the file; ADJUSTABLE ones from the command where given; a flag given explicitly that
        would change the run itself is an error.
        """
        fixed = [k for k in explicit if k not in self.ADJUSTABLE + self.INVOCATION]
        changed = sorted(k for k in fixed if getattr(given, k) != getattr(self, k))
        if changed:
            k = changed[0]
            raise ConfigError(f"--resume: the run was made with --{_flag(k)} {getattr(self, k)}, not "
                              f"{getattr(given, k)}; drop the flag to continue it, or start a new --run-name.")
        now = {k: getattr(given, k) for k in self.INVOCATION}
        now.update({k: getattr(given, k) for k in explicit if k in self.ADJUSTABLE})
        return dataclasses.replace(self, **now)


def _flag(name: str) -> str:
    return name.replace("_", "-")


# Saved with the run, but a --resume may change them: they do not change what is computed.
Config.ADJUSTABLE = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["kind"] == ADJUSTABLE)
# Choices of one command, not of the run: never written to config.json nor read from it.
Config.INVOCATION = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["kind"] == INVOCATION)
