"""MobileNetV3-Small and -Large (Howard et al. 2019, arXiv:1905.02244): MobileNetV2's block, found by
search, with squeeze-and-excitation and hard-swish.

The block is V2's inverted residual (`mobilenet_v2.InvertedResidual`) with three changes found
by architecture search: a 3x3 or 5x5 depthwise kernel per block; in some blocks a
squeeze-and-excitation gate after the depthwise convolution (lightweight.SqueezeExcite: each channel
scaled by a gate from the whole map's means); and the activation, ReLU in the early blocks,
hard-swish x relu6(x + 3) / 6 in the later ones (lightweight.hard_swish), where the maps are small
and the nonlinearity pays for itself.

    x [B, H, W, C_in] -> expand: 1x1 to E, BN, act        (absent in the first block)
                      -> depthwise: k x k, stride s, BN, act
                      -> squeeze-and-excitation gate       (where the table says so; R = E / 4)
                      -> project: 1x1 to C_out, BN (linear), + x when the shape is kept

The tables are the paper's Tables 1 and 2, with Keras' expansions (E = divisible(t C_in), t
fractional where the paper gives E directly: 72 / 16 = 4.5).  The stem is a 3x3 convolution
of 16 channels (any width), BN and hard-swish; the head a 1x1 convolution to 6 C_last with BN
and hard-swish, global average pooling, a 1x1 convolution with a bias to 1024 (Small) or 1280
(Large) channels, hard-swish (no batch norm: after pooling), dropout and the classifier.
Keras' `MobileNetV3Small` / `MobileNetV3Large` (include_preprocessing=False) have the same
parameter counts and, with the same weights, the same logits (tests/test_mobilenet_v3.py).

For CIFAR-10 (32x32 images) the stem and the first block of stride 2 have stride 1, as for
MobileNetV2: the maps shrink 8x, to 4x4, instead of 32x.
"""
from __future__ import annotations

import dataclasses

from lowlevel._tf import tf

from lowlevel.layers import BatchNorm, Conv2D, Dense, dropout, relu
from lowlevel.lightweight import Rounded, hard_swish, unfused
from lowlevel.nets.mobilenet import folded, tap, tapped
from lowlevel.nets.mobilenet_v2 import InvertedResidual, MobileNetV2, divisible, keep_options

ACTIVATIONS = {"relu": relu, "hswish": hard_swish}


@dataclasses.dataclass(frozen=True)
class Bneck:
    """A row of the paper's table: kernel k, expansion t (E = divisible(t C_in)), output channels c,
    a squeeze-and-excitation gate or not, the activation, the stride s (cifar_s on 32x32 images)."""
    k: int
    t: float
    c: int
    se: bool
    act: str
    s: int
    cifar_s: int


SMALL = (  # Table 2
    Bneck(3, 1, 16, True, "relu", 2, 1),
    Bneck(3, 72 / 16, 24, False, "relu", 2, 2),
    Bneck(3, 88 / 24, 24, False, "relu", 1, 1),
    Bneck(5, 4, 40, True, "hswish", 2, 2),
    Bneck(5, 6, 40, True, "hswish", 1, 1),
    Bneck(5, 6, 40, True, "hswish", 1, 1),
    Bneck(5, 3, 48, True, "hswish", 1, 1),
    Bneck(5, 3, 48, True, "hswish", 1, 1),
    Bneck(5, 6, 96, True, "hswish", 2, 2),
    Bneck(5, 6, 96, True, "hswish", 1, 1),
    Bneck(5, 6, 96, True, "hswish", 1, 1),
)
LARGE = (  # Table 1
    Bneck(3, 1, 16, False, "relu", 1, 1),
    Bneck(3, 4, 24, False, "relu", 2, 1),
    Bneck(3, 3, 24, False, "relu", 1, 1),
    Bneck(5, 3, 40, True, "relu", 2, 2),
    Bneck(5, 3, 40, True, "relu", 1, 1),
    Bneck(5, 3, 40, True, "relu", 1, 1),
    Bneck(3, 6, 80, False, "hswish", 2, 2),
    Bneck(3, 2.5, 80, False, "hswish", 1, 1),
    Bneck(3, 2.3, 80, False, "hswish", 1, 1),
    Bneck(3, 2.3, 80, False, "hswish", 1, 1),
    Bneck(3, 6, 112, True, "hswish", 1, 1),
    Bneck(3, 6, 112, True, "hswish", 1, 1),
    Bneck(5, 6, 160, True, "hswish", 2, 2),
    Bneck(5, 6, 160, True, "hswish", 1, 1),
    Bneck(5, 6, 160, True, "hswish", 1, 1),
)
STEM = 16
LAST_POINT = {"small": 1024, "large": 1280}


class MobileNetV3(MobileNetV2, Rounded):
    """MobileNetV3-Small or -Large: images [B, S, S, C] (normalized floats) -> logits [B, num_classes].

    size: "small" or "large".  dropout: before the classifier (Keras' default 0.2; here the
    run's --dropout, 0 unless given).  The other arguments are MobileNetV2's, and so are
    conv_layers, layer_table and total_stride.
    """

    def __init__(self, size: str = "small", num_classes: int = 10, alpha: float = 1.0, input_size: int = 32,
                 cifar: bool = True, dropout: float = 0.0, bn_momentum: float = 0.99, fused_bn: bool = True,
                 precision: str = "float32", channels: int = 3, name: str | None = None):
        tf.Module.__init__(self, name=name or f"mobilenet_v3_{size}")  # its own layers, not V2's
        self.size = size
        compute = keep_options(self, num_classes, alpha, input_size, cifar, dropout, precision, channels)
        with self.name_scope:
            self.stem = Conv2D(channels, STEM, 3, 1 if cifar else 2, name="stem")
            self.bn_stem = BatchNorm(STEM, bn_momentum, fused=fused_bn, name="bn_stem")
            c, self.blocks = STEM, []
            for i, row in enumerate({"small": SMALL, "large": LARGE}[size]):
                out = divisible(row.c * alpha)
                wide = c if i == 0 else divisible(c * row.t)  # the first block has no expansion
                self.blocks.append(InvertedResidual(
                    c, wide, out, row.cifar_s if cifar else row.s, bn_momentum, fused_bn, compute, expand=i > 0,
                    kernel=row.k, act=ACTIVATIONS[row.act], se_reduced=divisible(wide / 4) if row.se else 0,
                    name=f"block_{i}"))
                c = out
            wide = divisible(c * 6)
            self.head = Conv2D(c, wide, 1, compute_dtype=compute, name="head")
            self.bn_head = BatchNorm(wide, bn_momentum, fused=fused_bn, name="bn_head")
            last = LAST_POINT[size] if alpha <= 1.0 else divisible(LAST_POINT[size] * alpha)
            self.last = Conv2D(wide, last, 1, use_bias=True, name="last")  # on the pooled [B, 1, 1, wide]
            self.classifier = Dense(last, num_classes, name="classifier")

    def __call__(self, images: tf.Tensor, training: bool = False, seed=None, taps: bool | str = False):
        """images [B, S, S, C] -> logits [B, num_classes]; seed and taps as in MobileNetV1.__call__."""
        record = {} if taps else None
        z = self.stem(images)  # [B, S/stride, ., 16]
        x = self.activated("stem", hard_swish, self.bn_stem(z, training))
        tap(record, "stem", z, x)
        for i, block in enumerate(self.blocks):
            x = block(x, training, record, f"blocks[{i}]")
        z = self.head(x)  # [B, 4, 4, 6 C_last] on CIFAR
        x = self.rounded("features", self.activated("head", hard_swish, self.bn_head(z, training)))
        tap(record, "head", z, x)
        x = self.activated("last", hard_swish, self.last(tf.reduce_mean(x, axis=[1, 2], keepdims=True)))[:, 0, 0]
        x = dropout(x, self.dropout_rate, training, seed)
        return tapped(record, self.classifier(x), taps)

    def top_table(self) -> list[tuple[str, object, tuple[int, ...]]]:
        """The layer_table rows after the pooling (MobileNetV2.layer_table has the rest)."""
        return [("last", self.last, (1, 1, self.last.out_channels)),
                ("classifier", self.classifier, (self.num_classes,))]

    def inference(self, images: tf.Tensor) -> tf.Tensor:
        """The logits of __call__(images, training=False), every batch norm folded into its convolution
        and, in mixed precision, the network up to the pooling in the 16-bit type."""
        x = folded(self.stem, self.bn_stem, tf.cast(images, self.precision),
                   activation=lambda z: self.activated("stem", hard_swish, z))
        for block in self.blocks:
            x = block.inference(x)
        x = self.rounded("features", folded(self.head, self.bn_head, x,
                                           activation=lambda z: self.activated("head", hard_swish, z)))
        x = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2], keepdims=True)  # [B, 1, 1, 6 C_last]
        return self.classifier(self.activated("last", hard_swish, self.last(x))[:, 0, 0])  # [B, num_classes]

    def rounding_points(self) -> dict[str, tuple[float, float] | None]:
        """The hard-swishes' inputs after the stem, the head and the last 1x1 convolution, and the head's
        output, which the pooling reads (lightweight.Rounded)."""
        return {**unfused(hard_swish, "stem", "head", "last"), "features": None}


def _build(size: str, input_shape, num_classes: int, dropout: float | None, **options) -> MobileNetV3:
    h, w, c = input_shape
    if h != w:
        raise ValueError(f"MobileNetV3 is built for square images, not {h}x{w}.")
    return MobileNetV3(size, num_classes=num_classes, input_size=h, cifar=h < 128, dropout=dropout or 0.0,
                       channels=c, **options)


def small(input_shape=(32, 32, 3), num_classes: int = 10, dropout: float | None = None, **options) -> MobileNetV3:
    """MobileNetV3-Small for images of input_shape (H, H, C): the CIFAR strides below 128 pixels."""
    return _build("small", input_shape, num_classes, dropout, **options)


def large(input_shape=(32, 32, 3), num_classes: int = 10, dropout: float | None = None, **options) -> MobileNetV3:
    """MobileNetV3-Large for images of input_shape (H, H, C): the CIFAR strides below 128 pixels."""
    return _build("large", input_shape, num_classes, dropout, **options)
