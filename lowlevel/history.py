"""history.csv: a row per epoch of a run, read only after every row has been checked.

    epoch,step,train_loss,train_accuracy,val_loss,val_accuracy,lr,images_per_s,elapsed_s,kernels
    1,351,1.81,0.36,1.55,0.44,0.1,402.1,121.3,oneDNN:avx512_core_bf16:2x2

Epochs and steps rise strictly from row to row (a gap is allowed: rows set aside after damage
leave one); every number parses (a run without validation images has empty validation
columns).  `kernels` (lowlevel.kernels.short) is absent from runs made before it existed.
A file that breaks a rule is a DamagedHistory naming the line, carrying the good rows
before it, so that `train --resume` can keep them and set the file aside, and `plots` can
say what is wrong in one sentence.
"""
from __future__ import annotations

import csv
import io
import math
import shutil
import time
from pathlib import Path

from lowlevel.errors import RunError, WriteError
from lowlevel.files import write_text

FIELDS = ["epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_s",
          "elapsed_s", "kernels"]
OPTIONAL = ("kernels",)  # added later: older runs' files lack it
WHOLE = ("epoch", "step")
BLANK_ALLOWED = ("val_loss", "val_accuracy")  # --val-size 0


class DamagedHistory(RunError):
    """history.csv breaks a rule; `rows` are the good rows before the first bad one."""

    def __init__(self, path: Path, problem: str, rows: list[dict]):
        self.path, self.problem, self.rows = Path(path), problem, rows
        super().__init__(f"{path}: {problem}")


def read(path: Path) -> list[dict]:
    """Every row of history.csv as a dict of numbers (and the kernels string); [] if there is no file."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise DamagedHistory(path, "is not text", []) from None
    except OSError as e:
        raise DamagedHistory(path, f"cannot be read ({e.strerror})", []) from None
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        raise DamagedHistory(path, "is empty (not even the header line)", [])
    header = lines[0]
    missing = [f for f in FIELDS if f not in header and f not in OPTIONAL]
    unknown = [f for f in header if f not in FIELDS]
    if missing or unknown or len(set(header)) != len(header):
        what = f"lacks the columns {missing}" if missing else f"has unknown or repeated columns {unknown or header}"
        raise DamagedHistory(path, f"line 1 {what}; it was not written by python -m lowlevel.train", [])
    rows: list[dict] = []
    for number, fields in enumerate(lines[1:], start=2):
        problem = _problem(header, fields, rows[-1] if rows else None)
        if problem:
            raise DamagedHistory(path, f"line {number} {problem}", rows)
        rows.append(_parse(header, fields))
    return rows


def _problem(header: list[str], fields: list[str], previous: dict | None) -> str:
    """What is wrong with one row ('' if nothing), given the row before it."""
    if len(fields) != len(header):
        return f"has {len(fields)} fields, not {len(header)}"
    for name, value in zip(header, fields):
        if name == "kernels" or (name in BLANK_ALLOWED and value == ""):
            continue
        try:
            number = int(value) if name in WHOLE else float(value)
        except ValueError:
            return f"has {name} {value!r}, not a number"
        if name in WHOLE and number < 1:
            return f"has {name} {number}, not a positive whole number"
        if name not in BLANK_ALLOWED and not math.isfinite(number):
            return f"has {name} {value}, not a finite number"
    row = _parse(header, fields)
    if previous is not None and not (row["epoch"] > previous["epoch"] and row["step"] > previous["step"]):
        return f"repeats or goes back to epoch {row['epoch']} (step {row['step']}) after epoch {previous['epoch']}"
    return ""


def _parse(header: list[str], fields: list[str]) -> dict:
    row: dict = {}
    for name, value in zip(header, fields):
        if name == "kernels":
            row[name] = value
        elif name in WHOLE:
            row[name] = int(value)
        else:
            row[name] = float(value) if value != "" else float("nan")
    return row


def write(path: Path, rows: list[dict]) -> None:
    """history.csv from `rows`, whole or not at all; a missing value (an older row's kernels) left empty."""
    text = io.StringIO()
    w = csv.DictWriter(text, FIELDS)
    w.writeheader()
    w.writerows(rows)
    write_text(path, text.getvalue())


def resume(run: Path, epochs_done: int) -> list[dict]:
    """history.csv's rows for the epochs a checkpoint covers (a crash may have left one more).

    A damaged file is moved into run/set-aside-<time>/ (not deleted), and its good rows before the
    damage are kept, with a note: the run goes on, and the rows can still be recovered by hand.
    """
    path = run / "history.csv"
    try:
        rows = read(path)
    except DamagedHistory as e:
        rows = e.rows
        aside = run / time.strftime("set-aside-%Y%m%d-%H%M%S")
        try:
            aside.mkdir(exist_ok=True)
            shutil.move(str(path), aside / path.name)
        except OSError as err:
            raise WriteError(aside / path.name, err) from None
        print(f"note: {e}; it was moved to {aside / path.name} and its {len(rows)} good rows before the damage "
              f"kept", flush=True)
    return [r for r in rows if r["epoch"] <= epochs_done]
