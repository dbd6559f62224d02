"""The run folder: where a run lives, who may write it, which checkpoints can be trusted, and loading one.

    checkpoints/<run>/
        config.json                 the run's settings (lowlevel.config), written once
        history.csv                 a row per epoch
        learning_curves.png         redrawn at every epoch's end
        checkpoint                  TensorFlow's list of the kept checkpoints, the latest last
        ckpt-<step>.index           a checkpoint: the index (names, shapes, offsets, checksums)
        ckpt-<step>.data-00000-of-00001      and the values
        best/ckpt-<step>.*          the best by validation accuracy
        .lock                       held by the one process training the run (its id inside)

Every file lowlevel writes here is written whole or not at all: to a temporary
name, then renamed over the old one (`atomic_write`); TensorFlow saves a
checkpoint the same way and names it in `checkpoint` only once it is complete.
A checkpoint is only trusted after `verify` has read every value back through
TensorFlow's checksums, because TensorFlow itself does not notice a truncated
or missing file until it restores, and then fails with a traceback.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable

from lowlevel.config import Config, ConfigError


class RunError(Exception):
    """A problem with the run folder or its checkpoints, told in one sentence."""


class WriteError(RunError):
    """A file of the run could not be written (a full disk, no permission)."""

    def __init__(self, path: Path, error: BaseException | str):
        self.path = Path(path)
        self.reason = error if isinstance(error, str) else reason(error)
        self.errno = getattr(error, "errno", None)
        super().__init__(f"{path}: could not be written ({self.reason})")


def advice(e: WriteError) -> str:
    """What to do about a failed write, by its cause."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT) or "space" in e.reason.lower():
        return "free some space and run the command again."
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) or "permission" in e.reason.lower():
        return "make the folder writable, or write elsewhere, and run the command again."
    if e.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return "a file stands where a folder is needed (or the other way round): move it away and run again."
    if e.errno == errno.ENAMETOOLONG:
        return "use a shorter name."
    return "fix the cause and run the command again."


def reason(e: BaseException) -> str:
    """Why a write failed: an OSError's strerror, or the end of a TensorFlow error's message
    ("...part-00000; No space left on device [Op:SaveV2]" -> "No space left on device")."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = getattr(e, "message", None) or str(e)
    return text.split("; ")[-1].split(" [Op:")[0].strip()


class DamagedCheckpoint(RunError):
    """A checkpoint whose files are missing, empty, truncated or fail their checksums."""

    def __init__(self, file: Path, problem: str):
        self.file, self.problem = Path(file), problem
        super().__init__(f"{file}: {problem}")


# ---------------------------------------------------------------- writing

def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) for a temporary file beside `path`, then rename it to `path`.

    A reader sees the old file or the new one, never half of one; if anything
    fails, `path` is untouched, the temporary file is removed, and WriteError
    names `path` and the reason (e.g. "No space left on device").
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # one per writer
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise WriteError(path, e) from None


def check_writable(folder: Path) -> None:
    """WriteError now, before any work, if a file cannot be created in `folder` (a probe file is made
    and removed: permissions alone do not tell, e.g. for root or a read-only mount)."""
    probe = Path(folder) / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as e:
        raise WriteError(folder, e) from None


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


# ---------------------------------------------------------------- one writer

def lock(run: Path, doing: str = "trained by", path: Path | None = None):
    """Hold an exclusive lock on `run` for the life of this process; RunError if another holds it
    ("... is being {doing} another process"; export: "exported into by").  path: the lock file
    (default run/.lock; an export folder's is beside it, so the folder holds only what was exported).

    `fcntl.flock` on run/.lock: the kernel drops the lock when its process ends,
    however it ends (SIGKILL included), so a killed run never blocks its --resume.
    Returns the open lock file, which must stay referenced while training.
    """
    path = Path(path or Path(run) / ".lock")
    try:
        f = open(path, "a+")
    except OSError as e:
        raise WriteError(path, e) from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise WriteError(path, e) from None
        raise RunError(f"{run}: is being {doing} another process (id {pid}); wait for it to end, or stop it "
                       f"(kill {pid}), and run the command again.") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
    except OSError as e:
        f.close()
        raise WriteError(path, e) from None
    return f


def refuse_if_locked(run: Path) -> None:
    """RunError naming the process that is training `run`, if one is (the lock is taken and released)."""
    if (Path(run) / ".lock").is_file():
        lock(run).close()


# ---------------------------------------------------------------- checkpoints

_STEP = re.compile(r"ckpt-(\d+)$")


def step_of(prefix: str | Path) -> int:
    """The step number of a checkpoint prefix .../ckpt-<step>."""
    m = _STEP.search(str(prefix))
    return int(m.group(1)) if m else -1


def checkpoints_in(folder: Path) -> list[Path]:
    """The checkpoint prefixes in `folder` that have an index or a data file, newest (highest step) first."""
    found = {Path(str(p).split(".index")[0].split(".data-")[0]) for p in Path(folder).glob("ckpt-*")
             if p.is_file() and (p.name.endswith(".index") or ".data-" in p.name)}
    return sorted((p for p in found if step_of(p) >= 0), key=step_of, reverse=True)


def verify(prefix: str | Path) -> None:
    """Raise DamagedCheckpoint unless every file of the checkpoint exists and every value reads back.

    Checked in order: the index (missing, empty, not a valid table), the data
    shards it needs (missing, empty), then every tensor, read through TensorFlow's
    CRC32C checksums (a truncated shard, a flipped byte).  Reads the whole
    checkpoint: about 40 MB, well under a second, for the default MobileNet.
    """
    from lowlevel._tf import tf

    prefix = Path(prefix)
    index = Path(f"{prefix}.index")
    if not index.is_file():
        raise DamagedCheckpoint(index, "is missing")
    if index.stat().st_size == 0:
        raise DamagedCheckpoint(index, "is empty")
    shards = sorted(prefix.parent.glob(f"{prefix.name}.data-*-of-*"))
    expected = int(shards[0].name.rsplit("-of-", 1)[1]) if shards else 1
    for i in range(expected):
        shard = Path(f"{prefix}.data-{i:05d}-of-{expected:05d}")
        if not shard.is_file():
            raise DamagedCheckpoint(shard, "is missing")
        if shard.stat().st_size == 0:
            raise DamagedCheckpoint(shard, "is empty")
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        keys = list(reader.get_variable_to_shape_map())
    except Exception as e:  # noqa: BLE001 - TensorFlow raises several kinds for a bad table
        raise DamagedCheckpoint(index, f"is damaged ({first_line(e)})") from None
    data = shard if expected == 1 else Path(f"{prefix}.data-*-of-{expected:05d}")
    for key in keys:
        try:
            reader.get_tensor(key)
        except Exception as e:  # noqa: BLE001 - IndexError for a short file, DataLossError for a bad checksum
            raise DamagedCheckpoint(data, f"is truncated or damaged ({first_line(e)})") from None


def intact(run: Path, before: int | None = None) -> list[Path]:
    """The checkpoints of `run` (and of run/best) that pass `verify`, newest first; only
    those before step `before` if given."""
    found = []
    for prefix in checkpoints_in(run) + checkpoints_in(run / "best"):
        if before is not None and step_of(prefix) >= before:
            continue
        try:
            verify(prefix)
            found.append(prefix)
        except DamagedCheckpoint:
            pass
    return sorted(found, key=step_of, reverse=True)


def set_aside_after(run: Path, step: int) -> Path | None:
    """Move every checkpoint of `run` and run/best later than `step` into run/set-aside-<time>/,
    and list in each folder's `checkpoint` file the ones left.  Returns that folder, or None if
    nothing moved.

    For `--from-checkpoint`: the run goes back to `step`, so later checkpoints belong to a
    future it will recompute; they are kept (a user may still want them), not deleted.  A
    damaged `checkpoint` file is moved there too, and a new one written from the files on disk.
    """
    moved_to = run / time.strftime("set-aside-%Y%m%d-%H%M%S")
    moved = False
    for folder in (run, run / "best"):
        dest = moved_to / folder.relative_to(run)
        later = [f for p in checkpoints_in(folder) if step_of(p) > step for f in p.parent.glob(f"{p.name}.*")]
        try:
            read_state(folder)
        except DamagedState:
            later.append(folder / "checkpoint")
        try:
            for f in later:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.move(str(f), dest / f.name)
        except OSError as e:
            raise WriteError(dest, e) from None
        moved = moved or bool(later)
        _write_state(folder, [p for p in checkpoints_in(folder) if step_of(p) <= step and
                              Path(f"{p}.index").is_file()])
    return moved_to if moved else None


def _write_state(folder: Path, prefixes: list[Path]) -> None:
    """folder/checkpoint listing `prefixes` (oldest first, the newest as the latest), as TensorFlow writes it."""
    from google.protobuf import text_format
    from tensorflow.python.checkpoint import checkpoint_management

    path = folder / "checkpoint"
    prefixes = sorted(prefixes, key=step_of)
    if not prefixes:
        if path.is_file():
            try:
                path.unlink()
            except OSError as e:
                raise WriteError(path, e) from None
        return
    times = [Path(f"{p}.index").stat().st_mtime for p in prefixes]
    state = checkpoint_management.generate_checkpoint_state_proto(
        str(folder), str(prefixes[-1]), [str(p) for p in prefixes], all_model_checkpoint_timestamps=times,
        last_preserved_timestamp=times[0])
    del state.all_model_checkpoint_paths[:]  # names relative to the folder, so the run can move
    state.all_model_checkpoint_paths.extend(p.name for p in prefixes)
    state.model_checkpoint_path = prefixes[-1].name
    write_text(path, text_format.MessageToString(state))


class DamagedState(RunError):
    """A `checkpoint` file (TensorFlow's list of a folder's checkpoints) that is missing or cannot be parsed
    although checkpoints are there; `intact` lists the checkpoints on disk that pass `verify`, newest first."""

    def __init__(self, path: Path, problem: str, intact: list[Path]):
        self.path, self.problem, self.intact = Path(path), problem, intact
        super().__init__(f"{path}: {problem}")


def read_state(folder: Path):
    """The CheckpointState of folder/checkpoint, parsed strictly; None when the folder holds no checkpoint.

    TensorFlow's own reader (`tf.train.get_checkpoint_state`) answers None for a file it cannot parse,
    and a resume would then start again from scratch (tensorflow/tensorflow#35148).  Here a missing,
    unparsable or empty list beside checkpoint files is a DamagedState naming the intact ones.
    """
    from google.protobuf import text_format
    from tensorflow.python.checkpoint import checkpoint_management

    folder = Path(folder)
    path = folder / "checkpoint"
    if not path.exists() and not checkpoints_in(folder):
        return None
    try:
        state = text_format.Parse(path.read_text(), checkpoint_management.CheckpointState())
        problem = "" if state.model_checkpoint_path else "names no latest checkpoint"
    except FileNotFoundError:
        problem = "is missing"
    except (OSError, UnicodeDecodeError, text_format.ParseError) as e:
        problem = f"cannot be read ({first_line(e)})"
    if problem:
        run = folder.parent if folder.name == "best" else folder
        raise DamagedState(path, f"the list of checkpoints {problem}, although checkpoints are there",
                           intact(run))
    return state


def check_state_file(folder: Path) -> None:
    """Refuse a folder whose `checkpoint` list is damaged although checkpoints exist (see read_state)."""
    read_state(folder)


def latest(folder: Path) -> Path | None:
    """The checkpoint `folder/checkpoint` names as the latest (its files not checked), or None."""
    state = read_state(folder)
    return Path(folder) / os.path.basename(state.model_checkpoint_path) if state else None


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message in one line: whitespace collapsed, cut at a word boundary past `limit`."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def instead(e: DamagedCheckpoint, command: str) -> str:
    """'the checkpoints ckpt-20 and ckpt-10 are intact: <command> one with <command> --checkpoint .../ckpt-20'."""
    import shlex

    folder = e.file.parent
    run = folder.parent if folder.name == "best" else folder
    others = [p for p in intact(run) if p.name != e.file.name.split(".")[0]]
    if not others:
        return "the run has no intact checkpoint left."
    return (f"the checkpoints {names(others, run)} are intact: use one with "
            f"{command} --checkpoint {shlex.quote(str(others[0]))}")


def as_command(command: str, call: Callable[[], object]) -> int:
    """Run call() for the command `command` (e.g. "python -m lowlevel.evaluate"): a problem with the
    user's files or flags becomes one sentence on stderr and exit status 2, with the way out."""
    import shlex
    import sys

    from lowlevel.datasets import DataError

    try:
        call()
        return 0
    except DamagedCheckpoint as e:
        message = f"{e}; {instead(e, command)}"
    except DamagedState as e:
        run = e.path.parent.parent if e.path.parent.name == "best" else e.path.parent
        message = f"{e}; " + (f"the intact ones are {names(e.intact, run)}: use one with {command} --checkpoint "
                              f"{shlex.quote(str(e.intact[0]))}" if e.intact else "none of them is intact.")
    except WriteError as e:
        message = f"{e}; {advice(e)}"
    except (RunError, ConfigError, DataError) as e:
        message = str(e)
    except OSError as e:  # a path the system refuses (a name too long, a file where a folder should be)
        message = path_error(e)
    print(f"error: {message}", file=sys.stderr)
    return 2


def path_error(e: OSError) -> str:
    """An OSError about a path the user gave, as one sentence."""
    return f"{e.filename}: {(e.strerror or str(e)).lower()}; check the path you gave."


def names(prefixes: list[Path], run: Path) -> str:
    """'ckpt-20, ckpt-10 and best/ckpt-20': checkpoint prefixes relative to the run folder."""
    rel = [str(p.relative_to(run)) if p.is_relative_to(run) else str(p) for p in prefixes]
    return rel[0] if len(rel) == 1 else ", ".join(rel[:-1]) + " and " + rel[-1]


# ---------------------------------------------------------------- loading a run

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


def build_model(cfg: Config, num_classes: int, input_shape=(32, 32, 3)):
    """The model a run's config describes, for images of input_shape (H, W, C) (the one place that
    turns config.json into a network).  A shape the network cannot take is a ConfigError."""
    from lowlevel import nets

    try:
        return nets.build(cfg.model, tuple(input_shape), num_classes, alpha=cfg.alpha, dropout=cfg.dropout,
                          bn_momentum=cfg.bn_momentum, precision=cfg.precision)
    except ValueError as e:
        raise ConfigError(f"--model {cfg.model} on --dataset {cfg.dataset}: {e}") from None


def has_normalization(prefix: Path) -> bool:
    """Whether the checkpoint holds the normalization statistics (runs since 2026-11-25 do)."""
    from lowlevel._tf import tf

    return any(k.startswith("normalization/") for k in tf.train.load_checkpoint(str(prefix))
               .get_variable_to_shape_map())


@dataclasses.dataclass
class Loaded:
    run: Path  # the run folder
    prefix: Path  # the checkpoint restored
    config: Config
    model: object  # the network (lowlevel.nets), its variables restored
    normalization: object  # pipeline.Normalization the run trained with
    data: object  # datasets.Dataset the run evaluates on
    note: str = ""  # a notice for the user, e.g. that the normalization had to be recomputed


def load(path: str | Path, best: bool = False, data_path: str = "", precision: str = "") -> Loaded:
    """Restore a run's model from a run folder or a checkpoint prefix, with its config, normalization
    and data.  precision: build the model in this one instead of the run's (the variables are float32
    in every precision, so they restore alike; export uses "float32").
    Errors (RunError, ConfigError, datasets.DataError) are one sentence."""
    from lowlevel._tf import tf

    from lowlevel import datasets, pipeline

    run, prefix = locate(path, best)
    if not (run / "config.json").is_file():
        raise RunError(f"{run}: has no config.json, so the model cannot be rebuilt; "
                       f"give a run folder written by python -m lowlevel.train.")
    cfg = Config.from_json(run / "config.json")
    if precision:
        cfg = dataclasses.replace(cfg, precision=precision)
    verify(prefix)
    data = datasets.load(cfg.dataset, data_path or cfg.data, cfg.split_seed)
    model = build_model(cfg, len(data.label_names), data.train_images.shape[1:])
    objects = {"model": model}
    note = ""
    if has_normalization(prefix):
        norm = objects["normalization"] = pipeline.Normalization.placeholder(data.train_images.shape[-1])
    else:  # a run from before the statistics were saved: recompute them as it did
        train_x, _, _, _ = pipeline.split_validation(data.train_images, data.train_labels, cfg.val_size)
        norm = pipeline.Normalization.of(train_x)
        note = (f"note: {prefix} predates saved normalization statistics; they were recomputed from "
                f"{data_path or cfg.data or 'data'}")
    try:
        tf.train.Checkpoint(**objects).read(str(prefix)).assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise RunError(f"{prefix}: cannot be restored into the model its config.json describes "
                       f"({first_line(e)}); it is from another run or another version of lowlevel.") from None
    return Loaded(run, prefix, cfg, model, norm, data, note)


__all__ = ["RunError", "WriteError", "DamagedCheckpoint", "ConfigError", "atomic_write", "write_text", "lock",
           "verify", "intact", "set_aside_after", "check_state_file", "latest", "locate", "build_model", "load"]
