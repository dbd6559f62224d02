"""The run folder: finding and opening one, and loading a trained run back.

    checkpoints/<run>/
        config.json                 the run's settings (lowlevel.config), written once
        history.csv                 a row per epoch (lowlevel.history)
        learning_curves.png         redrawn at every epoch's end
        checkpoint, ckpt-<step>.*   the checkpoints and their list (lowlevel.checkpoints)
        best/ckpt-<step>.*          the best by validation accuracy
        tensorboard/                event files (lowlevel.events)
        .lock                       held by the one process training the run (its id inside)
        set-aside-<time>/           what a command moved out of the way instead of deleting it

Every file is written whole or not at all, and one process at a time trains a run
(lowlevel.files).  `load` is the one place that rebuilds a run's model from its config.json
and restores a checkpoint into it, for evaluate, inspect, export and compare.
"""
from __future__ import annotations

import dataclasses
import shlex
from datetime import datetime
from pathlib import Path

from lowlevel.checkpoints import (DamagedCheckpoint, DamagedState, checkpoints_in, has_normalization, intact,
                                  latest, names, read_state, set_aside_after, step_of, verify)
from lowlevel.config import Config
from lowlevel.errors import ConfigError, RunError, WriteError, first_line
from lowlevel.files import atomic_write, check_writable, lock, refuse_if_locked, write_text

# the run folder's whole vocabulary in one namespace (runs.verify, runs.lock, ...), defined where each idea lives
__all__ = ["DamagedCheckpoint", "DamagedState", "checkpoints_in", "has_normalization", "intact", "latest", "names",
           "read_state", "set_aside_after", "step_of", "verify", "ConfigError", "RunError", "WriteError",
           "first_line", "atomic_write", "check_writable", "lock", "refuse_if_locked", "write_text", "find_run",
           "run_config", "inherited", "start_from", "open_run", "discard_unstarted", "command", "locate", "build_model",
           "Loaded", "load"]


# ---------------------------------------------------------------- a run to train

def find_run(cfg: Config) -> Path:
    """The run folder: --run-name in --checkpoint-dir, or with --resume and no name the latest run."""
    root = Path(cfg.checkpoint_dir)
    if cfg.run_name:
        return root / cfg.run_name
    if cfg.resume:
        found = sorted(root.glob("*/config.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise RunError(f"{root}: holds no run to resume; give --run-name, or train without --resume.")
        return found[-1].parent
    return root / datetime.now().strftime("run-%Y%m%d-%H%M%S")


def run_config(cfg: Config, explicit: set[str], chief: bool = True) -> tuple[Config, Path]:
    """The run's folder and config: this command's, or with --resume the saved one continued by it.
    Reads only; nothing is created before the data and every setting have been checked.
    (A multi-worker run's other workers read the folder the chief holds and writes.)"""
    run = find_run(cfg)
    saved = run / "config.json"
    if chief:
        refuse_if_locked(run)  # the first thing to say if another process is training it
    if cfg.resume:
        if not saved.is_file():
            raise RunError(f"{run}: is not a run folder (no config.json); check --run-name and --checkpoint-dir.")
        cfg = Config.from_json(saved).resumed_with(cfg, explicit)
    elif saved.exists() and chief:
        raise RunError(f"{run}: already holds a run; add --resume to continue it, or choose another --run-name.")
    else:
        cfg = inherited(cfg, explicit).with_defaults(explicit)
    return dataclasses.replace(cfg, run_name=run.name).check(), run


NETWORK = ("model", "alpha", "dropout", "bn_momentum", "dataset", "split_seed")  # what --from-run carries over


def inherited(cfg: Config, explicit: set[str]) -> Config:
    """With --from-run, the network and data set of that run (a flag that names another is an error), and
    its --data unless given."""
    if not cfg.from_run:
        return cfg
    source, _ = locate(cfg.from_run)
    if not (source / "config.json").is_file():
        raise RunError(f"--from-run {cfg.from_run}: has no config.json; give a run folder written by "
                       f"python -m lowlevel.train.")
    saved = Config.from_json(source / "config.json")
    for k in sorted(explicit & set(NETWORK)):
        if getattr(cfg, k) != getattr(saved, k):
            raise ConfigError(f"--from-run {cfg.from_run}: that run has --{k.replace('_', '-')} {getattr(saved, k)}, "
                              f"not {getattr(cfg, k)}; drop the flag, the network is the run's.")
    data = cfg.data if "data" in explicit else saved.data  # the same images, wherever the command says they are
    return dataclasses.replace(cfg, data=data, **{k: getattr(saved, k) for k in NETWORK})


def start_from(model, path: str) -> None:
    """Set `model`'s weights to those of the run or checkpoint `path` (the averaged ones of an --ema run),
    matched by their path in the module tree; variables the run does not have (quantization ranges) keep
    their initial values."""
    from lowlevel._tf import tf

    def by_path(module):
        return {p: v for p, v in module._flatten(predicate=lambda v: isinstance(v, tf.Variable), with_path=True)}

    source = by_path(load(path).model)
    net = getattr(model, "net", model)  # a quantize.Quantized model: the network inside
    for p, v in by_path(net).items():
        if p in source:
            v.assign(source[p])
        elif "quantization" not in p:
            raise RunError(f"--from-run {path}: has no {'.'.join(map(str, p))}, a variable of this network; "
                           f"give a run of the same --model.")


def open_run(cfg: Config, run: Path):
    """Create the run folder if new, take its lock (see runs.lock), write config.json if new.
    Returns the lock file, held until it is closed."""
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"{run}: cannot be created ({e.strerror}); choose a writable --checkpoint-dir.") from None
    held = lock(run)
    try:
        if not cfg.resume:
            if (run / "config.json").exists():  # another process made it between our check and the lock
                raise RunError(f"{run}: already holds a run; add --resume to continue it, or choose another "
                               f"--run-name.")
            write_text(run / "config.json", cfg.to_json())
    except BaseException:
        held.close()
        raise
    return held


def discard_unstarted(run: Path) -> None:
    """Remove a run folder that holds only what open_run wrote (config.json, the lock): a run whose
    settings were refused before its first step, so that the corrected command can use its name."""
    if run.is_dir() and {p.name for p in run.iterdir()} <= {"config.json", ".lock"}:
        for name in ("config.json", ".lock"):
            (run / name).unlink(missing_ok=True)
        run.rmdir()


def command(run: Path, *extra: str) -> str:
    """The command that continues this run, ready to paste into a shell."""
    words = ["python", "-m", "lowlevel.train", "--checkpoint-dir", str(run.parent), "--run-name", run.name,
             "--resume", *extra]
    return " ".join(shlex.quote(w) for w in words)


# ---------------------------------------------------------------- a trained run

def locate(path: str | Path, best: bool = False) -> tuple[Path, Path]:
    """(run folder, checkpoint prefix) for a run folder (its latest, or best, checkpoint) or one prefix."""
    p = Path(path)
    if p.is_dir() and p.name == "best" and (p.parent / "config.json").is_file():
        p, best = p.parent, True  # a run's best/ folder: its best checkpoint
    if p.is_dir():
        folder = p / "best" if best else p
        prefix = latest(folder)
        if prefix is None:
            what = "best checkpoint" if best else "checkpoint"
            raise RunError(f"{folder}: holds no {what}; train first, or give a checkpoint prefix "
                           f"such as {p}/ckpt-390.")
        return p, prefix
    if Path(f"{p}.index").is_file() or list(p.parent.glob(f"{p.name}.data-*")):
        return (p.parent.parent if p.parent.name == "best" else p.parent), p
    raise RunError(f"{p}: is neither a run folder nor a checkpoint (no {p.name}.index); "
                   f"give checkpoints/<run> or checkpoints/<run>/ckpt-N.")


def build_model(cfg: Config, num_classes: int, input_shape=(32, 32, 3), steps_per_epoch: int = 0):
    """The model a run's config describes, for images of input_shape (H, W, C) (the one place that
    turns config.json into a network); with --qat, as its int8 network (quantize.Quantized, whose batch
    norms freeze after qat_freeze_bn * steps_per_epoch training steps).  A shape the network cannot take
    is a ConfigError, and so is bfloat16 on kernels that have no bfloat16 convolutions."""
    from lowlevel import kernels, nets, quantize

    if cfg.precision == "bfloat16" and kernels.bfloat16_problem():
        raise ConfigError(f"--precision bfloat16: {kernels.bfloat16_problem()}; train in float32 (the default; "
                          f"TensorFlow's Eigen kernels, TF_ENABLE_ONEDNN_OPTS=0, have bfloat16 but train about 12x "
                          f"slower).")

    try:
        net = nets.build(cfg.model, tuple(input_shape), num_classes, alpha=cfg.alpha, dropout=cfg.dropout,
                         bn_momentum=cfg.bn_momentum, precision=cfg.precision)
    except ValueError as e:
        raise ConfigError(f"--model {cfg.model} on --dataset {cfg.dataset}: {e}") from None
    if not cfg.qat:
        return net
    if not hasattr(net, "conv_layers"):
        raise ConfigError(f"--qat: --model {cfg.model} does not list its convolutions and batch norms "
                          f"(conv_layers), so they cannot be folded; choose another model.")
    floats = net.float_activations() if hasattr(net, "float_activations") else []
    if floats:
        raise ConfigError(f"--qat: --model {cfg.model}: LiteRT has no int8 kernel for the {floats[0][1]} of "
                          f"{floats[0][0]}, so no int8 file could compute it; choose a network with ReLU or ReLU6.")
    try:
        return quantize.Quantized(net, cfg.qat, int(cfg.qat_freeze_bn * steps_per_epoch))
    except ValueError as e:
        raise ConfigError(f"--qat: --model {cfg.model}: {e}; choose a network whose batch norms follow their "
                          f"convolutions, or one without batch norms.") from None


def normalization_type(cfg: Config) -> type:
    """How a run normalizes its pixels: pipeline.Normalization, or with --qat as its int8 file does
    (quantize.IntegerNormalization: the same statistics, the bias on the file's integer grid)."""
    from lowlevel import pipeline, quantize

    return quantize.IntegerNormalization if cfg.qat else pipeline.Normalization


@dataclasses.dataclass
class Loaded:
    run: Path  # the run folder
    prefix: Path  # the checkpoint restored
    config: Config
    model: object  # the network (lowlevel.nets), its variables restored
    normalization: object  # pipeline.Normalization the run trained with
    data: object  # datasets.Dataset the run evaluates on
    note: str = ""  # a notice for the user, e.g. that the normalization had to be recomputed
    weights: str = "trained"  # which weights `model` holds: "trained" or "averaged" (--ema, lowlevel/ema.py)


WEIGHTS = ("", "averaged", "trained")  # load's choice ("": the averaged ones if the run has them)


def load(path: str | Path, best: bool = False, data_path: str = "", precision: str = "",
         weights: str = "") -> Loaded:
    """Restore a run's model from a run folder or a checkpoint prefix, with its config, normalization
    and data.  precision: build the model in this one instead of the run's (the variables are float32
    in every precision, so they restore alike; export uses "float32").  weights: "trained", or
    "averaged" (the moving average of a run trained with --ema); empty: averaged if the run has them.
    Errors (RunError, ConfigError, datasets.DataError) are one sentence."""
    from lowlevel._tf import tf

    from lowlevel import datasets, kernels, pipeline

    run, prefix = locate(path, best)
    if not (run / "config.json").is_file():
        raise RunError(f"{run}: has no config.json, so the model cannot be rebuilt; "
                       f"give a run folder written by python -m lowlevel.train.")
    cfg = Config.from_json(run / "config.json")
    note = ""
    if not precision and cfg.precision == "bfloat16" and kernels.bfloat16_problem():
        precision = "float32"  # the same variables; only the convolutions' arithmetic is finer
        note = f"note: {run} was trained in bfloat16, measured here in float32: {kernels.bfloat16_problem()}"
    if precision:
        cfg = dataclasses.replace(cfg, precision=precision)
    verify(prefix)
    data = datasets.load(cfg.dataset, data_path or cfg.data, cfg.split_seed)
    if weights == "averaged" and not cfg.ema:
        raise RunError(f"{run}: was trained with --ema 0 (or before the moving average existed), so it has no "
                       f"averaged weights; leave out --weights averaged to use its trained ones.")
    weights = weights or ("averaged" if cfg.ema else "trained")
    model = build_model(cfg, len(data.label_names), data.train_images.shape[1:])
    objects = {"averaged" if weights == "averaged" else "model": model}
    if has_normalization(prefix):
        norm = objects["normalization"] = normalization_type(cfg).placeholder(data.train_images.shape[-1])
    else:  # a run from before the statistics were saved: recompute them as it did
        train_x, _, _, _ = pipeline.split_validation(data.train_images, data.train_labels, cfg.val_size)
        norm = normalization_type(cfg).of(train_x)
        note = "\n".join(filter(None, [note, f"note: {prefix} predates saved normalization statistics; they "
                                            f"were recomputed from {data_path or cfg.data or 'data'}"]))
    try:
        tf.train.Checkpoint(**objects).read(str(prefix)).assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise RunError(f"{prefix}: cannot be restored into the model its config.json describes "
                       f"({first_line(e)}); it is from another run or another version of lowlevel.") from None
    return Loaded(run, prefix, cfg, model, norm, data, note, weights)
