"""The data sets lowlevel reads, by name: `python -m lowlevel.train --dataset NAME`.

One module per data set, each with the same few names:

    FOLDER                    the folder its files live in (under --data, default data/)
    find(path) -> Path        that folder, given it or its parent
    load(path) -> Dataset     every image and label in memory, checked exactly against the official layout
    download(directory, url, md5) -> Path   fetch, verify the checksum, unpack safely, rename into place
    URL, MD5                  the official source and its checksum

A reader imports no TensorFlow unless it must decode images (flowers17's JPEGs), and every
problem with a user's file is a `DataError` of one sentence naming the file and the fix.
"""
from __future__ import annotations

import dataclasses
import importlib

import numpy as np

from lowlevel.errors import DataError  # noqa: F401 - datasets.DataError, for the readers


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A whole data set in memory."""

    train_images: np.ndarray  # uint8 [N, H, W, C]
    train_labels: np.ndarray  # int64 [N], values 0..K-1
    test_images: np.ndarray  # uint8 [M, H, W, C]
    test_labels: np.ndarray  # int64 [M]
    label_names: tuple[str, ...]  # K class names, index = label


@dataclasses.dataclass(frozen=True)
class Entry:
    module: str  # lowlevel.datasets.<module>
    about: str
    defaults: dict = dataclasses.field(default_factory=dict)  # training settings it wants unless given


DATASETS = {
    "cifar10": Entry("cifar10", "CIFAR-10: 50,000 + 10,000 colour images 32x32, 10 classes"),
    "fashion-mnist": Entry("fashion_mnist", "Fashion-MNIST: 60,000 + 10,000 grey images 28x28, 10 classes",
                           {"cutout": 0}),
    "flowers17": Entry("flowers17", "Oxford 17 Category Flowers: 1,360 colour images resized to 224x224, "
                                    "17 classes, split 80/20 by a fixed seed", {"cutout": 0, "val_size": 136}),
}


def find_folder(path, candidates: list[str], holds: str, dataset: str):
    """The first of path/c for c in `candidates` ("" for path itself) that is a folder; a missing or
    non-folder `path` is a DataError naming what it should hold (`holds`) and how to fetch it."""
    from pathlib import Path

    path = Path(path)
    for c in candidates:
        if c and (path / c).is_dir():
            return path / c
    if not path.exists():
        raise DataError(f"{path}: no such folder; give the folder that holds {holds} (or fetch it with "
                        f"`python -m lowlevel.data download --dataset {dataset}`).")
    if not path.is_dir():
        raise DataError(f"{path}: is a file, not a folder; give the folder that holds {holds}.")
    return path


def reader(name: str):
    """The module that reads data set `name` (see the names it has above)."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; the data sets are {', '.join(DATASETS)}.")
    return importlib.import_module(f"lowlevel.datasets.{DATASETS[name].module}")


def load(name: str, path: str = "", split_seed: int = 0) -> Dataset:
    """Data set `name` from `path` (its folder or the folder above it); with no path from data/,
    downloaded there first if missing (LOWLEVEL_<NAME>_URL and LOWLEVEL_<NAME>_MD5, e.g.
    LOWLEVEL_CIFAR10_URL, name a mirror).  split_seed: for a data set without an official test
    set (flowers17), the seed of its train/test split."""
    import os
    import sys
    from pathlib import Path

    r = reader(name)
    options = {"split_seed": split_seed} if getattr(r, "SPLIT_BY_SEED", False) else {}
    if path:
        return r.load(path, **options)
    default = Path("data")
    if not (default / r.FOLDER).is_dir():
        env = "LOWLEVEL_" + name.upper().replace("-", "_")
        print(f"no --data given and no {default / r.FOLDER}: downloading {name} there", file=sys.stderr)
        r.download(default, url=os.environ.get(f"{env}_URL", r.URL), md5=os.environ.get(f"{env}_MD5", r.MD5))
    return r.load(default, **options)
