"""ShuffleNetV2 (Ma et al. 2018, arXiv:1807.11164): channel split and shuffle instead of costly 1x1
convolutions over every channel.

MobileNet's 1x1 convolutions hold most of its multiply-adds and parameters.  ShuffleNetV2's
unit sends only half the channels through its convolutions and passes the other half on
untouched; a channel shuffle then interleaves the two halves, so that the next unit's half
holds channels of both.  Its guidelines (equal widths in and out of a convolution, no grouped
1x1 convolutions, few branches, few element-wise ops) come from measured speed, not counted
multiply-adds.

    unit, stride 1:  x -> split into x1, x2 (C/2 each);  x2 -> 1x1, BN, ReLU -> 3x3 depthwise, BN
                     -> 1x1, BN, ReLU;  concat(x1, x2'), shuffle             [B, H, W, C]
    unit, stride 2:  both halves from all of x: left = 3x3 depthwise (stride 2), BN -> 1x1, BN, ReLU;
                     right = the stride-1 branch with its depthwise of stride 2; concat, shuffle
                                                                               [B, H/2, W/2, C_out]

The network: a 3x3 stem of 24 channels (stride 2), BN, ReLU, a 3x3 max pool (stride 2), three
stages of 4, 8 and 4 units (the first of each of stride 2), a 1x1 convolution to 1024 channels
(2048 at width 2.0), BN, ReLU, global average pooling and the classifier.  The stage widths come
from the paper's Table 5 per width (0.5, 1.0, 1.5, 2.0); another --alpha scales the 1.0x widths,
rounded to a multiple of 4 (the split halves them).  Trainable parameters at 224x224 and 1000
classes equal torchvision's published counts (tests/test_shufflenet.py); Keras has no ShuffleNet.

For CIFAR-10 (32x32 images) the stem has stride 1 and there is no max pool (as in the common
CIFAR versions, e.g. kuangliu/pytorch-cifar): the maps shrink 8x, to 4x4, instead of 32x.
"""
from __future__ import annotations

from lowlevel._tf import tf

from lowlevel.layers import BatchNorm, Conv2D, Dense, DepthwiseConv2D, dropout, global_average_pool, max_pool, relu
from lowlevel.lightweight import channel_shuffle, channel_split
from lowlevel.nets.mobilenet import folded, tap, tap_block, tapped
from lowlevel.nets.mobilenet_v2 import keep_options

STEM, REPEATS = 24, (4, 8, 4)
WIDTHS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024), 1.5: (176, 352, 704, 1024),
          2.0: (244, 488, 976, 2048)}  # the paper's Table 5: stages 2-4, then the last 1x1 convolution


def widths(alpha: float) -> tuple[int, int, int, int]:
    """Stage widths and the last convolution's for width `alpha`: Table 5's, or the 1.0x ones scaled."""
    if alpha in WIDTHS:
        return WIDTHS[alpha]
    *stages, last = WIDTHS[1.0]
    return (*[max(8, int(round(c * alpha / 4)) * 4) for c in stages], last)


class ConvBN(tf.Module):
    """A k x k convolution (depthwise: one filter per channel) + BN (+ ReLU): the pieces of the branches."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, act: bool, bn_momentum: float,
                 fused_bn: bool, depthwise: bool = False, compute_dtype=None, name: str | None = None):
        super().__init__(name=name)
        self.act, self.depthwise = act, depthwise
        with self.name_scope:
            self.conv = DepthwiseConv2D(in_channels, kernel, stride, gain=1.0, name="conv") if depthwise else \
                Conv2D(in_channels, out_channels, kernel, stride, compute_dtype=compute_dtype, name="conv")
            self.bn = BatchNorm(out_channels, bn_momentum, fused=fused_bn, name="bn")

    def __call__(self, x, training: bool, taps=None, name: str = ""):
        z = self.conv(x)
        y = self.bn(z, training)
        y = relu(y) if self.act else y
        tap(taps, name, z, y)
        return y

    def inference(self, x):
        return folded(self.conv, self.bn, x, depthwise=self.depthwise, activation=relu if self.act else None)


class Unit(tf.Module):
    """One ShuffleNetV2 unit (module docstring): [B, H, W, C_in] -> [B, H/s, W/s, C_out]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bn_momentum: float, fused_bn: bool,
                 compute_dtype=None, name: str | None = None):
        super().__init__(name=name)
        half, self.stride = out_channels // 2, stride
        into = in_channels if stride > 1 else in_channels // 2  # the right branch's input

        def pointwise(c_in, name):
            return ConvBN(c_in, half, 1, 1, True, bn_momentum, fused_bn, compute_dtype=compute_dtype, name=name)

        def depthwise(c, name):
            return ConvBN(c, c, 3, stride, False, bn_momentum, fused_bn, depthwise=True, name=name)

        with self.name_scope:
            self.left = [] if stride == 1 else [depthwise(in_channels, "left_depthwise"),
                                                pointwise(in_channels, "left_pointwise")]
            self.right = [pointwise(into, "pointwise_1"), depthwise(half, "depthwise"), pointwise(half, "pointwise_2")]

    def _branches(self, x, run, taps=None, name: str = ""):
        """concat(left, right) shuffled, each branch's layers applied by run(layer, x, index)."""
        if self.stride == 1:
            left, right = channel_split(x)  # [B, H, W, C/2] each
        else:
            left = right = x
        for i, layer in enumerate(self.left):
            left = run(layer, left, f"left_{i}")
        for i, layer in enumerate(self.right):
            right = run(layer, right, f"right_{i}")
        if self.stride == 1:  # the left half passes through: the unit's residual form
            tap_block(taps, name, shortcut=left, branch=right)
        return channel_shuffle(tf.concat([left, right], axis=-1))  # [B, H/s, W/s, C_out]

    def __call__(self, x, training: bool, taps=None, name: str = ""):
        return self._branches(x, lambda layer, y, _: layer(y, training, taps, f"{name}.{layer.name}"), taps, name)

    def inference(self, x):
        return self._branches(x, lambda layer, y, _: layer.inference(y))

    def convs(self, name: str) -> list[tuple[str, tf.Module, BatchNorm]]:
        return [(f"{name}.{layer.name}", layer.conv, layer.bn) for layer in self.left + self.right]


class ShuffleNetV2(tf.Module):
    """ShuffleNetV2: images [B, S, S, C] (normalized floats) -> logits [B, num_classes]; the arguments are
    MobileNetV2's (lowlevel/nets/mobilenet_v2.py)."""

    folds_batch_norm = True

    def __init__(self, num_classes: int = 10, alpha: float = 1.0, input_size: int = 32, cifar: bool = True,
                 dropout: float = 0.0, bn_momentum: float = 0.99, fused_bn: bool = True, precision: str = "float32",
                 channels: int = 3, name: str | None = "shufflenet_v2"):
        super().__init__(name=name)
        compute = keep_options(self, num_classes, alpha, input_size, cifar, dropout, precision, channels)
        *stages, last = widths(alpha)
        with self.name_scope:
            self.stem = ConvBN(channels, STEM, 3, 1 if cifar else 2, True, bn_momentum, fused_bn, name="stem")
            c, self.units = STEM, []
            for width, repeats in zip(stages, REPEATS):
                for k in range(repeats):
                    self.units.append(Unit(c, width, 2 if k == 0 else 1, bn_momentum, fused_bn, compute,
                                           name=f"unit_{len(self.units)}"))
                    c = width
            self.head = ConvBN(c, last, 1, 1, True, bn_momentum, fused_bn, compute_dtype=compute, name="head")
            self.classifier = Dense(last, num_classes, name="classifier")
        self.pool = not cifar  # the max pool after the stem (ImageNet form only)

    def __call__(self, images: tf.Tensor, training: bool = False, seed=None, taps: bool | str = False):
        """images [B, S, S, C] -> logits [B, num_classes]; seed and taps as in MobileNetV1.__call__."""
        record = {} if taps else None
        x = self.stem(images, training, record, "stem")
        x = max_pool(x, 3, 2, "SAME") if self.pool else x
        for i, unit in enumerate(self.units):
            x = unit(x, training, record, f"units[{i}]")
        x = self.head(x, training, record, "head")  # [B, 4, 4, 1024] on CIFAR
        x = dropout(global_average_pool(x, self.classifier), self.dropout_rate, training, seed)
        return tapped(record, self.classifier(x), taps)

    def inference(self, images: tf.Tensor) -> tf.Tensor:
        """The logits of __call__(images, training=False), batch norms folded; in mixed precision the
        network up to the pooling in the 16-bit type."""
        x = self.stem.inference(tf.cast(images, self.precision))
        x = max_pool(x, 3, 2, "SAME") if self.pool else x
        for unit in self.units:
            x = unit.inference(x)
        x = self.head.inference(x)
        return self.classifier(global_average_pool(tf.cast(x, tf.float32), self.classifier))

    def conv_layers(self) -> list[tuple[str, tf.Module, BatchNorm]]:
        """(name, convolution, its batch norm) for every convolution, in order."""
        found = [("stem", self.stem.conv, self.stem.bn)]
        for i, unit in enumerate(self.units):
            found += unit.convs(f"units[{i}]")
        return found + [("head", self.head.conv, self.head.bn)]

    def layer_table(self) -> list[tuple[str, object, tuple[int, ...]]]:
        """(name, layer, output shape of one image) for every layer in order (for lowlevel.summary)."""
        def rows(name, layer, size):
            shape = (size, size, layer.bn.channels)
            return [(name, layer.conv, shape), (f"{name}.bn", layer.bn, shape)]

        size = -(-self.input_size // self.stem.conv.stride)
        found = rows("stem", self.stem, size)
        if self.pool:
            size = -(-size // 2)
            found.append(("pool", "Max pool 3x3", (size, size, STEM)))
        for i, unit in enumerate(self.units):
            for branch in (unit.left, unit.right):  # each branch starts from the unit's input
                s = size
                for layer in branch:
                    s = -(-s // layer.conv.stride)
                    found += rows(f"units[{i}].{layer.name}", layer, s)
            size = -(-size // unit.stride)
        found += rows("head", self.head, size)
        found.append(("global pool", "Global avg pool", (self.classifier.in_features,)))
        return found + [("classifier", self.classifier, (self.num_classes,))]


def build(input_shape=(32, 32, 3), num_classes: int = 10, dropout: float | None = None, **options) -> ShuffleNetV2:
    """ShuffleNetV2 for images of input_shape (H, H, C): the CIFAR form below 128 pixels."""
    h, w, c = input_shape
    if h != w:
        raise ValueError(f"ShuffleNetV2 is built for square images, not {h}x{w}.")
    return ShuffleNetV2(num_classes=num_classes, input_size=h, cifar=h < 128, dropout=dropout or 0.0, channels=c,
                        **options)
