"""Property-based tests of the CIFAR-10 readers: damaged files load correctly or fail with one sentence.

Every CIFAR-10 file, batches.meta and the archive given to the download are damaged at random
(truncated, a byte flipped, bytes inserted, a value of the wrong type).  The only outcomes
allowed: the data loads (and is well formed), or `DataError` with one sentence naming the file.
No other exception, no hang (each case is bounded by an alarm), nothing on stderr.
"""
import contextlib
import hashlib
import io
import os
import signal
import tarfile
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fakecifar
from lowlevel.datasets import cifar10

FILES = (*fakecifar.TRAIN_FILES, "test_batch", "batches.meta")
# CI: the same 800 cases per test every run (about 30 s in all).  A deeper, random search:
# LOWLEVEL_FUZZ_EXAMPLES=5000 python -m pytest tests/test_readers_fuzz.py
DEEP = int(os.environ.get("LOWLEVEL_FUZZ_EXAMPLES", "0"))
SETTINGS = settings(max_examples=DEEP or 800, deadline=None, derandomize=not DEEP, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CASE_SECONDS = 10  # a case taking longer counts as a hang


class Folder(tuple):
    def __repr__(self):  # hypothesis prints the fixtures of a failing case
        return f"<a tiny CIFAR-10 in {self[0]}>"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A good tiny CIFAR-10 and its files' bytes, restored after each case."""
    root = tmp_path_factory.mktemp("fuzz")
    fakecifar.write(root / cifar10.FOLDER, "py2")
    return Folder((root / cifar10.FOLDER, {n: (root / cifar10.FOLDER / n).read_bytes() for n in FILES}))


@contextlib.contextmanager
def bounded_and_silent():
    """Raise TimeoutError after CASE_SECONDS; yield a list that receives everything written to
    stderr: to file descriptor 2 (C code), to sys.stderr (Python, "Exception ignored in" reports),
    and warnings (which pytest would otherwise intercept)."""
    def alarm(signum, frame):
        raise TimeoutError(f"a reader case took more than {CASE_SECONDS} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CASE_SECONDS)
    saved = os.dup(2)
    written = []
    python_err = io.StringIO()
    with tempfile.TemporaryFile() as err, warnings.catch_warnings(record=True) as warned, \
            contextlib.redirect_stderr(python_err):
        warnings.simplefilter("always")
        os.dup2(err.fileno(), 2)
        try:
            yield written
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
            err.seek(0)
            written.append(err.read().decode(errors="replace") + python_err.getvalue() +
                           "".join(f"{w.category.__name__}: {w.message}\n" for w in warned))


def check_outcome(load):
    """Run load(); it must return a well-formed data set or raise a one-sentence DataError, silently."""
    with bounded_and_silent() as stderr:
        try:
            data = load()
            error = None
        except cifar10.DataError as e:
            error = str(e)
    assert stderr == [""], stderr
    if error is not None:
        assert "\n" not in error and error.endswith(".") and ": " in error, error
        return "error"
    assert data.train_images.dtype == np.uint8 and data.train_images.shape[1:] == (32, 32, 3)
    assert data.train_labels.min() >= 0 and data.train_labels.max() <= 9
    assert len(data.label_names) == 10 and all(isinstance(n, str) for n in data.label_names)
    return "loaded"


def damaged(folder, name, raw):
    path, originals = folder

    def load():
        (path / name).write_bytes(raw)
        try:
            return cifar10.load(path)
        finally:
            (path / name).write_bytes(originals[name])
    return load


@SETTINGS
@given(name=st.sampled_from(FILES), where=st.floats(0, 1))
def test_truncated(folder, name, where):
    raw = folder[1][name]
    check_outcome(damaged(folder, name, raw[:int(where * len(raw))]))


@SETTINGS
@given(name=st.sampled_from(FILES), where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255),
       header=st.booleans())
def test_a_byte_flipped(folder, name, where, xor, header):
    raw = bytearray(folder[1][name])
    # half the cases in the first 400 bytes, where the pickle's structure is; the rest is mostly pixels
    i = int(where * min(len(raw), 400)) if header else int(where * len(raw))
    raw[i] ^= xor
    check_outcome(damaged(folder, name, bytes(raw)))


@SETTINGS
@given(name=st.sampled_from(FILES), where=st.floats(0, 1), extra=st.binary(min_size=1, max_size=16))
def test_bytes_inserted(folder, name, where, extra):
    raw = folder[1][name]
    i = int(where * min(len(raw), 400))
    check_outcome(damaged(folder, name, raw[:i] + extra + raw[i:]))


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                   st.text(max_size=5), st.binary(max_size=5), st.lists(st.integers(-3, 12), max_size=5),
                   st.lists(st.text(max_size=3), max_size=12),
                   st.sampled_from([np.zeros((3, 3072), np.float32), np.zeros(3072, np.uint8),
                                    np.zeros((20, 3072), np.int64), np.zeros((20, 3071), np.uint8),
                                    np.arange(20) % 10, np.full(20, 10), np.full(20, -1)]))


@SETTINGS
@given(name=st.sampled_from(FILES), key=st.sampled_from([b"data", b"labels", b"label_names", b"other"]),
       value=VALUES, encoding=st.sampled_from(fakecifar.ENCODINGS[1:]))
def test_a_value_of_the_wrong_type(folder, name, key, value, encoding):
    rng = np.random.default_rng(0)
    if name == "batches.meta":
        d = {b"label_names": [n.encode() for n in fakecifar.LABELS], b"num_vis": 3072}
    else:
        d = fakecifar.batch_dict(rng.integers(0, 256, (20, 3072), dtype=np.uint8), np.arange(20) % 10, name)
    d[key] = value
    check_outcome(damaged(folder, name, fakecifar.dumps(d, encoding)))


class Archive(bytes):
    def __repr__(self):  # hypothesis prints the fixtures of a failing case
        return f"<the tiny CIFAR-10 as a .tar.gz, {len(self)} bytes>"


@pytest.fixture(scope="module")
def archive(folder):
    """The tiny CIFAR-10 as cifar-10-python.tar.gz bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder[0], arcname=cifar10.FOLDER)
    return Archive(buf.getvalue())


@SETTINGS
@given(how=st.sampled_from(["truncate", "flip", "insert"]), where=st.floats(0, 1, exclude_max=True),
       xor=st.integers(1, 255), extra=st.binary(min_size=1, max_size=16))
def test_a_damaged_archive(archive, tmp_path_factory, how, where, xor, extra):
    raw = bytearray(archive)
    i = int(where * len(raw))
    if how == "truncate":
        raw = raw[:i]
    elif how == "flip":
        raw[i] ^= xor
    else:
        raw[i:i] = extra
    work = tmp_path_factory.mktemp("download")
    (work / "mirror.tar.gz").write_bytes(bytes(raw))
    md5 = hashlib.md5(bytes(raw)).hexdigest()  # the damaged file as "expected": the unpacking itself is tested

    def load():
        return cifar10.load(cifar10.download(work / "data", url=(work / "mirror.tar.gz").as_uri(), md5=md5,
                                             progress=False))
    check_outcome(load)
    assert not list((work / "data").glob(".cifar10-download-*"))  # no temporary folder left behind


# ---------------------------------------------------------------- cases the search found

def test_a_dtype_whose_flags_claim_python_objects_is_refused(folder):
    """Found by the search above: a flipped byte in the dtype's flags made numpy think a uint8
    array held Python objects, and it printed "Internal error, `get_clear_loop` not set" when it
    freed the array.  Every flags value but 0 must be one DataError, silently."""
    raw = folder[1]["data_batch_1"]
    state = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffJ\x00\x00\x00\x00tb"  # ..., -1, -1, flags = 0) BUILD
    assert raw.count(state) == 1
    for flags in range(1, 256):
        bad = raw.replace(state, state[:11] + bytes([flags]) + state[12:])
        assert check_outcome(damaged(folder, "data_batch_1", bad)) == "error"


def test_a_huge_bytearray_length_is_refused_silently(folder):
    """Found by the search above: BYTEARRAY8 with a huge length made CPython's C unpickler print
    "SystemError: deallocated bytearray object has exported buffers"."""
    raw = folder[1]["data_batch_2"]
    assert check_outcome(damaged(folder, "data_batch_2", b"\x96\x01\xe3\xda" + raw)) == "error"


def test_a_bytearray_longer_than_the_file_is_refused_before_memory_is_spent(tmp_path):
    """BYTEARRAY8 of 16 GiB: Python's unpickler would allocate and zero it all before reading."""
    import struct
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 2 ** 34) + b"x" * 10 + b".")
    with bounded_and_silent() as stderr, pytest.raises(cifar10.DataError, match="is truncated or not a pickle"):
        cifar10.read_pickle(path)
    assert stderr == [""]
