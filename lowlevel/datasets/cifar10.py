"""Reading CIFAR-10's `cifar-10-batches-py` safely, and downloading it.

The official "python version" of CIFAR-10 is six pickles and a meta file:

    cifar-10-batches-py/
        data_batch_1 .. data_batch_5   10,000 training images each
        test_batch                     10,000 test images
        batches.meta                   label_names: the 10 class names

Each batch is a dict with `data`, a uint8 array [10000, 3072] whose rows hold
1024 red, then 1024 green, then 1024 blue values (each plane row-major 32x32),
and `labels`, 10,000 ints in 0..9.  So one row reshaped to [3, 32, 32] is
channel-first; `load` transposes it to [32, 32, 3] (channel-last, NHWC), the
layout TensorFlow's CPU convolutions want.

A pickle is a program: `pickle.load` on a file you did not write can run any
code.  `_SafeUnpickler` only lets a pickle build numpy arrays, by allowing the
handful of globals an array needs and refusing every other one before it is
called.  This module does not import TensorFlow.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import sys
import warnings
from pathlib import Path

import numpy as np

from lowlevel.datasets import DataError, Dataset, fetch, find_folder

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
ROW_LENGTH = 32 * 32 * 3

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
# an official batch file is 31,035,704 bytes (10,000 rows of 3,072 pixels, labels, file names); twice
# that bounds any encoding of it, and stops a huge file from being read into memory
MAX_BYTES = 64 * 2**20
MD5 = "c58f30108f718f92721af3b95e74349a"


# The whole data set in memory (about 180 MB): train_images uint8 [50000, 32, 32, 3], train_labels int64
# [50000] in 0..9, test_images [10000, 32, 32, 3], test_labels [10000], label_names the 10 class names.
CIFAR10 = Dataset


# ---------------------------------------------------------------- unpickling

def _numpy_core():
    """numpy 2 moved `numpy.core` to `numpy._core`; return whichever exists."""
    return getattr(np, "_core", None) or np.core


class _Refused(Exception):
    """Something a CIFAR-10 file never holds; read_pickle names the file."""


def _plain(dtype) -> np.dtype:
    """`dtype` if it is a plain number type (bool, int, uint, float: no objects, fields or flags)."""
    if not (isinstance(dtype, np.dtype) and dtype.kind in "biuf" and dtype.fields is None
            and dtype.subdtype is None and not dtype.hasobject):
        raise _Refused(f"the array type {dtype!r}")
    return dtype


def _safe_dtype(obj, align=False, copy=False) -> np.dtype:
    """numpy.dtype, for a number type's code only (b"u1", "<i8", ...)."""
    if not isinstance(obj, (str, bytes)) or align not in (0, 1, False, True) or copy not in (0, 1, False, True):
        raise _Refused(f"the array type {obj!r}")
    try:
        return _plain(np.dtype(obj.decode("latin1") if isinstance(obj, bytes) else obj))
    except TypeError:
        raise _Refused(f"the array type {obj!r}") from None


def _allowed_globals() -> dict[tuple[str, str], object]:
    core = _numpy_core()
    reconstruct = core.multiarray._reconstruct
    frombuffer = core.numeric._frombuffer
    import _codecs

    def safe_reconstruct(subtype, shape, typecode):
        if subtype is not np.ndarray:
            raise _Refused(f"an array of class {subtype!r}")
        return reconstruct(subtype, shape, typecode)

    def safe_frombuffer(buf, dtype, shape, order):
        return frombuffer(buf, _plain(dtype), shape, order)

    return {
        # the official files (Python 2, protocol 2) and numpy 1 pickles
        ("numpy.core.multiarray", "_reconstruct"): safe_reconstruct,
        # numpy 2 pickles, protocols 2-4
        ("numpy._core.multiarray", "_reconstruct"): safe_reconstruct,
        # numpy pickles at protocol 5 (out-of-band capable buffers)
        ("numpy.core.numeric", "_frombuffer"): safe_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): safe_frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
        # Python 3 writes bytes as _codecs.encode(str, "latin1") at protocol 2
        ("_codecs", "encode"): _codecs.encode,
    }


# The state a plain number dtype is pickled with (numpy's dtype.__reduce__, version 3):
# (3, byte order, subarray, names, fields, elsize, alignment, flags)
_DTYPE_STATE_TAIL = (None, None, None, -1, -1, 0)


class _SafeUnpickler(pickle._Unpickler):
    """An unpickler that can build numpy arrays of numbers, dicts, lists and strings, nothing else.

    Python's own (pure Python) unpickler, so that BUILD, the opcode that sets an object's state,
    can be checked too: numpy's dtype.__setstate__ would otherwise accept any flags, e.g. one
    claiming a uint8 array holds Python objects (numpy then fails when it frees the array, with
    an internal error printed to stderr).  Only a plain dtype's exact state and an array state
    of (version, shape, plain dtype, fortran order, raw bytes) are let through.
    """

    allowed = _allowed_globals()
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: Path, size: int):
        super().__init__(file, encoding="bytes")
        self.path, self.size = path, size

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.path}: refused to unpickle the global {module}.{name} "
                f"(only numpy arrays are allowed); this is not a CIFAR-10 file, "
                f"replace it with the official one."
            ) from None

    def persistent_load(self, pid):
        raise DataError(f"{self.path}: uses pickle persistent ids, which a CIFAR-10 file never does; "
                        f"replace it with the official one.")

    def load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            ok = (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
                  and state[1] in ("|", "<", ">", "=", b"|", b"<", b">", b"=") and state[2:] == _DTYPE_STATE_TAIL)
        elif type(inst) is np.ndarray:
            ok = (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype)
                  and isinstance(state[4], (bytes, bytearray)))
            if ok:
                _plain(state[2])
        else:
            ok = False
        if not ok:
            raise _Refused(f"the state {type(state).__name__} of a {type(inst).__name__}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def load_bytearray8(self):
        """BYTEARRAY8 (protocol 5): its length is at most the file's.  Python allocates and zeroes the
        bytearray before reading into it, so a damaged length of many gigabytes would exhaust memory."""
        size, = struct.unpack("<Q", self.read(8))
        if size > self.size:
            raise pickle.UnpicklingError(f"a bytearray of {size} bytes in a file of {self.size}")
        data = bytearray(size)
        self.readinto(data)
        self.append(data)

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _quiet():
    """While a pickle is read, a damaged file must end in one DataError sentence with nothing else
    on stderr: a warning is an error (numpy warns about some malformed dtypes, e.g. "align should
    be passed as Python or NumPy boolean"), and what C code can only print (CPython's
    "deallocated bytearray object has exported buffers", "Exception ignored in ...") is collected.
    Yields the list of what was collected."""
    ignored: list[BaseException] = []
    hooks = sys.unraisablehook, sys.excepthook
    sys.unraisablehook = lambda u: ignored.append(u.exc_value or RuntimeError("unraisable"))
    sys.excepthook = lambda kind, value, tb: ignored.append(value)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield ignored
    finally:
        sys.unraisablehook, sys.excepthook = hooks


def read_pickle(path: Path) -> dict[str, object]:
    """Unpickle `path` with `_SafeUnpickler`; return the dict with str keys."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise DataError(f"{path}: is {path.stat().st_size:,} bytes, more than any CIFAR-10 batch file (about "
                            f"31 MB); it is not one: download CIFAR-10 again.")
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}); check the file's permissions.") from None
    if not raw:
        raise DataError(f"{path}: the file is empty; download CIFAR-10 again.")
    obj, refused, failure = None, None, None
    with _quiet() as ignored:
        try:
            obj = _SafeUnpickler(io.BytesIO(raw), path, len(raw)).load()
        except DataError as e:
            refused = e.with_traceback(None)  # no frame: nothing the unpickler built outlives _quiet
        except _Refused as e:
            refused = DataError(f"{path}: holds {e}, which no CIFAR-10 file does; replace it with the official one.")
        except Exception as e:  # noqa: BLE001 - truncated, not a pickle, or a malformed one
            failure = type(e).__name__
    if refused is not None:
        raise refused
    if failure is None and ignored:
        failure = type(ignored[0]).__name__
    if failure is not None:
        raise DataError(f"{path}: is truncated or not a pickle ({failure}); download CIFAR-10 again.")
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}, not the dict a CIFAR-10 batch is; "
                        f"download CIFAR-10 again.")
    return {_text(k): v for k, v in obj.items()}


# ---------------------------------------------------------------- validation

def _batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file: images uint8 [N, 32, 32, 3], labels int64 [N]."""
    d = read_pickle(path)
    missing = [k for k in ("data", "labels") if k not in d]
    if missing:
        raise DataError(f"{path}: has no {' or '.join(repr(k) for k in missing)} entry; "
                        f"download CIFAR-10 again.")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array but is {kind}; download CIFAR-10 again.")
    if data.ndim != 2 or data.shape[1] != ROW_LENGTH:
        raise DataError(f"{path}: 'data' must have rows of {ROW_LENGTH} values but has shape "
                        f"{list(data.shape)}; download CIFAR-10 again.")
    try:
        labels = np.asarray(d["labels"])
    except Exception:
        labels = np.asarray([])
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{path}: 'labels' must be a list of integers; download CIFAR-10 again.")
    labels = labels.astype(np.int64)
    if len(labels) != len(data):
        raise DataError(f"{path}: has {len(data)} images but {len(labels)} labels; "
                        f"download CIFAR-10 again.")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: has labels outside 0..{NUM_CLASSES - 1} "
                        f"(from {labels.min()} to {labels.max()}); download CIFAR-10 again.")
    # [N, 3072] -> [N, 3, 32, 32] (planes R, G, B) -> [N, 32, 32, 3]
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _label_names(path: Path) -> tuple[str, ...]:
    d = read_pickle(path)
    names = d.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES:
        raise DataError(f"{path}: must list {NUM_CLASSES} 'label_names'; download CIFAR-10 again.")
    return tuple(_text(n) for n in names)


def find(path: str | os.PathLike) -> Path:
    """The `cifar-10-batches-py` folder: `path` itself, or `path/cifar-10-batches-py`."""
    return find_folder(path, [FOLDER], FOLDER, "cifar10")


def load(path: str | os.PathLike) -> CIFAR10:
    """Load the whole data set from `cifar-10-batches-py` or the folder above it.

    Raises `DataError` with one sentence naming the file and the fix for a
    missing, empty, truncated, malicious or malformed file.
    """
    folder = find(path)
    names = (*TRAIN_FILES, TEST_FILE, META_FILE)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}; it must hold the CIFAR-10 python "
                        f"batches (fetch them with `python -m lowlevel.data download`).")
    train = [_batch(folder / n) for n in TRAIN_FILES]
    test_images, test_labels = _batch(folder / TEST_FILE)
    return CIFAR10(
        train_images=np.concatenate([x for x, _ in train]),
        train_labels=np.concatenate([y for _, y in train]),
        test_images=test_images,
        test_labels=test_labels,
        label_names=_label_names(folder / META_FILE),
    )


# ---------------------------------------------------------------- download

def download(directory: str | os.PathLike = "data", url: str = URL, md5: str = MD5,
             progress: bool = True) -> Path:
    """Download, verify and unpack CIFAR-10 into `directory/cifar-10-batches-py` (see datasets/fetch.py:
    the MD5 is checked, only plain files under `cifar-10-batches-py/` are unpacked, and the folder
    appears only when complete).  Returns the folder; one that already exists is left alone."""
    def fill(work: Path) -> Path:
        archive = work / ARCHIVE
        fetch.fetch(url, archive, md5, progress)
        return fetch.unpack(archive, url, FOLDER, work / "out")
    return fetch.into_place(directory, FOLDER, fill)
