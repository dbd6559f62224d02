"""`python -m lowlevel.data`: fetch a data set, or check a copy you already have.

    python -m lowlevel.data download [--dataset cifar10] [--dir data] [--url URL] [--md5 MD5]
    python -m lowlevel.data check [DIR] [--dataset cifar10]

--dataset is cifar10 (default), fashion-mnist or flowers17.  A problem with the files is one
sentence on stderr and exit status 2.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from lowlevel import datasets, errors
from lowlevel.config import Parser


def parser() -> Parser:
    p = Parser(prog="python -m lowlevel.data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    d = sub.add_parser("download", help="download, verify and unpack a data set's official files")
    d.add_argument("--dataset", default="cifar10", choices=list(datasets.DATASETS), help="default: cifar10")
    d.add_argument("--dir", default="data", help="folder to unpack into (default: data)")
    d.add_argument("--url", default="", help="where to fetch the files from (default: the official address)")
    d.add_argument("--md5", default="", help="the files' expected MD5 (default: the official one; Fashion-MNIST: "
                                             "four, comma-separated)")
    c = sub.add_parser("check", help="load a copy and print what it holds")
    c.add_argument("dir", nargs="?", default="data", help="the data set's folder or its parent (default: data)")
    c.add_argument("--dataset", default="cifar10", choices=list(datasets.DATASETS), help="default: cifar10")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return errors.as_command(f"python -m lowlevel.data {args.command}", lambda: run(args))


def run(args) -> None:
    reader = datasets.reader(args.dataset)
    if args.command == "download":
        folder = reader.download(args.dir, url=args.url or reader.URL, md5=args.md5 or reader.MD5)
        print(f"{args.dataset} is in {folder}")
        return
    start = time.perf_counter()
    data = datasets.load(args.dataset, args.dir)
    seconds = time.perf_counter() - start
    shape = "x".join(map(str, data.train_images.shape[1:]))
    print(f"{reader.find(args.dir)}: {len(data.train_images)} training and {len(data.test_images)} "
          f"test images of {shape}, loaded in {seconds:.2f} s")
    counts = np.bincount(data.test_labels, minlength=len(data.label_names))
    for name, n in zip(data.label_names, counts):
        print(f"  {name:<20s} {n:5d} test images")


if __name__ == "__main__":
    sys.exit(main())
