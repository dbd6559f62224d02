"""The training configuration: one frozen dataclass that is the defaults, the CLI and config.json.

Each field's help text is its comment: it becomes the flag's help (`--batch-size`
for `batch_size`), and `config.json` in the run folder records every value, so
`--resume` and `python -m lowlevel.evaluate` rebuild exactly the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


class ConfigError(ValueError):
    """A bad flag or config.json, told in one sentence."""


def _f(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Config:
    # where things are
    data: str = _f("", "cifar-10-batches-py or its parent; empty: data/, downloaded there if missing")
    checkpoint_dir: str = _f("checkpoints", "folder holding one folder per run")
    run_name: str = _f("", "the run's folder in --checkpoint-dir; empty: a new timestamped name "
                           "(with --resume: the most recent run)")
    resume: bool = _f(False, "continue the run in --run-name exactly where its last checkpoint left it")
    # the schedule
    epochs: int = _f(150, "passes over the training images")
    batch_size: int = _f(128, "images per training step")
    optimizer: str = _f("sgd", "sgd (with Nesterov momentum) or adam")
    lr: float = _f(0.1, "peak learning rate, reached after the warmup")
    momentum: float = _f(0.9, "SGD momentum (Adam: beta_1)")
    weight_decay: float = _f(5e-4, "L2 weight decay on convolution and classifier kernels (Adam: decoupled)")
    warmup_epochs: float = _f(1.0, "epochs of linear learning-rate warmup from 0")
    schedule: str = _f("cosine", "after warmup: cosine (to 0) or step (x0.1 at 50%% and 75%% of the epochs)")
    label_smoothing: float = _f(0.1, "weight of the uniform distribution mixed into the one-hot targets")
    # the model
    alpha: float = _f(1.0, "width multiplier: a layer of C channels gets max(8, int(alpha * C))")
    dropout: float = _f(0.0, "dropout rate before the classifier")
    bn_momentum: float = _f(0.99, "batch-norm moving-average momentum")
    precision: str = _f("float32", "float32, or mixed precision with the 1x1 convolutions in bfloat16 (CPUs with "
                                   "AVX512-BF16, recent GPUs) or float16 (GPUs; with dynamic loss scaling)")
    # the data
    augment: bool = _f(True, "random 4-pixel-padded crop and horizontal flip of training images")
    cutout: int = _f(16, "side in pixels of the random square zeroed in each training image after "
                         "normalization, i.e. set to the mean colour (0: no cutout)")
    val_size: int = _f(5000, "training images held out to choose the best checkpoint (0: none)")
    seed: int = _f(0, "seeds the initial weights, the shuffle, the augmentation and dropout")
    # bookkeeping
    keep: int = _f(3, "recent checkpoints to keep (the best is kept besides)")
    steps_per_call: int = _f(10, "training steps per call of the compiled step (fewer Python round trips)")
    max_steps: int = _f(0, "stop, saving a checkpoint, once this many steps are done in all (0: no limit)")
    progress: str = _f("auto", "a progress bar within each epoch: auto (when stderr is a terminal), bar or none")

    # Settings added after runs were already made: a config.json without one gets the value
    # that reproduces how that run was trained, not today's default.
    BEFORE_ADDED = {"cutout": 0}
    # Flags that may differ between a run and its --resume; all others must match config.json.
    RESUMABLE = ("data", "checkpoint_dir", "run_name", "resume", "max_steps", "progress", "steps_per_call")

    def check(self) -> "Config":
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "keep": self.keep, "steps_per_call": self.steps_per_call}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be greater than 0, not {value}.")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"--optimizer must be sgd or adam, not {self.optimizer!r}.")
        if self.schedule not in ("cosine", "step"):
            raise ConfigError(f"--schedule must be cosine or step, not {self.schedule!r}.")
        if self.precision not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"--precision must be float32, bfloat16 or float16, not {self.precision!r}.")
        if self.progress not in ("auto", "bar", "none"):
            raise ConfigError(f"--progress must be auto, bar or none, not {self.progress!r}.")
        for name in ("label_smoothing", "dropout", "momentum", "bn_momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), not {getattr(self, name)}.")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.val_size < 0 or self.max_steps < 0:
            raise ConfigError("--weight-decay, --warmup-epochs, --val-size and --max-steps must not be negative.")
        if not 0 <= self.cutout <= 32:
            raise ConfigError(f"--cutout must be between 0 and 32 pixels (the image side), not {self.cutout}.")
        if not self.alpha > 0:
            raise ConfigError(f"--alpha must be greater than 0, not {self.alpha}.")
        return self

    # ------------------------------------------------------------ CLI and JSON

    @classmethod
    def parser(cls, defaults: bool = True) -> argparse.ArgumentParser:
        """The CLI; with defaults=False, a flag not given is left out of the parsed namespace."""
        p = argparse.ArgumentParser(prog="python -m lowlevel.train",
                                    description="Train MobileNet v1 on CIFAR-10 from raw TensorFlow ops.",
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

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

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
        return cls(**{**cls.BEFORE_ADDED, **values})

    def resumed_with(self, given: "Config", explicit: set[str]) -> "Config":
        """This saved config with the flags a --resume may change taken from `given`.

        A flag given explicitly that would change the run itself is an error.
        """
        changed = sorted(k for k in explicit if k not in self.RESUMABLE and getattr(given, k) != getattr(self, k))
        if changed:
            k = changed[0]
            raise ConfigError(f"--resume: the run was made with --{k.replace('_', '-')} {getattr(self, k)}, not "
                              f"{getattr(given, k)}; drop the flag to continue it, or start a new --run-name.")
        kept = {k: getattr(given, k) for k in explicit if k in self.RESUMABLE}
        return dataclasses.replace(self, **{**kept, "resume": True})
