"""Downloading a data set safely: stream to a temporary file, check its MD5, unpack only plain files
into a temporary folder, and rename the result into place last, so an interrupted or corrupt
download never leaves something that looks complete."""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

from lowlevel.datasets import DataError


def fetch(url: str, dest: Path, md5: str, progress: bool = True) -> None:
    """Stream `url` into `dest` and check its MD5; a failure is a DataError and deletes `dest`."""
    digest = hashlib.md5()
    if urllib.parse.urlparse(url).scheme not in ("http", "https", "ftp", "file"):
        raise DataError(f"--url {url!r}: is not an address lowlevel can download from; give one starting with "
                        f"https:// (or http://, ftp://, file://).")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, shown = 0, -1
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress and total:
                    pct = 100 * done // total
                    if pct != shown and (sys.stderr.isatty() or pct % 10 == 0):
                        end = "\r" if sys.stderr.isatty() and pct < 100 else "\n"
                        print(f"downloading {dest.name}: {pct:3d}% ({done / 1e6:.1f}/{total / 1e6:.1f} MB)",
                              end=end, file=sys.stderr, flush=True)
                        shown = pct
            if total and done != total:
                raise DataError(f"{url}: the download stopped after {done} of {total} bytes; try again.")
    except OSError as e:  # URLError, HTTPError, timeouts, disk full
        dest.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e.strerror or e
        raise DataError(f"{url}: the download failed ({reason}); check the address and your "
                        f"connection, or download {dest.name} yourself into the data folder.") from None
    except DataError:
        dest.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != md5:
        dest.unlink(missing_ok=True)
        raise DataError(f"{url}: the download's MD5 is {digest.hexdigest()}, not {md5}; it is corrupt or not "
                        f"the official file, so it was deleted; try again.")


def check_member(member: tarfile.TarInfo, archive: str, top: str) -> None:
    """Refuse anything but plain files and folders inside `top/`."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise DataError(f"{archive}: refused the unsafe path {member.name!r} in the archive; "
                        f"it is not the official archive.")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refused {member.name!r}, a link or device, in the archive; "
                        f"it is not the official archive.")
    if name.parts[0] != top:
        raise DataError(f"{archive}: refused {member.name!r}, outside {top}/, in the archive; "
                        f"it is not the official archive.")


def into_place(directory: str | os.PathLike, folder: str, fill: Callable[[Path], Path]) -> Path:
    """Make `directory/folder` by `fill(work)`, which downloads into the temporary folder `work`
    and returns the finished folder inside it; that is then renamed into place.  A folder that
    already exists is left alone and returned."""
    directory = Path(directory)
    target = directory / folder
    if target.is_dir():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder}-download-", dir=directory))
    except OSError as e:
        raise DataError(f"{directory}: cannot create a folder there ({e.strerror}); "
                        f"choose another with --dir.") from None
    try:
        os.replace(fill(work), target)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # zlib.error: a damaged compressed stream
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise DataError(f"{directory}: the download could not be unpacked or saved ({reason}); try again.") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def unpack(archive: Path, url: str, top: str, out: Path) -> Path:
    """Extract the .tar.gz `archive` (downloaded from `url`) into `out`, refusing anything but plain
    files under `top/`; returns out/top."""
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            check_member(m, url, top)
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(out, members=members, **kwargs)
    if not (out / top).is_dir():
        raise DataError(f"{url}: the archive holds no {top}/ folder; it is not the official archive.")
    return out / top
