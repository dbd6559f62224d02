"""Per-layer parameters and multiply-adds of any network of lowlevel.nets, counted from shapes alone.

For a layer whose output is H' x W' x C_out:

    Conv k x k     params k*k*C_in*C_out (+ C_out bias)   mult-adds H'*W'*k*k*C_in*C_out
    Conv DW k x k  params k*k*C                            mult-adds H'*W'*k*k*C
    Fully connected params C_in*C_out + C_out              mult-adds C_in*C_out
    BatchNorm      params 2C trainable + 2C moving statistics; its multiply-adds fold
                   into the convolution at inference, and the paper does not count them.
`python -m lowlevel.summary` prints these tables.
"""
from __future__ import annotations

import dataclasses
import math

from lowlevel.layers import BatchNorm, Conv2D, Dense, DepthwiseConv2D
from lowlevel.nets import NETS


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
