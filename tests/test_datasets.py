"""The Fashion-MNIST and 17 Flowers readers on tiny files in the official formats, written here; their
downloads against a local http.server; the data-set registry."""
import gzip
import io
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from conftest import ENV
from lowlevel import datasets
from lowlevel.datasets import DataError, fashion_mnist, flowers17
from test_download import _leftovers, _serve, server  # noqa: F401 (server is a fixture)


# ---------------------------------------------------------------- Fashion-MNIST

def idx(magic, array):
    """gzip'd IDX bytes: big-endian magic, the dimensions, then the uint8 data."""
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def write_fashion(folder, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    raw = {"train_images": rng.integers(0, 256, (n_train, 28, 28)), "train_labels": rng.integers(0, 10, n_train),
           "test_images": rng.integers(0, 256, (n_test, 28, 28)), "test_labels": rng.integers(0, 10, n_test)}
    for (key, array), name in zip(raw.items(), fashion_mnist.FILES):
        (folder / name).write_bytes(idx(2051 if "images" in key else 2049, array))
    return raw


def test_fashion_mnist_loads_exactly(tmp_path):
    raw = write_fashion(tmp_path / "fashion-mnist")
    d = fashion_mnist.load(tmp_path)  # the parent works too
    assert d.train_images.shape == (12, 28, 28, 1) and d.train_images.dtype == np.uint8
    np.testing.assert_array_equal(d.train_images[..., 0], raw["train_images"])
    np.testing.assert_array_equal(d.test_labels, raw["test_labels"])
    assert d.train_labels.dtype == np.int64 and d.label_names[9] == "Ankle boot"
    assert datasets.load("fashion-mnist", str(tmp_path / "fashion-mnist")).test_images.shape == (5, 28, 28, 1)


def _rewrite(name, data):
    def damage(folder):
        (folder / name).write_bytes(data(folder / name))
    return damage


TRAIN_IMAGES, TRAIN_LABELS = fashion_mnist.FILES[:2]
BAD_FASHION = {
    "missing file": (lambda f: (f / TRAIN_LABELS).unlink(), "missing train-labels-idx1-ubyte.gz"),
    "not gzip": (_rewrite(TRAIN_IMAGES, lambda p: b"plain bytes, not gzip"), "is not a readable gzip file"),
    "truncated gzip": (_rewrite(TRAIN_IMAGES, lambda p: p.read_bytes()[:200]), "is not a readable gzip file"),
    "wrong magic": (_rewrite(TRAIN_IMAGES, lambda p: idx(2049, np.zeros((12, 28, 28)))), "magic number 2049, not 2051"),
    "labels as images": (_rewrite(TRAIN_LABELS, lambda p: idx(2051, np.zeros((12, 28, 28)))), "not 2049"),
    "wrong side": (_rewrite(TRAIN_IMAGES, lambda p: idx(2051, np.zeros((12, 32, 32)))), "32x32 images, not 28x28"),
    "short body": (_rewrite(TRAIN_IMAGES, lambda p: gzip.compress(gzip.decompress(p.read_bytes())[:-5])),
                   "bytes of data where its header says 9408"),
    "extra bytes": (_rewrite(TRAIN_IMAGES, lambda p: gzip.compress(gzip.decompress(p.read_bytes()) + b"x")),
                    "holds more bytes of data where its header says 9408"),
    "header only": (_rewrite(TRAIN_IMAGES, lambda p: gzip.compress(b"\0\0\x08\x03")), "ends inside its header"),
    "huge count": (_rewrite(TRAIN_IMAGES, lambda p: gzip.compress(struct.pack(">4I", 2051, 2 ** 31, 28, 28))),
                   "claims 2147483648 items"),
    "counts disagree": (_rewrite(TRAIN_LABELS, lambda p: idx(2049, np.zeros(11))), "holds 11 labels for the 12 images"),
    "label 10": (_rewrite(TRAIN_LABELS, lambda p: idx(2049, np.full(12, 10))), "holds label 10, not 0..9"),
    "no images": (lambda f: [_rewrite(TRAIN_IMAGES, lambda p: idx(2051, np.zeros((0, 28, 28))))(f),
                             _rewrite(TRAIN_LABELS, lambda p: idx(2049, np.zeros(0)))(f)], "holds no images"),
}


@pytest.mark.parametrize("case", list(BAD_FASHION))
def test_fashion_mnist_bad_files_are_one_sentence(tmp_path, case):
    folder = tmp_path / "fashion-mnist"
    write_fashion(folder)
    damage, message = BAD_FASHION[case]
    damage(folder)
    with pytest.raises(DataError, match=message) as e:
        fashion_mnist.load(folder)
    assert "\n" not in str(e.value) and str(folder) in str(e.value)


def test_fashion_mnist_cli_check_and_error(tmp_path):
    write_fashion(tmp_path / "fashion-mnist")
    good = subprocess.run([sys.executable, "-m", "lowlevel.data", "check", str(tmp_path), "--dataset", "fashion-mnist"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert good.returncode == 0 and "12 training and 5 test images of 28x28x1" in good.stdout, good.stderr
    (tmp_path / "fashion-mnist" / TRAIN_IMAGES).write_bytes(b"junk")
    bad = subprocess.run([sys.executable, "-m", "lowlevel.data", "check", str(tmp_path), "--dataset", "fashion-mnist"],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


def test_fashion_mnist_downloads_four_checked_files(server, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    write_fashion(src)
    sums = [_serve(f"/fm/{n}", (src / n).read_bytes()) for n in fashion_mnist.FILES]
    out = tmp_path / "data"
    folder = fashion_mnist.download(out, url=server + "/fm/", md5=",".join(sums), progress=False)
    assert folder == out / "fashion-mnist" and _leftovers(out) == ["fashion-mnist"]
    assert fashion_mnist.load(out).train_images.shape == (12, 28, 28, 1)
    sums[2] = "0" * 32
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: the download's MD5 is"):
        fashion_mnist.download(tmp_path / "d2", url=server + "/fm", md5=",".join(sums), progress=False)
    assert _leftovers(tmp_path / "d2") == []  # nothing that looks complete
    with pytest.raises(DataError, match="four MD5s|4 MD5s"):
        fashion_mnist.download(tmp_path / "d3", url=server + "/fm", md5="abc", progress=False)


def test_fashion_mnist_official_checksums_are_the_published_ones():
    assert fashion_mnist.MD5.split(",")[0] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d" and len(fashion_mnist.MD5.split(",")) == 4


# ---------------------------------------------------------------- 17 Flowers

@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    """A 17flowers/jpg folder of 1,360 tiny JPEGs; image i's colour encodes its class, so the labels can be checked."""
    import tensorflow as tf
    root = tmp_path_factory.mktemp("flowers")
    jpg = root / "17flowers" / "jpg"
    jpg.mkdir(parents=True)
    for i, name in enumerate(flowers17.names()):
        c = i // 80
        pixels = np.full((12, 10, 3), 15 * c, np.uint8)
        (jpg / name).write_bytes(tf.io.encode_jpeg(pixels, quality=100).numpy())
    return root


def test_flowers17_loads_labels_in_order_and_splits_80_20(flowers):
    d = flowers17.load(flowers, side=16)
    assert d.train_images.shape == (1088, 16, 16, 3) and d.test_images.shape == (272, 16, 16, 3)
    assert np.bincount(d.test_labels).tolist() == [16] * 17 and np.bincount(d.train_labels).tolist() == [64] * 17
    for images, labels in ((d.train_images, d.train_labels), (d.test_images, d.test_labels)):
        np.testing.assert_allclose(images.mean((1, 2, 3)), 15 * labels, atol=2)  # each image's colour is its class
    again = flowers17.load(flowers / "17flowers" / "jpg", side=16)
    np.testing.assert_array_equal(again.test_images, d.test_images)  # the split is a function of the seed
    other = flowers17.load(flowers, split_seed=1, side=16)
    assert not np.array_equal(flowers17.split(0), flowers17.split(1)) and other.test_labels.shape == (272,)


def test_flowers17_default_side_is_224(flowers):
    d = datasets.load("flowers17", str(flowers))
    assert d.train_images.shape[1:] == (224, 224, 3) and d.train_images.dtype == np.uint8


def test_flowers17_bad_files_are_one_sentence(flowers, tmp_path):
    import shutil
    copy = tmp_path / "jpg"
    shutil.copytree(flowers / "17flowers" / "jpg", copy)
    (copy / "image_0100.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"image_0100.jpg: is not a JPEG image"):
        flowers17.load(copy, side=8)
    (copy / "image_1360.jpg").unlink()
    with pytest.raises(DataError, match=r"missing 1 of the 1360 images \(image_1360.jpg first\)"):
        flowers17.load(copy, side=8)
    with pytest.raises(DataError, match="no such folder"):
        flowers17.load(tmp_path / "nowhere")


def test_flowers17_downloads_and_refuses_unsafe_archives(server, flowers, tmp_path):  # noqa: F811
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(flowers / "17flowers" / "jpg", arcname="jpg")
    md5 = _serve("/17flowers.tgz", buf.getvalue())
    out = tmp_path / "data"
    assert flowers17.download(out, url=server + "/17flowers.tgz", md5=md5, progress=False) == out / "17flowers"
    assert _leftovers(out) == ["17flowers"] and len(list((out / "17flowers" / "jpg").iterdir())) == 1360
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("jpg/../../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    md5 = _serve("/evil.tgz", evil.getvalue())
    with pytest.raises(DataError, match="unsafe path"):
        flowers17.download(tmp_path / "d2", url=server + "/evil.tgz", md5=md5, progress=False)
    assert _leftovers(tmp_path / "d2") == [] and not (tmp_path / "escaped").exists()


def test_registry_names_and_errors():
    assert list(datasets.DATASETS) == ["cifar10", "fashion-mnist", "flowers17"]
    for name in datasets.DATASETS:
        r = datasets.reader(name)
        assert r.FOLDER and r.URL.startswith("http") and callable(r.load) and callable(r.download)
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        datasets.reader("mnist")


# ---------------------------------------------------------------- training on them

@pytest.mark.slow
def test_train_on_grey_28x28_images_with_the_datasets_defaults(tmp_path, cli):
    """--model fashion-cnn-separable picks fashion-mnist and its defaults (no cutout); MobileNet takes 1 channel too."""
    from conftest import TINY
    write_fashion(tmp_path / "data" / "fashion-mnist", n_train=100, n_test=10)
    status, out, err = cli("train", tmp_path, "--data", tmp_path / "data", "--run-name", "f", "--model",
                           "fashion-cnn-separable", "--epochs", "1", *TINY, "--lr", "0.01")
    assert status == 0 and "test accuracy" in out, err
    saved = (tmp_path / "checkpoints" / "f" / "config.json").read_text()
    assert '"dataset": "fashion-mnist"' in saved and '"cutout": 0' in saved
    status, out, err = cli("train", tmp_path, "--data", tmp_path / "data", "--run-name", "m", "--dataset",
                           "fashion-mnist", "--epochs", "1", *TINY)
    assert status == 0, err
    status, out, err = cli("evaluate", tmp_path, "--checkpoint", tmp_path / "checkpoints" / "m")
    assert status == 0 and "Ankle boot" in out, err


@pytest.mark.slow
def test_train_a_224_network_on_flowers(flowers, tmp_path, cli):
    status, out, err = cli("train", tmp_path, "--data", flowers, "--run-name", "a", "--model", "alexnet", "--alpha",
                           "0.0625", "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--val-size", "20",
                           "--progress", "none", "--no-tensorboard")
    assert status == 0 and "1088 training" not in out and "1068 training and 20 validation images" in out, err
    saved = (tmp_path / "checkpoints" / "a" / "config.json").read_text()
    assert '"dataset": "flowers17"' in saved and '"split_seed": 0' in saved and '"dropout": 0.5' in saved
