"""A user's mistake is one sentence and exit status 2: the error classes, and the one helper every
command's `main` runs its work through.

    UserError                 a problem the user can fix, told in one sentence
      ConfigError             a bad flag or config.json              (lowlevel.config)
      DataError               a bad data file or download            (lowlevel.datasets)
      RunError                the run folder or its checkpoints      (lowlevel.runs, lowlevel.checkpoints)
        WriteError            a file that could not be written (a full disk, no permission)

An error may know the way out better than its message: `sentence(command)` adds it (a damaged
checkpoint names the intact ones and how to use one with that command).  This module imports
nothing of lowlevel, so every other module may import it.
"""
from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Callable


class UserError(Exception):
    """A problem with what the user gave (flags, files), told in one sentence."""

    def sentence(self, command: str) -> str:
        """The message as `command` (e.g. "python -m lowlevel.evaluate") prints it, with the way out."""
        return str(self)


class ConfigError(UserError, ValueError):
    """A bad flag or config.json."""


class DataError(UserError, ValueError):
    """A problem with the user's data files."""


class RunError(UserError):
    """A problem with the run folder or its checkpoints."""


class WriteError(RunError):
    """A file of the run could not be written (a full disk, no permission)."""

    def __init__(self, path: Path, error: BaseException | str):
        self.path = Path(path)
        self.reason = error if isinstance(error, str) else reason(error)
        self.errno = getattr(error, "errno", None)
        super().__init__(f"{path}: could not be written ({self.reason})")

    def sentence(self, command: str) -> str:
        return f"{self}; {advice(self)}"


def reason(e: BaseException) -> str:
    """Why a write failed: an OSError's strerror, or the end of a TensorFlow error's message
    ("...part-00000; No space left on device [Op:SaveV2]" -> "No space left on device")."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = getattr(e, "message", None) or str(e)
    return text.split("; ")[-1].split(" [Op:")[0].strip()


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


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message in one line: whitespace collapsed, cut at a word boundary past `limit`."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def path_error(e: OSError) -> str:
    """An OSError about a path the user gave (a name too long, a file where a folder should be)."""
    return f"{e.filename}: {(e.strerror or str(e)).lower()}; check the path you gave."


def as_command(command: str, call: Callable[[], object]) -> int:
    """Run call() for `command` (e.g. "python -m lowlevel.evaluate"): its return value (None: 0) is the
    exit status; a UserError or an OSError about a path becomes one sentence on stderr and exit status 2."""
    try:
        status = call()
        return 0 if status is None or not isinstance(status, int) else status
    except UserError as e:
        message = e.sentence(command)
    except OSError as e:
        message = path_error(e)
    print(f"error: {message}", file=sys.stderr)
    return 2
