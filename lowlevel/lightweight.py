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


class SqueezeExcite(tf.Module):
    """Squeeze-and-excitation (Hu et al. 2018): each channel scaled by a gate in (0, 1) computed from
    the whole map's channel means:

        s = mean over H, W of x                        [B, 1, 1, C]   (squeeze)
        g = gate(W2 act(W1 s + b1) + b2)               [B, 1, 1, C]   (excite; W1 [C, R], W2 [R, C])
        y = x * g                                      [B, H, W, C]

    W1 and W2 are 1x1 convolutions with biases (Keras' layout, so weights copy over); R = `reduced`.
    MobileNetV3: act relu, gate hard_sigmoid (the defaults); EfficientNet: swish and sigmoid.
    """

    def __init__(self, channels: int, reduced: int, act=None, gate=None, name: str | None = None):
        super().__init__(name=name)
        self.act, self.gate_fn = act or tf.nn.relu, gate or hard_sigmoid
        with self.name_scope:
            self.squeeze = Conv2D(channels, reduced, 1, use_bias=True, name="squeeze")
            self.excite = Conv2D(reduced, channels, 1, use_bias=True, gain=1.0, name="excite")

    def gate(self, x: tf.Tensor) -> tf.Tensor:
        """g [B, 1, 1, C] for x [B, H, W, C]."""
        s = tf.reduce_mean(x, axis=[1, 2], keepdims=True)  # [B, 1, 1, C]
        return self.gate_fn(self.excite(self.act(self.squeeze(s))))

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return x * self.gate(x)  # [B, H, W, C]


def swish(x: tf.Tensor) -> tf.Tensor:
    """x * sigmoid(x) (SiLU; EfficientNet)."""
    return tf.nn.silu(x)


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



