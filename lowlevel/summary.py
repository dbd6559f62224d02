"""`python -m lowlevel.summary`: per-layer output shape, parameters and multiply-adds of a network.

    python -m lowlevel.summary [--model NAME] [--alpha A] [--input-size S] [--classes K]
                               [--standard | --compare]

The counting is lowlevel/costs.py's, from shapes alone.
"""
from __future__ import annotations

import math
import sys

from lowlevel import errors
from lowlevel.config import Parser
from lowlevel.costs import TWINS, format_comparison, format_table
from lowlevel.errors import ConfigError
from lowlevel.nets import NETS


def parser() -> Parser:
    p = Parser(prog="python -m lowlevel.summary",
               description="Per-layer parameters and multiply-adds of a network, counted from shapes.")
    p.add_argument("--model", default="mobilenet", choices=list(NETS), metavar="NAME",
                   help="the network: " + ", ".join(NETS) + " (default mobilenet)")
    p.add_argument("--alpha", type=float, default=1.0, help="width multiplier (default 1.0)")
    p.add_argument("--input-size", type=int, default=None, help="image side in pixels (default: the network's own, "
                                                              "32 for MobileNet; from 128 up MobileNet uses the "
                                                              "ImageNet stem, stride 2)")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default: the network's own)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--standard", action="store_true", help="MobileNet with full 3x3 convolutions (the same "
                                                               "as --model mobilenet-standard)")
    group.add_argument("--compare", action="store_true", help="print the totals of a separable network and its "
                                                              "standard twin side by side")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return errors.as_command("python -m lowlevel.summary", lambda: show(args))


def show(args) -> None:
    from lowlevel import nets  # after parsing, so --help is instant

    if not (math.isfinite(args.alpha) and args.alpha > 0):
        raise ConfigError(f"--alpha must be a finite number above 0, not {args.alpha}.")
    for flag, value in (("--input-size", args.input_size), ("--classes", args.classes)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, not {value}.")

    def build(name):
        h, w, c = NETS[name].input_shape
        shape = (args.input_size, args.input_size, c) if args.input_size is not None else (h, w, c)
        try:
            return nets.build(name, shape, args.classes, alpha=args.alpha)
        except ValueError as e:  # a shape the network cannot take
            raise ConfigError(str(e)) from None

    name = "mobilenet-standard" if args.standard else args.model
    if args.compare:
        separable = name if name in TWINS else {v: k for k, v in TWINS.items()}.get(name)
        if separable is None:
            raise ConfigError(f"--compare: {name} has no separable or standard twin; the pairs are "
                              + ", ".join(f"{k} and {v}" for k, v in TWINS.items()) + ".")
        print(format_comparison(build(separable), build(TWINS[separable]), (separable, TWINS[separable])))
    else:
        print(format_table(build(name), name))


if __name__ == "__main__":
    sys.exit(main())
