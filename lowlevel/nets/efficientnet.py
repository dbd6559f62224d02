"""EfficientNet-B0 (Tan and Le 2019, arXiv:1905.11946): MBConv blocks found by search, scaled as one.

The block (MBConv) is MobileNetV2's inverted residual (`mobilenet_v2.InvertedResidual`) with
a squeeze-and-excitation gate after the depthwise convolution, swish x sigmoid(x) as its
activation, and stochastic depth on the residual branch:

    x [B, H, W, C_in] -> expand: 1x1 to t C_in, BN, swish      (absent when t = 1)
                      -> depthwise: k x k, stride s, BN, swish
                      -> gate: sigmoid(W2 swish(W1 mean(x) + b1) + b2), R = C_in / 4 channels
                      -> project: 1x1 to C_out, BN (linear)
                      (+ x, the branch dropped for an example with probability p_i, when the shape is kept)

p_i grows linearly with the block's index i of N, p_i = 0.2 i / N (`--dropout` is the classifier's;
the stochastic-depth rate is the paper's 0.2).  The stem is a 3x3 convolution of 32 channels
(stride 2), BN, swish; the head a 1x1 convolution to 1280, BN, swish, global average pooling,
dropout and the classifier.  The table is the paper's Table 1 (B0); B1-B7 would scale its widths
and depths (compound scaling), which `--alpha` does for the widths alone here (Keras'
`round_filters`).  Keras' `EfficientNetB0` has the same parameter count, not counting the
normalization layer Keras puts inside the model (lowlevel normalizes in the input pipeline),
and with the same weights the same logits (tests/test_efficientnet.py).

For CIFAR-10 (32x32 images) the stem and the first block of stride 2 have stride 1, as for
MobileNetV2: the maps shrink 8x, to 4x4, instead of 32x.
"""
from __future__ import annotations

import dataclasses

from lowlevel._tf import tf

from lowlevel.layers import BatchNorm, Conv2D, Dense, dropout
from lowlevel.lightweight import Rounded, swish, unfused
from lowlevel.nets.mobilenet import folded, tap, tapped
from lowlevel.nets.mobilenet_v2 import InvertedResidual, MobileNetV2, divisible, keep_options


@dataclasses.dataclass(frozen=True)
class MBConv:
    """A row of Table 1: n blocks of kernel k, expansion t and c output channels, the first of stride s
    (cifar_s on 32x32 images)."""
    k: int
    t: int
    c: int
    n: int
    s: int
    cifar_s: int


B0 = (
    MBConv(k=3, t=1, c=16, n=1, s=1, cifar_s=1),
    MBConv(k=3, t=6, c=24, n=2, s=2, cifar_s=1),
    MBConv(k=5, t=6, c=40, n=2, s=2, cifar_s=2),
    MBConv(k=3, t=6, c=80, n=3, s=2, cifar_s=2),
    MBConv(k=5, t=6, c=112, n=3, s=1, cifar_s=1),
    MBConv(k=5, t=6, c=192, n=4, s=2, cifar_s=2),
    MBConv(k=3, t=6, c=320, n=1, s=1, cifar_s=1),
)
STEM, HEAD, DROP_PATH = 32, 1280, 0.2


class EfficientNet(MobileNetV2, Rounded):
    """EfficientNet-B0: images [B, S, S, C] (normalized floats) -> logits [B, num_classes].  The arguments
    are MobileNetV2's, and so are conv_layers, layer_table and total_stride; drop_path is the last
    block's stochastic-depth rate (0.2)."""

    def __init__(self, num_classes: int = 10, alpha: float = 1.0, input_size: int = 32, cifar: bool = True,
                 dropout: float = 0.0, bn_momentum: float = 0.99, fused_bn: bool = True, precision: str = "float32",
                 channels: int = 3, drop_path: float = DROP_PATH, name: str | None = "efficientnet_b0"):
        tf.Module.__init__(self, name=name)  # its own layers, not V2's
        compute = keep_options(self, num_classes, alpha, input_size, cifar, dropout, precision, channels)
        total = sum(row.n for row in B0)
        with self.name_scope:
            c = divisible(STEM * alpha)
            self.stem = Conv2D(channels, c, 3, 1 if cifar else 2, name="stem")
            self.bn_stem = BatchNorm(c, bn_momentum, fused=fused_bn, name="bn_stem")
            self.blocks = []
            for row in B0:
                out = divisible(row.c * alpha)
                for k in range(row.n):
                    i = len(self.blocks)
                    self.blocks.append(InvertedResidual(
                        c, c * row.t, out, (row.cifar_s if cifar else row.s) if k == 0 else 1, bn_momentum,
                        fused_bn, compute, expand=row.t != 1, kernel=row.k, act=swish,
                        se_reduced=max(1, int(c * 0.25)), se_act=swish, se_gate=tf.nn.sigmoid,
                        drop_path=drop_path * i / total, name=f"block_{i}"))
                    c = out
            head = divisible(HEAD * alpha)
            self.head = Conv2D(c, head, 1, compute_dtype=compute, name="head")
            self.bn_head = BatchNorm(head, bn_momentum, fused=fused_bn, name="bn_head")
            self.classifier = Dense(head, num_classes, name="classifier")

    def __call__(self, images: tf.Tensor, training: bool = False, seed=None, taps: bool | str = False):
        """images [B, S, S, C] -> logits [B, num_classes]; seed and taps as in MobileNetV1.__call__ (block i's
        stochastic depth draws with the key folded with i)."""
        record = {} if taps else None
        z = self.stem(images)
        x = self.activated("stem", swish, self.bn_stem(z, training))
        tap(record, "stem", z, x)
        for i, block in enumerate(self.blocks):
            key = None if seed is None else tf.random.experimental.stateless_fold_in(seed, i + 1)
            x = block(x, training, record, f"blocks[{i}]", key)
        z = self.head(x)  # [B, 4, 4, 1280] on CIFAR
        x = self.rounded("features", self.activated("head", swish, self.bn_head(z, training)))
        tap(record, "head", z, x)
        x = dropout(tf.reduce_mean(x, axis=[1, 2]), self.dropout_rate, training, seed)  # [B, 1280]
        return tapped(record, self.classifier(x), taps)

    def inference(self, images: tf.Tensor) -> tf.Tensor:
        """The logits of __call__(images, training=False), batch norms folded; in mixed precision the
        network up to the pooling in the 16-bit type."""
        x = folded(self.stem, self.bn_stem, tf.cast(images, self.precision),
                   activation=lambda z: self.activated("stem", swish, z))
        for block in self.blocks:
            x = block.inference(x)
        x = self.rounded("features", folded(self.head, self.bn_head, x,
                                           activation=lambda z: self.activated("head", swish, z)))
        return self.classifier(tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2]))

    def rounding_points(self) -> dict[str, tuple[float, float] | None]:
        """The swishes' inputs after the stem and the head, and the head's output, which the pooling reads
        (lightweight.Rounded)."""
        return {**unfused(swish, "stem", "head"), "features": None}


def b0(input_shape=(32, 32, 3), num_classes: int = 10, dropout: float | None = None, **options) -> EfficientNet:
    """EfficientNet-B0 for images of input_shape (H, H, C): the CIFAR strides below 128 pixels."""
    h, w, c = input_shape
    if h != w:
        raise ValueError(f"EfficientNet is built for square images, not {h}x{w}.")
    return EfficientNet(num_classes=num_classes, input_size=h, cifar=h < 128, dropout=dropout or 0.0, channels=c,
                        **options)
