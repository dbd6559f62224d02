"""Writing into a run's folder safely: whole files, one writer, a folder checked writable first.

Every file lowlevel writes is written whole or not at all: to a temporary name of its own
(one per writer, so two writers never share one), then renamed over the old file, so a reader
sees the old file or the new one, never half of one.  A lock (`flock`) keeps a second process
from training a run, or exporting into a folder, while one does.
"""
from __future__ import annotations

import errno
import fcntl
import os
import secrets
from pathlib import Path
from typing import Callable

from lowlevel.errors import RunError, WriteError


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) for a temporary file beside `path`, then rename it to `path`.

    If anything fails, `path` is untouched, the temporary file is removed, and WriteError
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


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def check_writable(folder: Path) -> None:
    """WriteError now, before any work, if a file cannot be created in `folder` (a probe file is made
    and removed: permissions alone do not tell, e.g. for root or a read-only mount)."""
    probe = Path(folder) / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as e:
        raise WriteError(folder, e) from None


def lock(run: Path, doing: str = "trained by", path: Path | None = None):
    """Hold an exclusive lock on `run` for the life of this process; RunError if another holds it
    ("... is being {doing} another process"; export: "exported into by").  path: the lock file
    (default run/.lock; an export folder's is beside it, so the folder holds only what was exported).

    `fcntl.flock`: the kernel drops the lock when its process ends, however it ends (SIGKILL
    included), so a killed run never blocks its --resume.  Returns the open lock file, which
    must stay referenced while the work goes on.
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
