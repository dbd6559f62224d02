"""Reading Fashion-MNIST's four official IDX files, and downloading them (Xiao et al. 2017).

    fashion-mnist/
        train-images-idx3-ubyte.gz   60,000 images 28x28, grey
        train-labels-idx1-ubyte.gz   60,000 labels 0..9
        t10k-images-idx3-ubyte.gz    10,000 test images
        t10k-labels-idx1-ubyte.gz    10,000 test labels

Each file is gzip-compressed IDX: a big-endian header, then the bytes, row-major.

    images   magic 2051 (0x00000803: unsigned bytes, 3 dimensions), N, 28, 28, then N*784 pixels
    labels   magic 2049 (0x00000801: unsigned bytes, 1 dimension), N, then N labels

`load` checks the magic numbers, the sizes against the header to the byte, that images and
labels agree in number and that every label is 0..9, and returns images [N, 28, 28, 1].
No pickle, no TensorFlow.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from lowlevel.datasets import DataError, Dataset, fetch, find_folder

FOLDER = "fashion-mnist"
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # + each file's name
MD5 = "8d4fb7e6c68d591d4c3dfef9ec88bf0d,25c81989df183df01b3e8a0aad5dffbe,bef4ecab320f06d8554ea6380940ec79," \
      "bb300cfdad3c16e7a12a480ee83cd310"  # the official MD5s of FILES, in order
LABEL_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
SIDE, IMAGES, LABELS = 28, 2051, 2049  # image side; the magic numbers
MAX_COUNT = 1_000_000  # more than any real file holds: a header claiming more is refused before reading


def find(path: str | os.PathLike) -> Path:
    """The folder holding the four files: `path` itself, or `path/fashion-mnist`."""
    return find_folder(path, [FOLDER], FOLDER, "fashion-mnist")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One IDX file: uint8 [N, 28, 28] for images (magic 2051), [N] for labels (2049)."""
    dims = 3 if magic == IMAGES else 1
    try:
        with gzip.open(path, "rb") as f:
            header = f.read(4 + 4 * dims)
            if len(header) < 4 + 4 * dims:
                raise DataError(f"{path}: ends inside its header; the file is truncated: download it again.")
            got, *shape = struct.unpack(f">{1 + dims}I", header)
            if got != magic:
                kind = "images" if magic == IMAGES else "labels"
                raise DataError(f"{path}: starts with magic number {got}, not {magic} (IDX {kind}); it is not "
                                f"this Fashion-MNIST file: download it again.")
            if dims == 3 and shape[1:] != [SIDE, SIDE]:
                raise DataError(f"{path}: holds {shape[1]}x{shape[2]} images, not {SIDE}x{SIDE}; it is not "
                                f"Fashion-MNIST.")
            if shape[0] > MAX_COUNT:
                raise DataError(f"{path}: claims {shape[0]} items, more than any Fashion-MNIST file; it is "
                                f"damaged: download it again.")
            size = int(np.prod(shape))
            body = f.read(size)
            extra = f.read(1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: is not a readable gzip file ({' '.join(str(e).split())[:120]}); "
                        f"download it again.") from None
    if len(body) != size or extra:
        raise DataError(f"{path}: holds {'more' if extra else len(body)} bytes of data where its header says "
                        f"{size}; the file is truncated or damaged: download it again.")
    return np.frombuffer(body, np.uint8).reshape(shape)


def load(path: str | os.PathLike) -> Dataset:
    """Fashion-MNIST from its folder or the folder above it: images uint8 [N, 28, 28, 1], labels int64."""
    folder = find(path)
    missing = [n for n in FILES if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}; it must hold the four Fashion-MNIST files "
                        f"(fetch them with `python -m lowlevel.data download --dataset fashion-mnist`).")
    parts = []
    for images, labels in ((FILES[0], FILES[1]), (FILES[2], FILES[3])):
        x, y = read_idx(folder / images, IMAGES), read_idx(folder / labels, LABELS)
        if len(x) != len(y):
            raise DataError(f"{folder / labels}: holds {len(y)} labels for the {len(x)} images of {images}; "
                            f"one of them is from another copy: download both again.")
        if len(y) and y.max() > 9:
            raise DataError(f"{folder / labels}: holds label {int(y.max())}, not 0..9; download it again.")
        if not len(x):
            raise DataError(f"{folder / images}: holds no images; download it again.")
        parts += [x[..., None], y.astype(np.int64)]
    return Dataset(*parts, label_names=LABEL_NAMES)


def download(directory: str | os.PathLike = "data", url: str = URL, md5: str = MD5, progress: bool = True) -> Path:
    """Download the four files from `url` (a folder address) into `directory/fashion-mnist`, each
    checked against its MD5 (md5: four, comma-separated, in the order of FILES)."""
    sums = md5.split(",")
    if len(sums) != len(FILES):
        raise DataError(f"--md5 for Fashion-MNIST must be {len(FILES)} MD5s separated by commas, one per file "
                        f"({', '.join(FILES)}).")

    def fill(work: Path) -> Path:
        out = work / FOLDER
        out.mkdir()
        for name, digest in zip(FILES, sums):
            fetch.fetch(url.rstrip("/") + "/" + name, out / name, digest.strip(), progress)
        return out
    return fetch.into_place(directory, FOLDER, fill)
