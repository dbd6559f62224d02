"""A run's checkpoints: which exist, which can be trusted, which is the latest, and setting later ones aside.

    ckpt-<step>.index                   a checkpoint: the index (names, shapes, offsets, checksums)
    ckpt-<step>.data-00000-of-00001     and the values
    checkpoint                          TensorFlow's list of the kept checkpoints, the latest last
    best/                               the same for the best by validation accuracy

TensorFlow saves a checkpoint whole and names it in `checkpoint` only once it is complete,
but does not notice a truncated or missing file until it restores, and then fails with a
traceback; and it reads an unparsable `checkpoint` list as "no checkpoint yet"
(tensorflow/tensorflow#35148).  So a checkpoint is trusted only after `verify` has read every
value back through TensorFlow's checksums, and the list is parsed strictly (`read_state`).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import time
from pathlib import Path

from lowlevel.errors import RunError, WriteError, first_line
from lowlevel.files import write_text


class DamagedCheckpoint(RunError):
    """A checkpoint whose files are missing, empty, truncated or fail their checksums."""

    def __init__(self, file: Path, problem: str):
        self.file, self.problem = Path(file), problem
        super().__init__(f"{file}: {problem}")

    def sentence(self, command: str) -> str:
        """'...; the checkpoints ckpt-20 and ckpt-10 are intact: use one with <command> --checkpoint .../ckpt-20'."""
        folder = self.file.parent
        run = folder.parent if folder.name == "best" else folder
        others = [p for p in intact(run) if p.name != self.file.name.split(".")[0]]
        if not others:
            return f"{self}; the run has no intact checkpoint left."
        return (f"{self}; the checkpoints {names(others, run)} are intact: use one with "
                f"{command} --checkpoint {shlex.quote(str(others[0]))}")


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

    def sentence(self, command: str) -> str:
        run = self.path.parent.parent if self.path.parent.name == "best" else self.path.parent
        if not self.intact:
            return f"{self}; none of them is intact."
        return (f"{self}; the intact ones are {names(self.intact, run)}: use one with {command} --checkpoint "
                f"{shlex.quote(str(self.intact[0]))}")


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


def latest(folder: Path) -> Path | None:
    """The checkpoint `folder/checkpoint` names as the latest (its files not checked), or None."""
    state = read_state(folder)
    return Path(folder) / os.path.basename(state.model_checkpoint_path) if state else None


def names(prefixes: list[Path], run: Path) -> str:
    """'ckpt-20, ckpt-10 and best/ckpt-20': checkpoint prefixes relative to the run folder."""
    rel = [str(p.relative_to(run)) if p.is_relative_to(run) else str(p) for p in prefixes]
    return rel[0] if len(rel) == 1 else ", ".join(rel[:-1]) + " and " + rel[-1]


def has_normalization(prefix: Path) -> bool:
    """Whether the checkpoint holds the normalization statistics (checkpoints of older versions of lowlevel lack them)."""
    from lowlevel._tf import tf

    return any(k.startswith("normalization/") for k in tf.train.load_checkpoint(str(prefix))
               .get_variable_to_shape_map())
