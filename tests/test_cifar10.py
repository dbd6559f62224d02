"""The CIFAR-10 reader: both encodings, the exact pixel layout, and one sentence for every bad file."""
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

import fakecifar
from lowlevel.datasets import cifar10
from lowlevel.datasets import DataError


def test_loads_every_encoding_with_channel_planes_transposed(cifar_any_encoding):
    folder, (train_rows, train_labels, test_rows, test_labels) = cifar_any_encoding
    data = cifar10.load(folder)
    assert data.train_images.shape == (100, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (30, 32, 32, 3) and data.test_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    # a row is 1024 red, 1024 green, 1024 blue: [3, 32, 32] -> [32, 32, 3]
    np.testing.assert_array_equal(data.test_images[0], test_rows[0].reshape(3, 32, 32).transpose(1, 2, 0))
    np.testing.assert_array_equal(data.train_images, train_rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert data.test_images[0, 0, 1, 0] == test_rows[0][1]  # red of pixel (0, 1)
    assert data.test_images[0, 0, 0, 2] == test_rows[0][2048]  # blue of pixel (0, 0)
    np.testing.assert_array_equal(data.train_labels, train_labels)
    np.testing.assert_array_equal(data.test_labels, test_labels)
    assert data.label_names == tuple(fakecifar.LABELS)
    assert data.train_images.flags.c_contiguous


def test_official_encoding_names_the_numpy1_global(cifar_dir):
    folder, _ = cifar_dir
    raw = (folder / "test_batch").read_bytes()
    assert raw[:2] == b"\x80\x02" and b"numpy.core.multiarray\n_reconstruct" in raw


def test_accepts_the_parent_folder(cifar_dir):
    folder, _ = cifar_dir
    assert cifar10.load(folder.parent).test_images.shape == (30, 32, 32, 3)


class _Evil:
    def __init__(self, marker, how):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch {self.marker}",)
        return eval, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("how", ["system", "eval"])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_malicious_pickle_is_refused_and_runs_nothing(cifar_dir, tmp_path, how, where):
    folder, _ = cifar_dir
    marker = tmp_path / "pwned"
    evil = _Evil(marker, how)
    obj = evil if where == "top" else {"data": np.zeros((1, 3072), np.uint8), "labels": [evil]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_3: refused to unpickle the global"):
        cifar10.load(folder)
    assert not marker.exists()


def _rewrite(folder, name, **changes):
    d = {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]}
    d.update(changes)
    d = {k: v for k, v in d.items() if v is not None}
    (folder / name).write_bytes(pickle.dumps(d, protocol=2))


BAD_FILES = {
    "empty": (lambda f: (f / "data_batch_2").write_bytes(b""), r"data_batch_2: the file is empty"),
    "truncated": (lambda f: (f / "data_batch_2").write_bytes((f / "data_batch_2").read_bytes()[:5000]),
                  r"data_batch_2: is truncated or not a pickle"),
    "not a pickle": (lambda f: (f / "test_batch").write_text("hello, world\n"),
                     r"test_batch: is truncated or not a pickle"),
    "not a dict": (lambda f: (f / "test_batch").write_bytes(pickle.dumps([1, 2, 3])),
                   r"test_batch: holds a list, not the dict"),
    "missing key": (lambda f: _rewrite(f, "data_batch_1", labels=None), r"data_batch_1: has no 'labels' entry"),
    "wrong dtype": (lambda f: _rewrite(f, "data_batch_1", data=np.zeros((4, 3072), np.float32)),
                    r"data_batch_1: 'data' must be a uint8 array but is float32"),
    "wrong row length": (lambda f: _rewrite(f, "data_batch_4", data=np.zeros((4, 3000), np.uint8)),
                         r"data_batch_4: 'data' must have rows of 3072 values but has shape \[4, 3000\]"),
    "label too big": (lambda f: _rewrite(f, "test_batch", labels=[0, 1, 2, 10]),
                      r"test_batch: has labels outside 0..9"),
    "label negative": (lambda f: _rewrite(f, "test_batch", labels=[0, -1, 2, 3]),
                       r"test_batch: has labels outside 0..9"),
    "label count": (lambda f: _rewrite(f, "data_batch_5", labels=[0, 1, 2]),
                    r"data_batch_5: has 4 images but 3 labels"),
    "missing files": (lambda f: [(f / n).unlink() for n in ("data_batch_2", "batches.meta")],
                      r"missing data_batch_2, batches.meta"),
    "bad meta": (lambda f: (f / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a"]})),
                 r"batches.meta: must list 10 'label_names'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_give_one_sentence_naming_the_file(cifar_dir, case):
    folder, _ = cifar_dir
    damage, pattern = BAD_FILES[case]
    damage(folder)
    with pytest.raises(DataError, match=pattern) as info:
        cifar10.load(folder)
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")
    assert str(folder) in message
    assert isinstance(info.value, ValueError)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"nope: no such folder; give the folder that holds cifar-10-batches-py"):
        cifar10.load(tmp_path / "nope")


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "lowlevel.data", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("case", ["truncated", "wrong row length", "missing files"])
def test_cli_exits_2_with_one_line_and_no_traceback(cifar_dir, case):
    folder, _ = cifar_dir
    BAD_FILES[case][0](folder)
    result = _cli("check", str(folder))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and str(folder) in result.stderr


def test_cli_malicious_exits_2_and_runs_nothing(cifar_dir, tmp_path):
    folder, _ = cifar_dir
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps(_Evil(marker, "system"), protocol=2))
    result = _cli("check", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "test_batch: refused to unpickle the global posix.system" in result.stderr
    assert not marker.exists()


def test_cli_check_prints_counts(cifar_dir):
    folder, _ = cifar_dir
    result = _cli("check", str(folder.parent))
    assert result.returncode == 0, result.stderr
    assert "100 training and 30 test images" in result.stdout
    assert "airplane" in result.stdout and "truck" in result.stdout


@pytest.mark.real_data
@pytest.mark.skipif(not os.environ.get("LOWLEVEL_CIFAR10_DIR"), reason="set LOWLEVEL_CIFAR10_DIR to a real CIFAR-10")
def test_real_cifar10():
    path = os.environ["LOWLEVEL_CIFAR10_DIR"]
    start = time.perf_counter()
    data = cifar10.load(path)
    seconds = time.perf_counter() - start
    print(f"loaded the real CIFAR-10 in {seconds:.2f} s")
    assert data.train_images.shape == (50000, 32, 32, 3) and data.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert np.bincount(data.train_labels).tolist() == [5000] * 10
    raw = cifar10.read_pickle(cifar10.find(path) / "test_batch")
    np.testing.assert_array_equal(data.test_images[0], raw["data"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert data.label_names[0] == "airplane" and data.label_names[9] == "truck"
