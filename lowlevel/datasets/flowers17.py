"""Reading the Oxford 17 Category Flower Dataset (Nilsback and Zisserman 2006), and downloading it.

The official archive `17flowers.tgz` unpacks to

    jpg/image_0001.jpg ... jpg/image_1360.jpg   80 images per class, the classes in order
    jpg/files.txt                                the list of names

so image i (1-based) has label (i - 1) // 80.  The photographs have various sizes; `load`
decodes each with `tf.io.decode_jpeg` (a JPEG decoder runs no code from the file) and resizes
it to SIDE x SIDE (224, the networks' input; antialiased, aspect ratio not kept, as the Keras
tutorial did).  There is no official test set: a fixed split, a pure function of `split_seed`,
holds out 16 of each class's 80 images (20%), so the run's config.json, which stores the seed,
stores the split.  The data set lives in `17flowers/jpg/` under --data.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lowlevel.datasets import DataError, Dataset, fetch, find_folder

FOLDER = "17flowers"
URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/17flowers.tgz"
MD5 = "b59a65d8d1a99cd66944d474e1289eab"
ARCHIVE = "17flowers.tgz"
LABEL_NAMES = ("daffodil", "snowdrop", "lily of the valley", "bluebell", "crocus", "iris", "tiger lily", "tulip",
               "fritillary", "sunflower", "daisy", "colts' foot", "dandelion", "cowslip", "buttercup", "windflower",
               "pansy")
PER_CLASS, TEST_PER_CLASS, SIDE = 80, 16, 224
COUNT = PER_CLASS * len(LABEL_NAMES)  # 1,360
SPLIT_BY_SEED = True  # datasets.load passes the run's --split-seed
MAX_BYTES = 20_000_000  # a JPEG larger than this is not one of the official photographs


def names() -> list[str]:
    return [f"image_{i:04d}.jpg" for i in range(1, COUNT + 1)]


def find(path: str | os.PathLike) -> Path:
    """The `jpg` folder: `path` itself, `path/jpg`, or `path/17flowers/jpg`."""
    return find_folder(path, [f"{FOLDER}/jpg", "jpg"], f"{FOLDER}/jpg", "flowers17")


def split(seed: int = 0) -> np.ndarray:
    """bool [1360]: True for the test images, TEST_PER_CLASS of each class chosen by `seed`."""
    rng = np.random.default_rng(seed)
    test = np.zeros(COUNT, bool)
    for c in range(len(LABEL_NAMES)):
        test[c * PER_CLASS + rng.permutation(PER_CLASS)[:TEST_PER_CLASS]] = True
    return test


def load(path: str | os.PathLike, split_seed: int = 0, side: int = SIDE) -> Dataset:
    """All 1,360 images decoded and resized to side x side: uint8 [N, side, side, 3], split 80/20."""
    from lowlevel._tf import tf
    from lowlevel.errors import first_line

    folder = find(path)
    files = names()
    missing = [n for n in files if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {len(missing)} of the {COUNT} images ({missing[0]} first); it must hold "
                        f"{files[0]} to {files[-1]} (fetch them with `python -m lowlevel.data download "
                        f"--dataset flowers17`).")
    images = np.empty((COUNT, side, side, 3), np.uint8)
    for i, name in enumerate(files):
        file = folder / name
        if file.stat().st_size > MAX_BYTES:
            raise DataError(f"{file}: is {file.stat().st_size} bytes, larger than any of the official photographs; "
                            f"download the data set again.")
        try:
            pixels = tf.io.decode_jpeg(file.read_bytes(), channels=3)  # uint8 [h, w, 3]
        except tf.errors.OpError as e:  # InvalidArgumentError: not a JPEG, or a damaged one
            raise DataError(f"{file}: is not a JPEG image ({first_line(e)}); download the data set again.") from None
        resized = tf.image.resize(pixels, [side, side], antialias=True)  # float32 [side, side, 3]
        images[i] = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()
    labels = np.arange(COUNT, dtype=np.int64) // PER_CLASS
    test = split(split_seed)
    return Dataset(images[~test], labels[~test], images[test], labels[test], LABEL_NAMES)


def download(directory: str | os.PathLike = "data", url: str = URL, md5: str = MD5, progress: bool = True) -> Path:
    """Download, verify and unpack 17flowers.tgz into `directory/17flowers/jpg` (see datasets/fetch.py)."""
    def fill(work: Path) -> Path:
        archive = work / ARCHIVE
        fetch.fetch(url, archive, md5, progress)
        jpg = fetch.unpack(archive, url, "jpg", work / "out")
        (work / FOLDER).mkdir()
        os.replace(jpg, work / FOLDER / "jpg")
        return work / FOLDER
    return fetch.into_place(directory, FOLDER, fill)
