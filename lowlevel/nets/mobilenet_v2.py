"""MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381): inverted residuals and linear bottlenecks.

MobileNet v1's separable block keeps the channel count between its two convolutions, and its
relu6 after the 1x1 convolution destroys information when the layer is narrow.  V2's block
turns it inside out: a 1x1 convolution *expands* the narrow input t times (t = 6), the 3x3
depthwise convolution filters in that wide space, and a 1x1 convolution *projects* back to a
narrow output with no activation after it (the "linear bottleneck").  When the block keeps
the shape (stride 1, C_in = C_out) its input is added to its output (the inverted residual):
the skip connections join the narrow ends.

    x [B, H, W, C_in] -> expand: 1x1 to t C_in, BN, relu6     (absent when t = 1)
                      -> depthwise: 3x3, stride s, BN, relu6   [B, H/s, W/s, t C_in]
                      -> project: 1x1 to C_out, BN (linear)     [B, H/s, W/s, C_out]
                      (+ x when s = 1 and C_in = C_out)

The body is the paper's Table 2 written as data: a 3x3 stem of 32 channels, seven rows of
(t, c, n, s) bottlenecks (n blocks, the first with stride s), a 1x1 head of 1280 channels,
global average pooling and the classifier.

Width multiplier alpha: every block's output, and the stem, get `divisible(alpha * c)`
channels (the nearest multiple of 8, never 10% below alpha * c: Keras' and TF-slim's
`_make_divisible`); the head keeps 1280 unless alpha > 1.  Expansions multiply the actual
input channels.  Keras' `MobileNetV2` has the same parameter count (tests/test_nets_v2.py).

For CIFAR-10 (32x32 images) the stem and the second row have stride 1 instead of 2 (as the
common CIFAR versions do, e.g. kuangliu/pytorch-cifar): the maps shrink 8x, to 4x4, instead
of 32x (1x1).  ImageNet's 224x224 uses the paper's strides.
"""
from __future__ import annotations

import dataclasses

from lowlevel._tf import tf

from lowlevel.layers import BatchNorm, Conv2D, Dense, DepthwiseConv2D, dropout, global_average_pool, relu6
from lowlevel import lightweight
from lowlevel.lightweight import Rounded, SqueezeExcite, unfused
from lowlevel.nets.mobilenet import PRECISIONS, folded, tap, tap_block, tapped


@dataclasses.dataclass(frozen=True)
class Bottleneck:
    """A row of Table 2: n inverted-residual blocks of expansion t and c output channels, the first of
    stride s (cifar_s on 32x32 images), the others of stride 1."""
    t: int
    c: int
    n: int
    s: int
    cifar_s: int


# The paper's Table 2.
STEM, HEAD = 32, 1280
TABLE2 = (
    Bottleneck(t=1, c=16, n=1, s=1, cifar_s=1),
    Bottleneck(t=6, c=24, n=2, s=2, cifar_s=1),
    Bottleneck(t=6, c=32, n=3, s=2, cifar_s=2),
    Bottleneck(t=6, c=64, n=4, s=2, cifar_s=2),
    Bottleneck(t=6, c=96, n=3, s=1, cifar_s=1),
    Bottleneck(t=6, c=160, n=3, s=2, cifar_s=2),
    Bottleneck(t=6, c=320, n=1, s=1, cifar_s=1),
)


def divisible(v: float, divisor: int = 8) -> int:
    """The nearest multiple of `divisor` to v, at least `divisor`, and never more than 10% below v."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


class InvertedResidual(tf.Module, Rounded):
    """x [B, H, W, C_in] -> [B, H/s, W/s, C_out]: expand to `wide` channels (if `expand`), k x k depthwise,
    a squeeze-and-excitation gate (if se_reduced > 0: MobileNetV3, EfficientNet; its activation and
    gate se_act, se_gate), linear projection, + x when the shape is kept (module docstring).
    act: the activation after the expansion and the depthwise convolution (relu6 here, relu or
    hard-swish in MobileNetV3, swish in EfficientNet).  drop_path: the rate at which training drops
    the block's branch for an example (stochastic depth, EfficientNet; lightweight.drop_path)."""

    def __init__(self, in_channels: int, wide: int, out_channels: int, stride: int, bn_momentum: float,
                 fused_bn: bool, compute_dtype=None, expand: bool = True, kernel: int = 3, act=relu6,
                 se_reduced: int = 0, se_act=None, se_gate=None, drop_path: float = 0.0,
                 name: str | None = None):
        super().__init__(name=name)
        self.stride, self.act, self.drop_path = stride, act, drop_path
        self.residual = stride == 1 and in_channels == out_channels
        with self.name_scope:
            self.expand = Conv2D(in_channels, wide, 1, compute_dtype=compute_dtype, name="expand") if expand else None
            self.bn_expand = BatchNorm(wide, bn_momentum, fused=fused_bn, name="bn_expand") if expand else None
            self.depthwise = DepthwiseConv2D(wide, kernel, stride, name="depthwise")
            self.bn_depthwise = BatchNorm(wide, bn_momentum, fused=fused_bn, name="bn_depthwise")
            self.se = SqueezeExcite(wide, se_reduced, se_act, se_gate, name="se") if se_reduced else None
            # no activation after the projection: the gain of the linear layer is 1 (LeCun), not He's 2
            self.project = Conv2D(wide, out_channels, 1, compute_dtype=compute_dtype, gain=1.0, name="project")
            self.bn_project = BatchNorm(out_channels, bn_momentum, fused=fused_bn, name="bn_project")
        self.quantization = None  # lightweight.Rounded's

    def rounding_points(self) -> dict[str, tuple[float, float] | None]:
        """Quantization-aware training's learned ranges (lightweight.Rounded) of the linear projection's
        output; in a residual block of its input as the sum's operand and of the sum; of a hard-swish's
        or swish's input."""
        shortcut = dict.fromkeys(["input", "sum"]) if self.residual else {}
        return {**shortcut, **unfused(self.act, *(["expand"] if self.expand is not None else []), "depthwise"),
                "project": None}

    def __call__(self, x, training: bool, taps=None, name: str = "", seed=None):
        """taps: a dict to record into (MobileNetV1.__call__ describes them), under `name`.expand, ...
        seed: the key of drop_path's draws (layers.dropout)."""
        x = self.rounded("input", x) if self.residual else x  # the shortcut's int8 form
        y = x
        if self.expand is not None:
            z = self.expand(y)  # [B, H, W, wide]
            y = self.activated("expand", self.act, self.bn_expand(z, training))
            tap(taps, f"{name}.expand", z, y)
        z = self.depthwise(y)  # [B, H/s, W/s, wide]
        y = self.activated("depthwise", self.act, self.bn_depthwise(z, training))
        tap(taps, f"{name}.depthwise", z, y)
        if self.se is not None:
            y, gate = self.se.scaled(y)  # y * gate, gate [B, 1, 1, wide]
            tap_block(taps, name, gate=gate)
        z = self.project(y)  # [B, H/s, W/s, C_out]
        y = self.rounded("project", self.bn_project(z, training))  # linear: no activation
        tap(taps, f"{name}.project", z, y)
        if not self.residual:
            return y
        tap_block(taps, name, shortcut=x, branch=y)
        return self.rounded("sum", x + lightweight.drop_path(y, self.drop_path, training, seed))

    def inference(self, x):
        """__call__(x, training=False) with each batch norm folded into its convolution, in x's dtype."""
        x = self.rounded("input", x) if self.residual else x
        y = x
        if self.expand is not None:
            y = folded(self.expand, self.bn_expand, y, activation=lambda z: self.activated("expand", self.act, z))
        y = folded(self.depthwise, self.bn_depthwise, y, depthwise=True,
                   activation=lambda z: self.activated("depthwise", self.act, z))
        y = self.se(y) if self.se is not None else y
        y = self.rounded("project", folded(self.project, self.bn_project, y, activation=None))
        return self.rounded("sum", x + y) if self.residual else y

    def convs(self, name: str) -> list[tuple[str, tf.Module, BatchNorm]]:
        """(name, convolution, batch norm) of the block's convolutions, in order."""
        found = [(f"{name}.expand", self.expand, self.bn_expand)] if self.expand is not None else []
        return found + [(f"{name}.depthwise", self.depthwise, self.bn_depthwise),
                        (f"{name}.project", self.project, self.bn_project)]


def check_options(alpha: float, precision: str, rate: float) -> None:
    """Refuse a width, precision or dropout no network can have, in one sentence (ValueError)."""
    if not alpha > 0:
        raise ValueError(f"alpha (the width multiplier) must be greater than 0, not {alpha}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout must be in [0, 1), not {rate}.")


def keep_options(net, num_classes: int, alpha: float, input_size: int, cifar: bool, dropout: float,
                 precision: str, channels: int):
    """Check the options every later network takes (check_options), keep them as the network's
    attributes, and return the dtype its 1x1 convolutions compute in."""
    check_options(alpha, precision, dropout)
    net.num_classes, net.alpha, net.input_size, net.cifar = num_classes, alpha, input_size, cifar
    net.input_shape = (input_size, input_size, channels)
    net.dropout_rate, net.precision = dropout, precision
    return tf.as_dtype(precision)


class MobileNetV2(tf.Module):
    """MobileNetV2: images [B, S, S, C] (normalized floats) -> logits [B, num_classes].

    The arguments are MobileNetV1's (lowlevel/nets/mobilenet.py); `cifar` takes the CIFAR strides
    (module docstring) instead of the paper's.
    """

    folds_batch_norm = True  # each batch norm directly follows its convolution

    def __init__(self, num_classes: int = 10, alpha: float = 1.0, input_size: int = 32, cifar: bool = True,
                 dropout: float = 0.0, bn_momentum: float = 0.99, fused_bn: bool = True, precision: str = "float32",
                 channels: int = 3, name: str | None = "mobilenet_v2"):
        super().__init__(name=name)
        compute = keep_options(self, num_classes, alpha, input_size, cifar, dropout, precision, channels)
        with self.name_scope:
            c = divisible(STEM * alpha)
            self.stem = Conv2D(channels, c, 3, 1 if cifar else 2, name="stem")
            self.bn_stem = BatchNorm(c, bn_momentum, fused=fused_bn, name="bn_stem")
            self.blocks = []
            for row in TABLE2:
                out = divisible(row.c * alpha)
                for k in range(row.n):
                    stride = (row.cifar_s if cifar else row.s) if k == 0 else 1
                    self.blocks.append(InvertedResidual(c, c * row.t, out, stride, bn_momentum, fused_bn, compute,
                                                        expand=row.t != 1, name=f"block_{len(self.blocks)}"))
                    c = out
            head = divisible(HEAD * alpha) if alpha > 1.0 else HEAD
            self.head = Conv2D(c, head, 1, compute_dtype=compute, name="head")
            self.bn_head = BatchNorm(head, bn_momentum, fused=fused_bn, name="bn_head")
            self.classifier = Dense(head, num_classes, name="classifier")
        if input_size < self.total_stride():
            raise ValueError(f"input size {input_size} is too small for the strides (they divide it by "
                             f"{self.total_stride()}); use at least {self.total_stride()}.")

    def total_stride(self) -> int:
        total = self.stem.stride
        for block in self.blocks:
            total *= block.stride
        return total

    def __call__(self, images: tf.Tensor, training: bool = False, seed=None, taps: bool | str = False):
        """images [B, S, S, C] -> logits [B, num_classes]; seed and taps as in MobileNetV1.__call__."""
        record = {} if taps else None
        z = self.stem(images)  # [B, S/stride, ., 32a]
        x = relu6(self.bn_stem(z, training))
        tap(record, "stem", z, x)
        for i, block in enumerate(self.blocks):
            x = block(x, training, record, f"blocks[{i}]")
        z = self.head(x)  # [B, 4, 4, 1280] on CIFAR
        x = relu6(self.bn_head(z, training))
        tap(record, "head", z, x)
        x = dropout(global_average_pool(x, self.classifier), self.dropout_rate, training, seed)  # [B, 1280]
        return tapped(record, self.classifier(x), taps)  # logits [B, num_classes], or the taps

    def conv_layers(self) -> list[tuple[str, tf.Module, BatchNorm]]:
        """(name, convolution, its batch norm) for every convolution, in order."""
        found = [("stem", self.stem, self.bn_stem)]
        for i, block in enumerate(self.blocks):
            found += block.convs(f"blocks[{i}]")
        return found + [("head", self.head, self.bn_head)]

    def layer_table(self) -> list[tuple[str, object, tuple[int, ...]]]:
        """(name, layer, output shape of one image) for every layer in order (for lowlevel.summary)."""
        size, found = self.input_size, []
        gates = {f"blocks[{i}].depthwise": b.se for i, b in enumerate(self.blocks) if b.se is not None}
        for name, conv, bn in self.conv_layers():
            size = -(-size // conv.stride)  # SAME padding: ceil(size / stride)
            prefix, _, last = name.rpartition(".")
            shape = (size, size, conv.out_channels)
            found += [(name, conv, shape), (f"{prefix}.bn_{last}" if prefix else f"bn_{name}", bn, shape)]
            if name in gates:  # MobileNetV3's squeeze-and-excitation, on the pooled map
                se = gates[name]
                found += [(f"{prefix}.se.squeeze", se.squeeze, (1, 1, se.squeeze.out_channels)),
                          (f"{prefix}.se.excite", se.excite, (1, 1, se.excite.out_channels))]
        return found + [("pool", "Global avg pool", (self.head.out_channels,)), *self.top_table()]

    def top_table(self) -> list[tuple[str, object, tuple[int, ...]]]:
        """The layer_table rows after the pooling."""
        return [("classifier", self.classifier, (self.num_classes,))]

    def inference(self, images: tf.Tensor) -> tf.Tensor:
        """The logits of __call__(images, training=False), every batch norm folded into its convolution
        and, in mixed precision, the whole network up to the pooling in the 16-bit type."""
        x = folded(self.stem, self.bn_stem, tf.cast(images, self.precision))
        for block in self.blocks:
            x = block.inference(x)
        x = folded(self.head, self.bn_head, x)
        return self.classifier(global_average_pool(tf.cast(x, tf.float32), self.classifier))  # [B, num_classes]


def build(input_shape=(32, 32, 3), num_classes: int = 10, dropout: float | None = None, **options) -> MobileNetV2:
    """MobileNetV2 for images of input_shape (H, H, C): the CIFAR strides below 128 pixels, the paper's from
    128 up; options: alpha, bn_momentum, precision."""
    h, w, c = input_shape
    if h != w:
        raise ValueError(f"MobileNetV2 is built for square images, not {h}x{w}.")
    return MobileNetV2(num_classes=num_classes, input_size=h, cifar=h < 128, dropout=dropout or 0.0, channels=c,
                       **options)
