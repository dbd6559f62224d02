"""The hand-written depthwise filter gradient against the formula (numpy) and TensorFlow's own gradient."""
import numpy as np
import pytest
import tensorflow as tf

from lowlevel import gradients
from lowlevel.layers import DepthwiseConv2D


def _x(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _numpy_filter_gradient(x, dy, k):
    """dL/dW[i, j, c] = sum_{b, h, w} xp[b, h + i, w + j, c] * dL/dy[b, h, w, c], by loops."""
    p = (k - 1) // 2
    xp = np.pad(x, [(0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)])
    h, w = dy.shape[1], dy.shape[2]
    out = np.zeros((k, k, x.shape[3], 1))
    for i in range(k):
        for j in range(k):
            out[i, j, :, 0] = np.einsum("bhwc,bhwc->c", xp[:, i:i + h, j:j + w, :].astype(np.float64), dy)
    return out


@pytest.mark.parametrize("b, h, w, c, k", [(3, 2, 2, 8, 3), (2, 1, 1, 5, 3), (2, 4, 4, 6, 5), (2, 2, 3, 4, 5),
                                           (1, 3, 3, 2, 3), (2, 6, 5, 3, 3)])
def test_filter_gradient_is_the_formula(b, h, w, c, k):
    x, dy = _x([b, h, w, c], 1), _x([b, h, w, c], 2)
    np.testing.assert_allclose(gradients.depthwise_filter_gradient(x, dy, k).numpy(),
                               _numpy_filter_gradient(x.numpy(), dy.numpy(), k), rtol=1e-5, atol=1e-5)


def _gradient_ops(fn, x, kernel):
    """The op types of the traced gradient of sum(fn(x, kernel) ** 2), and the gradients."""
    @tf.function
    def grads(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            loss = tf.reduce_sum(fn(x, kernel) ** 2)
        return tape.gradient(loss, [x, kernel])
    graph = grads.get_concrete_function(x, kernel).graph
    ops = {op.type for op in graph.get_operations()}
    for f in graph.as_graph_def().library.function:  # the custom gradient's body
        ops |= {node.op for node in f.node_def}
    return ops, grads(x, kernel)


@pytest.mark.parametrize("h, w, k, stride, multiplier, ours", [
    (2, 2, 3, 1, 1, True), (1, 1, 3, 1, 1, True), (4, 4, 5, 1, 1, True), (2, 5, 3, 1, 1, True),
    (3, 3, 3, 1, 1, False), (8, 8, 3, 1, 1, False), (2, 2, 3, 2, 1, False), (2, 2, 3, 1, 2, False)])
def test_depthwise_conv2d_equals_tensorflows_and_picks_its_gradient_by_shape(h, w, k, stride, multiplier, ours):
    x, kernel = _x([3, h, w, 4], 3), _x([k, k, 4, multiplier], 4)
    ops, (dx, dw) = _gradient_ops(lambda x, kn: gradients.depthwise_conv2d(x, kn, stride), x, kernel)
    _, (dx_tf, dw_tf) = _gradient_ops(
        lambda x, kn: tf.nn.depthwise_conv2d(x, kn, [1, stride, stride, 1], "SAME"), x, kernel)
    np.testing.assert_allclose(gradients.depthwise_conv2d(x, kernel, stride).numpy(),
                               tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], "SAME").numpy(), atol=0)
    np.testing.assert_allclose(dx.numpy(), dx_tf.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw.numpy(), dw_tf.numpy(), rtol=1e-5, atol=1e-5)
    assert ("DepthwiseConv2dNativeBackpropFilter" not in ops) == ours


def test_the_gradient_takes_a_batch_known_only_when_it_runs():
    layer = DepthwiseConv2D(6, 3)

    @tf.function(input_signature=[tf.TensorSpec([None, 2, 2, 6])])
    def kernel_gradient(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(layer(x)))
        return tape.gradient(loss, layer.kernel)

    x = _x([5, 2, 2, 6], 5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.sin(tf.nn.depthwise_conv2d(x, layer.kernel, [1, 1, 1, 1], "SAME")))
    np.testing.assert_allclose(kernel_gradient(x).numpy(), tape.gradient(loss, layer.kernel).numpy(),
                               rtol=1e-5, atol=1e-5)
