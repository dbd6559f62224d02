"""MobileNet v1 (Howard et al. 2017, arXiv:1704.04861), built from a table.

The body is the paper's Table 1 written as data: a 3x3 stem convolution, then
13 depthwise-separable blocks, each a 3x3 depthwise convolution (one filter per
channel: spatial filtering) and a 1x1 pointwise convolution (mixing channels),
both followed by batch norm and relu6.  Global average pooling, dropout and a
dense layer give the logits.

A separable block costs  H'W' (9 C_in + C_in C_out)  multiply-adds where a full
3x3 convolution costs  H'W' 9 C_in C_out:  8 to 9 times fewer for wide layers.
`standard=True` builds the same network with full 3x3 convolutions, the
comparison of the paper's Table 4.  `friendly=True` builds the quantization-friendly
separable block of Sheng et al. 2018 (arXiv:1803.08607): no batch norm and no activation
between the depthwise and the pointwise convolution, and ReLU instead of relu6, so that no
depthwise channel is scaled by 1 / sigma of a batch norm when the network is folded for int8.

Width multiplier alpha (paper section 3.3) thins every layer: a layer of C
channels gets max(8, int(alpha * C)).  int() rounds down, as Keras'
`MobileNet(alpha=...)` does; the floor of 8 channels is TF-slim's `min_depth`,
and changes nothing for alpha >= 0.25.

For CIFAR-10 (32x32 images) the stem has stride 1 instead of 2, so the last
blocks see 2x2 maps instead of 1x1; ImageNet's 224x224 uses stem stride 2.
"""
from __future__ import annotations

import dataclasses

from lowlevel._tf import tf

from lowlevel.layers import BatchNorm, Conv2D, Dense, DepthwiseConv2D, dropout, global_average_pool, relu6


@dataclasses.dataclass(frozen=True)
class Conv:
    """A full k x k convolution + batch norm + relu6 (the stem; its stride is the model's `stem_stride`:
    2 in the paper, 1 for CIFAR)."""
    channels: int
    kernel: int = 3


@dataclasses.dataclass(frozen=True)
class DepthSepConv:
    """3x3 depthwise (stride here) + BN + relu6, then 1x1 pointwise to `channels` + BN + relu6."""
    stride: int
    channels: int
    kernel: int = 3


# The paper's Table 1.
STEM = Conv(channels=32)
BODY = (
    DepthSepConv(stride=1, channels=64),
    DepthSepConv(stride=2, channels=128),
    DepthSepConv(stride=1, channels=128),
    DepthSepConv(stride=2, channels=256),
    DepthSepConv(stride=1, channels=256),
    DepthSepConv(stride=2, channels=512),
    *[DepthSepConv(stride=1, channels=512)] * 5,
    DepthSepConv(stride=2, channels=1024),
    DepthSepConv(stride=1, channels=1024),
)


# float32, or mixed precision with the convolutions in 16 bits
PRECISIONS = ("float32", "bfloat16", "float16")


def scaled(channels: int, alpha: float) -> int:
    """The width multiplier's rounding rule: max(8, int(alpha * channels))."""
    return max(8, int(alpha * channels))


class SeparableBlock(tf.Module):
    """x [B, H, W, C_in] -> [B, H/s, W/s, C_in] (depthwise) -> [B, H/s, W/s, C_out] (pointwise)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bn_momentum: float, fused_bn: bool,
                 compute_dtype=None, kernel: int = 3, name: str | None = None):
        super().__init__(name=name)
        with self.name_scope:
            self.depthwise = DepthwiseConv2D(in_channels, kernel, stride, name="depthwise")
            self.bn_depthwise = BatchNorm(in_channels, bn_momentum, fused=fused_bn, name="bn_depthwise")
            self.pointwise = Conv2D(in_channels, out_channels, 1, compute_dtype=compute_dtype, name="pointwise")
            self.bn_pointwise = BatchNorm(out_channels, bn_momentum, fused=fused_bn, name="bn_pointwise")

    def __call__(self, x, training: bool, taps=None, name: str = ""):
        """taps: a dict to record into (see MobileNetV1.__call__), under `name`.depthwise and .pointwise."""
        z = self.depthwise(x)  # [B, H', W', C_in], the batch norm's input
        x = relu6(self.bn_depthwise(z, training))  # [B, H', W', C_in]
        tap(taps, f"{name}.depthwise", z, x)
        z = self.pointwise(x)  # [B, H', W', C_out]
        x = relu6(self.bn_pointwise(z, training))  # [B, H', W', C_out]
        tap(taps, f"{name}.pointwise", z, x)
        return x

    def inference(self, x):
        """__call__(x, training=False) with each batch norm folded into its convolution, in x's dtype."""
        x = folded(self.depthwise, self.bn_depthwise, x, depthwise=True)  # [B, H', W', C_in]
        return folded(self.pointwise, self.bn_pointwise, x)  # [B, H', W', C_out]


class FriendlyBlock(tf.Module):
    """Sheng et al.'s quantization-friendly separable block, the same shapes as a SeparableBlock:

        y = relu(BN(pointwise(depthwise(x))))

    The depthwise convolution is linear and has no batch norm of its own (a bias there would be
    removed by the pointwise batch norm's mean), so int8 rounds its kernel as trained."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bn_momentum: float, fused_bn: bool,
                 compute_dtype=None, kernel: int = 3, name: str | None = None):
        super().__init__(name=name)
        with self.name_scope:
            self.depthwise = DepthwiseConv2D(in_channels, kernel, stride, name="depthwise")
            self.pointwise = Conv2D(in_channels, out_channels, 1, compute_dtype=compute_dtype, name="pointwise")
            self.bn_pointwise = BatchNorm(out_channels, bn_momentum, fused=fused_bn, name="bn_pointwise")

    def __call__(self, x, training: bool, taps=None, name: str = ""):
        x = self.depthwise(x)  # [B, H', W', C_in], linear
        tap(taps, f"{name}.depthwise", x, x)
        z = self.pointwise(x)  # [B, H', W', C_out]
        x = tf.nn.relu(self.bn_pointwise(z, training))  # [B, H', W', C_out]
        tap(taps, f"{name}.pointwise", z, x)
        return x

    def inference(self, x):
        """__call__(x, training=False) with the batch norm folded into the pointwise convolution."""
        return folded(self.pointwise, self.bn_pointwise, self.depthwise(x), activation=tf.nn.relu)


class StandardBlock(tf.Module):
    """The same shapes as a SeparableBlock with one full 3x3 convolution: [B, H, W, C_in] -> [B, H/s, W/s, C_out]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bn_momentum: float, fused_bn: bool,
                 compute_dtype=None, kernel: int = 3, name: str | None = None):
        super().__init__(name=name)
        with self.name_scope:
            self.conv = Conv2D(in_channels, out_channels, kernel, stride, compute_dtype=compute_dtype, name="conv")
            self.bn = BatchNorm(out_channels, bn_momentum, fused=fused_bn, name="bn")

    def __call__(self, x, training: bool, taps=None, name: str = ""):
        z = self.conv(x)  # [B, H', W', C_out], the batch norm's input
        x = relu6(self.bn(z, training))  # [B, H', W', C_out]
        tap(taps, f"{name}.conv", z, x)
        return x

    def inference(self, x):
        """__call__(x, training=False) with the batch norm folded into the convolution, in x's dtype."""
        return folded(self.conv, self.bn, x)  # [B, H', W', C_out]


class MobileNetV1(tf.Module):
    """MobileNet v1: images [B, S, S, C] (normalized floats; C = 3 for colour) -> logits [B, num_classes].

    num_classes: classifier outputs.  alpha: width multiplier (0 < alpha).
    input_size: S, the image side the model is built for (used to check the
    strides and by the cost summary; the convolutions accept any size).
    stem_stride: 1 for CIFAR's 32x32, 2 for ImageNet's 224x224.  channels: of the input images.
    dropout: rate before the classifier, in training only.
    standard: full 3x3 convolutions instead of depthwise-separable blocks.
    friendly: Sheng et al.'s quantization-friendly separable blocks (FriendlyBlock) and ReLU in the stem.
    bn_momentum, fused_bn: passed to every BatchNorm.
    precision: "float32", or "bfloat16" / "float16" for mixed precision: the 1x1
    (and standard 3x3) convolutions multiply in that dtype, everything else and
    every variable stay float32 (see layers.py); inference() runs all of it in that dtype.
    """

    # each batch norm directly follows its convolution, so inference folds it in (BatchNorm.fold)
    folds_batch_norm = True

    def __init__(self, num_classes: int = 10, alpha: float = 1.0, input_size: int = 32, stem_stride: int = 1,
                 dropout: float = 0.0, standard: bool = False, bn_momentum: float = 0.99, fused_bn: bool = True,
                 precision: str = "float32", channels: int = 3, friendly: bool = False,
                 name: str | None = "mobilenet_v1"):
        super().__init__(name=name)
        _check(num_classes, alpha, input_size, stem_stride, dropout)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
        self.num_classes, self.alpha, self.input_size, self.stem_stride = num_classes, alpha, input_size, stem_stride
        self.input_shape = (input_size, input_size, channels)
        self.dropout_rate, self.standard, self.precision = dropout, standard, precision
        self.activation = tf.nn.relu if friendly else relu6  # the stem's
        compute = tf.as_dtype(precision)
        Block = StandardBlock if standard else FriendlyBlock if friendly else SeparableBlock
        with self.name_scope:
            c = scaled(STEM.channels, alpha)
            self.stem = Conv2D(channels, c, STEM.kernel, stem_stride, name="stem")
            self.bn_stem = BatchNorm(c, bn_momentum, fused=fused_bn, name="bn_stem")
            self.blocks = []
            for i, row in enumerate(BODY):
                out = scaled(row.channels, alpha)
                self.blocks.append(Block(c, out, row.stride, bn_momentum, fused_bn, compute, row.kernel,
                                         name=f"block_{i}"))
                c = out
            self.classifier = Dense(c, num_classes, name="classifier")

    def __call__(self, images: tf.Tensor, training: bool = False, seed=None, taps: bool | str = False):
        """images [B, S, S, 3] -> logits [B, num_classes].  `seed`: the dropout key (see layers.dropout).

        taps=True returns instead a dict of every convolution layer's output after its batch norm and
        relu6, in order and named as in `conv_layers()` ("stem", "blocks[0].depthwise", ...), then
        "logits"; taps="pre" adds each batch norm's input under "<name>:bn_input" (and, in the later
        networks, what `tap_block` records inside a block).  With taps=False
        (the training step's case) nothing is recorded and the traced graph is the plain one.
        """
        record = {} if taps else None
        z = self.stem(images)  # [B, S/stem_stride, ., 32a]
        x = self.activation(self.bn_stem(z, training))
        tap(record, "stem", z, x)
        for i, block in enumerate(self.blocks):
            x = block(x, training, record, f"blocks[{i}]")  # [B, H', W', C']; 2x2 (CIFAR) at the end
        x = global_average_pool(x, self.classifier)  # [B, 1024a]
        x = dropout(x, self.dropout_rate, training, seed)
        return tapped(record, self.classifier(x), taps)  # logits [B, num_classes], or the taps

    def conv_layers(self) -> list[tuple[str, tf.Module, BatchNorm]]:
        """(name, convolution, its batch norm) for every convolution, in order: the stem, then each
        block's depthwise and pointwise (or, standard, its 3x3) convolution."""
        found = [("stem", self.stem, self.bn_stem)]
        for i, block in enumerate(self.blocks):
            if isinstance(block, (SeparableBlock, FriendlyBlock)):
                found += [(f"blocks[{i}].depthwise", block.depthwise, getattr(block, "bn_depthwise", None)),
                          (f"blocks[{i}].pointwise", block.pointwise, block.bn_pointwise)]
            else:
                found.append((f"blocks[{i}].conv", block.conv, block.bn))
        return found

    def layer_table(self) -> list[tuple[str, object, tuple[int, ...]]]:
        """(name, layer, output shape of one image) for every layer in order, counted from shapes (for
        lowlevel.summary): a layer is a module with variables, or the name of a parameter-free op."""
        size, found = self.input_size, []
        for name, conv, bn in self.conv_layers():
            size = -(-size // conv.stride)  # SAME padding: ceil(size / stride)
            prefix, _, last = name.rpartition(".")
            bn_name = "bn_stem" if name == "stem" else f"{prefix}.{'bn' if last == 'conv' else 'bn_' + last}"
            found.append((name, conv, (size, size, conv.out_channels)))
            if bn is not None:
                found.append((bn_name, bn, (size, size, conv.out_channels)))
        found.append(("pool", "Global avg pool", (self.classifier.in_features,)))
        return found + [("classifier", self.classifier, (self.num_classes,))]

    def inference(self, images: tf.Tensor) -> tf.Tensor:
        """The same logits as __call__(images, training=False), faster: every batch norm is folded into
        the convolution before it (BatchNorm.fold), so each layer is one convolution + bias + relu6,
        which TensorFlow runs as one fused kernel (1.2x the images/s of the unfolded form).
        Folding rounds differently, so the logits agree to float32 rounding, not bit for bit.

        In mixed precision the whole network, up to the pooling, runs in the 16-bit type: with
        no backward pass, there are no slow 16-bit gradient kernels to avoid, and no casts between
        the layers (in bfloat16, 1.4x the images/s of casting around each 1x1 convolution here).
        The logits are float32.
        """
        x = folded(self.stem, self.bn_stem, tf.cast(images, self.precision), activation=self.activation)
        for block in self.blocks:
            x = block.inference(x)
        return self.classifier(global_average_pool(tf.cast(x, tf.float32), self.classifier))  # [B, num_classes]


def folded(conv, bn: BatchNorm, x, depthwise: bool = False, activation=relu6):
    """activation(BN(conv(x))) at inference as one convolution with a bias (BatchNorm.fold), which
    TensorFlow runs as one fused kernel; in x's dtype.  activation None: linear (MobileNetV2's projection)."""
    kernel, bias = bn.fold(conv.kernel, depthwise=depthwise)
    y = conv(x, kernel)
    if conv.quantization is not None:  # quantization-aware training's: the bias on the int8 file's grid
        bias = conv.quantization.bias(bias)
    y = tf.nn.bias_add(y, tf.cast(bias, x.dtype))
    return activation(y) if activation else y


def tapped(record: dict | None, logits, taps: bool | str):
    """What __call__ returns: the logits, or with taps the recorded outputs and the logits (with "pre",
    each batch norm's input too)."""
    if not taps:
        return logits
    record["logits"] = logits
    return {k: v for k, v in record.items() if taps == "pre" or ":" not in k}


def tap(taps: dict | None, name: str, bn_input, output) -> None:
    if taps is not None:
        taps[f"{name}:bn_input"] = bn_input
        taps[name] = output


def tap_block(taps: dict | None, block: str, **inside) -> None:
    """Record a block's inner tensors for taps="pre", under "<block>:<what>": a squeeze-and-excitation
    "gate" [B, 1, 1, C]; a residual block's "shortcut" x and "branch" F(x), its output being x + F(x)
    (ShuffleNetV2: the half passed through and the branch's half)."""
    if taps is not None:
        taps.update({f"{block}:{what}": value for what, value in inside.items()})


def _check(num_classes, alpha, input_size, stem_stride, rate) -> None:
    if not alpha > 0:
        raise ValueError(f"alpha (the width multiplier) must be greater than 0, not {alpha}.")
    if num_classes < 1:
        raise ValueError(f"the number of classes must be at least 1, not {num_classes}.")
    if stem_stride not in (1, 2):
        raise ValueError(f"the stem stride must be 1 (CIFAR) or 2 (ImageNet), not {stem_stride}.")
    total = stem_stride
    for row in BODY:
        total *= row.stride
    if input_size < total:
        raise ValueError(f"input size {input_size} is too small for the strides (they divide it by {total}); "
                         f"use at least {total}, or a stem stride of 1.")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout must be in [0, 1), not {rate}.")


def separable(input_shape=(32, 32, 3), num_classes: int = 10, dropout: float | None = None,
              standard: bool = False, **options) -> MobileNetV1:
    """MobileNetV1 for images of input_shape (H, H, C): the CIFAR stem (stride 1) below 128 pixels,
    ImageNet's (stride 2) from 128 up; options: alpha, bn_momentum, precision."""
    h, w, c = input_shape
    if h != w:
        raise ValueError(f"MobileNet is built for square images, not {h}x{w}.")
    return MobileNetV1(num_classes=num_classes, input_size=h, stem_stride=1 if h < 128 else 2,
                       dropout=dropout or 0.0, standard=standard, channels=c, **options)


def standard(input_shape=(32, 32, 3), num_classes: int = 10, **options) -> MobileNetV1:
    """MobileNetV1 with full 3x3 convolutions in place of the separable blocks."""
    return separable(input_shape, num_classes, standard=True, **options)


def friendly(input_shape=(32, 32, 3), num_classes: int = 10, **options) -> MobileNetV1:
    """MobileNetV1 with Sheng et al.'s quantization-friendly separable blocks (FriendlyBlock)."""
    return separable(input_shape, num_classes, friendly=True, **options)
