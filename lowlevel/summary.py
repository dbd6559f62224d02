"""Per-layer parameters and multiply-adds of a MobileNetV1, counted from shapes alone.

For a layer whose output is H' x W' x C_out:

    Conv k x k     params k*k*C_in*C_out (+ C_out bias)   mult-adds H'*W'*k*k*C_in*C_out
    Conv DW k x k  params k*k*C                            mult-adds H'*W'*k*k*C
    Fully connected params C_in*C_out + C_out              mult-adds C_in*C_out
    BatchNorm      params 2C trainable + 2C moving statistics; its multiply-adds fold
                   into the convolution at inference, and the paper does not count them.

    python -m lowlevel.summary [--alpha A] [--input-size S] [--classes K] [--stem-stride N]
                               [--standard | --compare]
"""
from __future__ import annotations

import dataclasses
import sys

from lowlevel.config import Parser
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
    """One Row per layer of `model` (a MobileNetV1), in order.  No forward pass."""
    size, out, pairs = model.input_size, [], []
    for name, conv, bn in model.conv_layers():
        prefix, _, last = name.rpartition(".")
        bn_name = "bn_stem" if name == "stem" else f"{prefix}.{'bn' if last == 'conv' else 'bn_' + last}"
        pairs += [(name, conv), (bn_name, bn)]
    for name, layer in pairs:
        if isinstance(layer, BatchNorm):
            out.append(Row(name, "BatchNorm", out[-1].shape, 2 * layer.channels, 2 * layer.channels, 0))
            continue
        size = -(-size // layer.stride)  # SAME padding: ceil(size / stride)
        k, c_in, c_out = layer.kernel_size, layer.in_channels, layer.out_channels
        if isinstance(layer, DepthwiseConv2D):
            op, weights = f"Conv DW {k}x{k}", k * k * c_out
        else:
            op, weights = f"Conv {k}x{k}", k * k * c_in * c_out
        bias = c_out if isinstance(layer, Conv2D) and layer.bias is not None else 0
        out.append(Row(name, op, (size, size, c_out), weights + bias, 0, size * size * weights))
    fc: Dense = model.classifier
    out.append(Row("classifier", "Fully connected", (fc.out_features,), fc.in_features * fc.out_features
                   + fc.out_features, 0, fc.in_features * fc.out_features))
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
        if r.op != "BatchNorm":
            m, p = shares.get(r.op, (0, 0))
            shares[r.op] = (m + r.madds, p + r.params)
    return dict(sorted(shares.items(), key=lambda kv: -kv[1][0]))


def describe(model) -> str:
    kind = "standard 3x3 convolutions" if model.standard else "depthwise-separable"
    return (f"MobileNet v1 ({kind}), alpha {model.alpha:g}, {model.input_size}x{model.input_size} input, "
            f"stem stride {model.stem_stride}, {model.num_classes} classes")


def format_table(model) -> str:
    table = rows(model)
    t = totals(table)
    lines = [describe(model), "",
             f"{'layer':<24s} {'op':<16s} {'output':>12s} {'params':>11s} {'mult-adds':>14s}"]
    for r in table:
        shape = "x".join(str(d) for d in r.shape)
        lines.append(f"{r.name:<24s} {r.op:<16s} {shape:>12s} {r.params:>11,d} {r.madds:>14,d}")
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


def format_comparison(separable, standard) -> str:
    a, b = totals(rows(separable)), totals(rows(standard))
    return "\n".join([
        "depthwise-separable vs standard convolutions (the paper's Table 4):",
        f"{'':<22s} {'params':>12s} {'mult-adds':>12s}",
        f"{'depthwise-separable':<22s} {a.params / 1e6:11.2f}M {a.madds / 1e6:11.1f}M",
        f"{'standard 3x3':<22s} {b.params / 1e6:11.2f}M {b.madds / 1e6:11.1f}M",
        f"{'standard / separable':<22s} {b.params / a.params:11.1f}x {b.madds / a.madds:11.1f}x",
    ])


def parser() -> Parser:
    p = Parser(prog="python -m lowlevel.summary", description="Per-layer parameters and multiply-adds of MobileNet v1.")
    p.add_argument("--alpha", type=float, default=1.0, help="width multiplier (default 1.0)")
    p.add_argument("--input-size", type=int, default=32, help="image side in pixels (default 32; ImageNet 224)")
    p.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    p.add_argument("--stem-stride", type=int, default=1, help="1 for CIFAR (default), 2 for ImageNet")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--standard", action="store_true", help="full 3x3 convolutions instead of separable ones")
    group.add_argument("--compare", action="store_true", help="print both variants' totals side by side")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    from lowlevel.mobilenet import MobileNetV1  # after parsing, so --help is instant

    def build(standard):
        return MobileNetV1(num_classes=args.classes, alpha=args.alpha, input_size=args.input_size,
                           stem_stride=args.stem_stride, standard=standard)
    try:
        if args.compare:
            print(format_comparison(build(False), build(True)))
        else:
            print(format_table(build(args.standard)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
