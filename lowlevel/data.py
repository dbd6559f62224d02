"""`python -m lowlevel.data`: fetch CIFAR-10, or check a copy you already have.

    python -m lowlevel.data download [--dir data] [--url URL] [--md5 MD5]
    python -m lowlevel.data check [DIR]

A problem with the files is one sentence on stderr and exit status 2.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from lowlevel.datasets import cifar10
from lowlevel.config import Parser


def parser() -> Parser:
    p = Parser(prog="python -m lowlevel.data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    d = sub.add_parser("download", help="download, verify and unpack the official CIFAR-10 archive")
    d.add_argument("--dir", default="data", help="folder to unpack into (default: data)")
    d.add_argument("--url", default=cifar10.URL, help="where to fetch cifar-10-python.tar.gz from")
    d.add_argument("--md5", default=cifar10.MD5, help="the archive's expected MD5 (default: the official one)")
    c = sub.add_parser("check", help="load a copy and print what it holds")
    c.add_argument("dir", nargs="?", default="data", help="cifar-10-batches-py or its parent (default: data)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    try:
        if args.command == "download":
            folder = cifar10.download(args.dir, url=args.url, md5=args.md5)
            print(f"CIFAR-10 is in {folder}")
            return 0
        start = time.perf_counter()
        data = cifar10.load(args.dir)
        seconds = time.perf_counter() - start
    except cifar10.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{cifar10.find(args.dir)}: {len(data.train_images)} training and {len(data.test_images)} "
          f"test images, loaded in {seconds:.2f} s")
    counts = np.bincount(data.test_labels, minlength=cifar10.NUM_CLASSES)
    for name, n in zip(data.label_names, counts):
        print(f"  {name:<12s} {n:5d} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
