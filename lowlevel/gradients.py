"""Hand-written gradients, where TensorFlow's own kernel is slow for a shape the networks use.

A depthwise convolution's filter gradient on a map smaller than its kernel
--------------------------------------------------------------------------
For y = depthwise_conv(x, W), stride 1, SAME padding (layers.DepthwiseConv2D), with xp the
input zero-padded by p = (k - 1) // 2 before and k - 1 - p after:

    dL/dW[i, j, c] = sum_{b, h, w} xp[b, h + i, w + j, c] * dL/dy[b, h, w, c]

x, dL/dy [B, H, W, C]; W, dL/dW [k, k, C, 1].  When the map is smaller than the kernel
(H < k or W < k: MobileNet v1's last depthwise layer, 3 x 3 on 2 x 2 maps in the CIFAR-10
form; the last 5 x 5 layers of MobileNetV3 and EfficientNet-B0, on 4 x 4 maps), the padding
dominates the sum and oneDNN leaves its fast depthwise kernel for a generic one: for MobileNet
v1's last layer 8x slower than the form below capped at AVX2, 1.4x on AVX-512
(docs/performance.md, "A slow filter gradient").  The same sum is itself
a depthwise convolution: of xp, with the batch folded into the channels ([1, H + k - 1,
W + k - 1, C * B]), by dL/dy as the filter ([H, W, C * B, 1]), VALID padding, giving
[1, k, k, C * B]; summed over the batch, dL/dW.  That runs on the fast forward kernel.

`depthwise_conv2d` chooses: the form above for such maps (stride 1, multiplier 1), else
TensorFlow's own gradient; tests/test_gradients.py checks both against each other.
"""
from __future__ import annotations

from lowlevel._tf import tf


def depthwise_conv2d(x: tf.Tensor, kernel: tf.Tensor, stride: int) -> tf.Tensor:
    """tf.nn.depthwise_conv2d(x, kernel, [1, s, s, 1], "SAME"), with the filter gradient above where it is
    faster: x [B, H, W, C], kernel [k, k, C, m] -> [B, ceil(H / s), ceil(W / s), C * m]."""
    k, m = kernel.shape[0], kernel.shape[3]
    h, w = x.shape[1], x.shape[2]
    if stride == 1 and m == 1 and h is not None and w is not None and (h < k or w < k):
        return _small_map_depthwise(x, tf.convert_to_tensor(kernel))
    return tf.nn.depthwise_conv2d(x, kernel, strides=[1, stride, stride, 1], padding="SAME")


def _padded(x: tf.Tensor, k: int) -> tf.Tensor:
    """x zero-padded as SAME padding pads a stride-1 k x k convolution: (k - 1) // 2 before, the rest after."""
    p = (k - 1) // 2
    return tf.pad(x, [[0, 0], [p, k - 1 - p], [p, k - 1 - p], [0, 0]])


def depthwise_filter_gradient(x: tf.Tensor, dy: tf.Tensor, k: int) -> tf.Tensor:
    """dL/dW [k, k, C, 1] of a stride-1 SAME depthwise convolution from x and dL/dy [B, H, W, C]."""
    xp = _padded(x, k)
    _, hp, wp, c = xp.shape
    b, h, w = tf.shape(dy)[0], dy.shape[1], dy.shape[2]  # the batch may be known only when it runs
    channels = tf.reshape(tf.transpose(xp, [1, 2, 3, 0]), [1, hp, wp, c * b])  # channel c * B + b
    filters = tf.reshape(tf.transpose(dy, [1, 2, 3, 0]), [h, w, c * b, 1])
    per_image = tf.nn.depthwise_conv2d(channels, filters, strides=[1, 1, 1, 1], padding="VALID")  # [1, k, k, C*B]
    return tf.reduce_sum(tf.reshape(per_image, [k, k, c, b]), axis=3)[:, :, :, None]


@tf.custom_gradient
def _small_map_depthwise(x: tf.Tensor, kernel: tf.Tensor):
    y = tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="SAME")

    def gradient(dy):
        dx = tf.nn.depthwise_conv2d_backprop_input(tf.shape(x), kernel, dy, strides=[1, 1, 1, 1], padding="SAME")
        return dx, depthwise_filter_gradient(x, dy, kernel.shape[0])

    return y, gradient
