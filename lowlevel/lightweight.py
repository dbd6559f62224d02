"""The raw-op pieces the later lightweight networks add to MobileNet v1's (lowlevel/layers.py):
hard-sigmoid and hard-swish (MobileNetV3), swish (EfficientNet), squeeze-and-excitation gates
(MobileNetV3, EfficientNet), stochastic depth (EfficientNet), channel split and shuffle
(ShuffleNetV2).  Each docstring states its formula; tests/test_mobilenet_v3.py and
tests/test_shufflenet.py check them against numpy and Keras."""
from __future__ import annotations

from lowlevel._tf import tf

from lowlevel.layers import Conv2D, dropout


def hard_sigmoid(x: tf.Tensor) -> tf.Tensor:
    """relu6(x + 3) / 6: a piecewise-linear sigmoid, 0 below -3 and 1 above 3 (MobileNetV3)."""
    return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


def hard_swish(x: tf.Tensor) -> tf.Tensor:
    """x * relu6(x + 3) / 6: swish x * sigmoid(x) with the hard sigmoid, cheap on any hardware (MobileNetV3)."""
    return x * hard_sigmoid(x)


def swish(x: tf.Tensor) -> tf.Tensor:
    """x * sigmoid(x) (SiLU; EfficientNet).  Written out rather than tf.nn.silu, whose custom gradient
    every SavedModel save (and so every LiteRT conversion) traces again, for no gain in the step."""
    return x * tf.sigmoid(x)


UNFUSED = (hard_swish, swish)  # activations the int8 network runs as operations of their own


class Rounded:
    """A module whose tensors quantization-aware training rounds to 8 bits at named points besides
    its convolutions' inputs (lowlevel/quantize.py rounds those): the tensors of the int8 network that
    no convolution reads alone.  `rounding_points()` names them, each with its range: None (learned
    in training) or a fixed (lo, hi).  `quantization` is quantize.Quantized's, else None."""

    quantization = None

    def rounding_points(self) -> dict[str, tuple[float, float] | None]:
        return {}

    def rounded(self, what: str, y: tf.Tensor) -> tf.Tensor:
        """y, or y rounded to 8 bits at point `what` under quantization-aware training."""
        return y if self.quantization is None else self.quantization(what, y)

    def activated(self, what: str, act, z: tf.Tensor) -> tf.Tensor:
        """act(z); under quantization-aware training a hard-swish's or swish's input z rounded first at
        point `what` (`unfused`), and a swish's sigmoid at `what`.sigmoid."""
        if act not in UNFUSED or self.quantization is None:
            return act(z)
        z = self.rounded(what, z)
        if act is swish:  # the int8 network's LOGISTIC, then MUL
            return z * self.rounded(f"{what}.sigmoid", tf.sigmoid(z))
        return act(z)


SIGMOID_RANGE = (0.0, 255 / 256)  # the int8 LOGISTIC kernel's fixed output range, steps of 1/256


def unfused(act, *points: str) -> dict[str, tuple[float, float] | None]:
    """The points of the activation act's inputs: the int8 network runs hard-swish and swish as
    operations of their own after the convolution, whose output needs its learned range (ReLU and
    ReLU6 are the clamps of the convolution's own output range); a swish's sigmoid, on its fixed range."""
    if act not in UNFUSED:
        return {}
    return {**dict.fromkeys(points), **({f"{p}.sigmoid": SIGMOID_RANGE for p in points} if act is swish else {})}


class SqueezeExcite(tf.Module, Rounded):
    """Squeeze-and-excitation (Hu et al. 2018): each channel scaled by a gate in (0, 1) computed from
    the whole map's channel means:

        s = mean over H, W of x                        [B, 1, 1, C]   (squeeze)
        g = gate(W2 act(W1 s + b1) + b2)               [B, 1, 1, C]   (excite; W1 [C, R], W2 [R, C])
        y = x * g                                      [B, H, W, C]

    W1 and W2 are 1x1 convolutions with biases (Keras' layout, so weights copy over); R = `reduced`.
    MobileNetV3: act relu, gate hard_sigmoid (the defaults); EfficientNet: swish and sigmoid.
    Quantization-aware training rounds x, act's input and sigmoid if it is swish, W2 s' + b2, and the
    gate: a hard sigmoid's relu6(. + 3) in [0, 6] and its gate in [0, 1], a sigmoid's in [0, 255/256]
    (the int8 LOGISTIC kernel's fixed output scale 1/256).
    """

    def __init__(self, channels: int, reduced: int, act=None, gate=None, name: str | None = None):
        super().__init__(name=name)
        self.act, self.gate_fn = act or tf.nn.relu, gate or hard_sigmoid
        with self.name_scope:
            self.squeeze = Conv2D(channels, reduced, 1, use_bias=True, name="squeeze")
            self.excite = Conv2D(reduced, channels, 1, use_bias=True, gain=1.0, name="excite")
        self.quantization = None

    def rounding_points(self) -> dict[str, tuple[float, float] | None]:
        fixed = {"shifted": (0.0, 6.0), "gate": (0.0, 1.0)} if self.gate_fn is hard_sigmoid else {
            "gate": SIGMOID_RANGE}
        return {"input": None, **unfused(self.act, "squeeze"), "excite": None, **fixed}

    def gate(self, x: tf.Tensor) -> tf.Tensor:
        """g [B, 1, 1, C] for x [B, H, W, C] (x as __call__ rounds it)."""
        s = tf.reduce_mean(x, axis=[1, 2], keepdims=True)  # [B, 1, 1, C]
        e = self.rounded("excite", self.excite(self.activated("squeeze", self.act, self.squeeze(s))))
        if self.gate_fn is hard_sigmoid:  # relu6(e + 3) / 6: the int8 network's ADD (with ReLU6) and MUL
            return self.rounded("gate", self.rounded("shifted", tf.nn.relu6(e + 3.0)) * (1.0 / 6.0))
        return self.rounded("gate", self.gate_fn(e))

    def scaled(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(y = x * g [B, H, W, C], g [B, 1, 1, C])."""
        x = self.rounded("input", x)
        g = self.gate(x)
        return x * g, g

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return self.scaled(x)[0]  # [B, H, W, C]


def drop_path(x: tf.Tensor, rate: float, training: bool, seed=None) -> tf.Tensor:
    """Stochastic depth (Huang et al. 2016): in training, the whole of each example's x [B, ...] is
    zeroed with probability `rate` and kept, scaled by 1 / (1 - rate), otherwise; the identity at
    inference.  Applied to a residual branch, it drops the block for that example.  The mask is
    `dropout`'s of a [B, 1, ..., 1] tensor of ones, so `seed` and replicas behave as there."""
    if not training or rate == 0.0:
        return x
    keep = dropout(tf.ones(tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], 0), x.dtype),
                   rate, training, seed)  # [B, 1, ..., 1]: 0 or 1 / (1 - rate)
    return x * keep


def channel_split(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """x [B, H, W, C] -> its first C/2 channels and its last C/2 (ShuffleNetV2's split; C even)."""
    return tuple(tf.split(x, 2, axis=-1))


def channel_shuffle(x: tf.Tensor, groups: int = 2) -> tf.Tensor:
    """Interleave `groups` groups of channels (ShuffleNet): channel g * (C/groups) + j of x [B, H, W, C]
    becomes channel j * groups + g, so the next layer sees channels of every group.
    (Reshape to [B, H, W, groups, C/groups], swap the last two axes, reshape back.)"""
    s, c = tf.shape(x), x.shape[-1]
    y = tf.reshape(x, [s[0], s[1], s[2], groups, c // groups])  # [B, H, W, groups, C/groups]
    y = tf.transpose(y, [0, 1, 2, 4, 3])  # [B, H, W, C/groups, groups]
    return tf.reshape(y, [s[0], s[1], s[2], c])  # [B, H, W, C]



