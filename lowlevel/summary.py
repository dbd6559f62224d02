"""Per-layer parameters and multiply-adds of any network of lowlevel.nets, counted from shapes alone.

For a layer whose output is H' x W' x C_out:

    Conv k x k     params k*k*C_in*C_out (+ C_out bias)   mult-adds H'*W'*k*k*C_in*C_out
    Conv DW k x k  params k*k*C                            mult-adds H'*W'*k*k*C
    Fully connected params C_in*C_out + C_out              mult-adds C_in*C_out
    BatchNorm      params 2C trainable + 2C moving statistics; its multiply-adds fold
                   into the convolution at inference, and the paper does not count them.

    python -m lowlevel.summary [--model NAME] [--alpha A] [--input-size S] [--classes K]
                               [--standard | --compare]
"""
from __future__ import annotations

import dataclasses
import math
import sys

from lowlevel import errors
from lowlevel.config import Parser
from lowlevel.errors import ConfigError
from lowlevel.nets import NETS
from lowlevel.layers import BatchNorm, Conv2D, Dense, DepthwiseConv2D


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # attribute path in the model, e.g. blocks[3].pointwise
    op: str  # Conv 3x3, Conv 1x1, Conv DW 3x3, BatchNorm, Fully connected
    shape: tuple[int, ...]  # output shape of one image: (H, W, C) or (C,)
    params: int  # trainable parameters
    moving: int  # non-trainable: BN moving statistics
    madds: int  # multiply-adds for one image, forward


def rows(model) -> list[Row]:
    """One Row per layer of `model` (any network of lowlevel.nets), in order.  No forward pass:
    the network lists its layers with their output shapes (`layer_table()`) and the costs follow."""
    out = []
    for name, layer, shape in model.layer_table():
        positions = math.prod(shape[:-1])  # H' * W' (1 for a vector)
        if isinstance(layer, str):  # pooling, flatten, concatenation: no parameters, no multiply-adds counted
            out.append(Row(name, layer, shape, 0, 0, 0))
        elif isinstance(layer, BatchNorm):
            out.append(Row(name, "BatchNorm", shape, 2 * layer.channels, 2 * layer.channels, 0))
        elif isinstance(layer, Dense):
            weights = layer.in_features * layer.out_features
            out.append(Row(name, "Fully connected", shape, weights + layer.out_features, 0, weights))
        else:
            k, c_in, c_out = layer.kernel_size, layer.in_channels, layer.out_channels
            if isinstance(layer, DepthwiseConv2D):
                op, weights = f"Conv DW {k}x{k}", k * k * c_out
            else:
                op, weights = f"Conv {k}x{k}", k * k * c_in * c_out
            bias = c_out if isinstance(layer, Conv2D) and layer.bias is not None else 0
            out.append(Row(name, op, shape, weights + bias, 0, positions * weights))
    return out


@dataclasses.dataclass(frozen=True)
class Totals:
    params: int  # trainable
    moving: int  # BN moving statistics
    madds: int  # per image, forward


def totals(table: list[Row]) -> Totals:
    return Totals(sum(r.params for r in table), sum(r.moving for r in table), sum(r.madds for r in table))


def by_op(table: list[Row]) -> dict[str, tuple[int, int]]:
    """{op: (multiply-adds, parameters)} for the convolution and dense types (the paper's Table 2)."""
    shares: dict[str, tuple[int, int]] = {}
    for r in table:
        if r.op == "Fully connected" or r.op.startswith("Conv"):
            m, p = shares.get(r.op, (0, 0))
            shares[r.op] = (m + r.madds, p + r.params)
    return dict(sorted(shares.items(), key=lambda kv: -kv[1][0]))


def describe(model, name: str = "mobilenet") -> str:
    h, w, c = model.input_shape
    return (f"{name}: {NETS[name].about}; alpha {model.alpha:g}, {h}x{w}x{c} input, "
            f"{model.num_classes} classes")


def format_table(model, name: str = "mobilenet") -> str:
    table = rows(model)
    t = totals(table)
    width = max(24, *(len(r.name) for r in table))
    lines = [describe(model, name), "",
             f"{'layer':<{width}s} {'op':<16s} {'output':>12s} {'params':>11s} {'mult-adds':>14s}"]
    for r in table:
        shape = "x".join(str(d) for d in r.shape)
        lines.append(f"{r.name:<{width}s} {r.op:<16s} {shape:>12s} {r.params:>11,d} {r.madds:>14,d}")
    lines += ["", f"total: {t.params:,d} trainable parameters (+ {t.moving:,d} batch-norm moving statistics "
                  f"= {t.params + t.moving:,d}), {t.madds / 1e6:,.2f}M multiply-adds per image",
              "", "by op type (the paper's Table 2; batch norm not counted):",
              f"{'op':<16s} {'mult-adds':>10s} {'params':>10s}"]
    shares = by_op(table)
    m_all = sum(m for m, _ in shares.values())
    p_all = sum(p for _, p in shares.values())
    for op, (m, p) in shares.items():
        lines.append(f"{op:<16s} {100 * m / m_all:9.2f}% {100 * p / p_all:9.2f}%")
    return "\n".join(lines)


def format_comparison(separable, standard, names=("depthwise-separable", "standard 3x3")) -> str:
    """Totals of a separable network and its standard twin side by side (the paper's Table 4)."""
    a, b = totals(rows(separable)), totals(rows(standard))
    return "\n".join([
        "depthwise-separable vs standard convolutions (the paper's Table 4):",
        f"{'':<22s} {'params':>12s} {'mult-adds':>12s}",
        f"{names[0]:<22s} {a.params / 1e6:11.3f}M {a.madds / 1e6:11.1f}M",
        f"{names[1]:<22s} {b.params / 1e6:11.3f}M {b.madds / 1e6:11.1f}M",
        f"{'standard / separable':<22s} {b.params / a.params:11.1f}x {b.madds / a.madds:11.1f}x",
    ])


# each separable network and the network it is the separable form of
TWINS = {"mobilenet": "mobilenet-standard", "fashion-cnn-separable": "fashion-cnn",
         "fashion-separable": "fashion-cnn", "vgg-blocks-separable": "vgg-blocks"}


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
