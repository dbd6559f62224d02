"""Each raw-op layer against its Keras counterpart (or numpy) with the same weights."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lowlevel import layers
from lowlevel.layers import BatchNorm, Conv2D, Dense, DepthwiseConv2D


def _x(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("k, stride, size, bias", [(3, 1, 8, False), (3, 2, 8, True), (3, 2, 7, False),
                                                   (1, 1, 5, False), (3, 1, 5, True)])
def test_conv2d_matches_keras(k, stride, size, bias):
    ours = Conv2D(4, 6, k, stride, use_bias=bias)
    if bias:
        ours.bias.assign(tf.random.normal([6]))
    ref = keras.layers.Conv2D(6, k, strides=stride, padding="same", use_bias=bias)
    ref.build((None, size, size, 4))
    ref.set_weights([ours.kernel.numpy()] + ([ours.bias.numpy()] if bias else []))
    x = _x([2, size, size, 4])
    y = ours(x)
    assert y.shape == (2, -(-size // stride), -(-size // stride), 6)
    np.testing.assert_allclose(y.numpy(), ref(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("stride, size, multiplier", [(1, 8, 1), (2, 8, 1), (2, 7, 1), (1, 6, 2)])
def test_depthwise_matches_keras(stride, size, multiplier):
    ours = DepthwiseConv2D(5, 3, stride, multiplier)
    ref = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", depth_multiplier=multiplier,
                                       use_bias=False)
    ref.build((None, size, size, 5))
    ref.set_weights([ours.kernel.numpy()])
    x = _x([2, size, size, 5])
    y = ours(x)
    assert y.shape == (2, -(-size // stride), -(-size // stride), 5 * multiplier)
    np.testing.assert_allclose(y.numpy(), ref(x).numpy(), atol=1e-5)


def test_depthwise_is_the_formula():
    """y[b, i, j, c] = sum over the 3x3 window of x[b, i+di-1, j+dj-1, c] * W[di, dj, c, 0] (stride 1, SAME)."""
    ours = DepthwiseConv2D(3, 3, 1)
    x = _x([1, 5, 5, 3]).numpy()
    w = ours.kernel.numpy()
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    want = np.zeros_like(x)
    for i in range(5):
        for j in range(5):
            want[0, i, j] = np.einsum("hwc,hwc->c", padded[0, i:i + 3, j:j + 3], w[..., 0])
    np.testing.assert_allclose(ours(tf.constant(x)).numpy(), want, atol=1e-5)


def test_dense_matches_keras():
    ours = Dense(7, 3)
    ours.bias.assign([0.5, -1.0, 2.0])
    ref = keras.layers.Dense(3)
    ref.build((None, 7))
    ref.set_weights([ours.kernel.numpy(), ours.bias.numpy()])
    x = _x([4, 7])
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), atol=1e-5)


def test_initializer_variances():
    """He normal: Var(w) = 2 / fan_in, with fan_in = k*k*C_in, k*k and C_in for regular, depthwise, pointwise."""
    tf.random.set_seed(0)
    for layer, fan_in in [(Conv2D(64, 128, 3), 9 * 64), (DepthwiseConv2D(4096, 3), 9), (Conv2D(256, 512, 1), 256)]:
        np.testing.assert_allclose(np.var(layer.kernel.numpy()), 2 / fan_in, rtol=0.05)
    np.testing.assert_allclose(np.var(Dense(1024, 512).kernel.numpy()), 1 / 1024, rtol=0.05)


def _keras_bn(ours):
    ref = keras.layers.BatchNormalization(momentum=ours.momentum, epsilon=ours.epsilon)
    ref.build((None, None, None, ours.channels))
    ref.set_weights([v.numpy() for v in (ours.gamma, ours.beta, ours.moving_mean, ours.moving_variance)])
    return ref


def _bn_pair(fused, channels=6):
    ours = BatchNorm(channels, momentum=0.9, fused=fused)
    ours.gamma.assign(tf.random.uniform([channels], 0.5, 2.0))
    ours.beta.assign(tf.random.normal([channels]))
    return ours, _keras_bn(ours)


@pytest.mark.parametrize("fused", [True, False])
def test_batchnorm_training_matches_keras(fused):
    """Outputs, gradients and moving statistics after several updates, in training mode."""
    ours, ref = _bn_pair(fused)
    for step in range(5):
        x = _x([8, 4, 4, 6], seed=step) * 3.0 + 1.0
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y_ours = ours(x, training=True)
            y_ref = ref(x, training=True)
            loss_ours = tf.reduce_sum(y_ours * tf.sin(y_ours))
            loss_ref = tf.reduce_sum(y_ref * tf.sin(y_ref))
        np.testing.assert_allclose(y_ours.numpy(), y_ref.numpy(), atol=1e-5)
        g_ours = tape.gradient(loss_ours, [x, ours.gamma, ours.beta])
        g_ref = tape.gradient(loss_ref, [x, ref.gamma, ref.beta])
        for a, b in zip(g_ours, g_ref):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours.moving_mean.numpy(), ref.moving_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.moving_variance.numpy(), ref.moving_variance.numpy(), atol=1e-5)
    assert not np.allclose(ours.moving_mean.numpy(), 0.0)  # they did move


@pytest.mark.parametrize("fused", [True, False])
def test_batchnorm_inference_matches_keras_and_leaves_statistics(fused):
    ours, _ = _bn_pair(fused)
    ours.moving_mean.assign(tf.random.normal([6]))
    ours.moving_variance.assign(tf.random.uniform([6], 0.5, 3.0))
    ref = _keras_bn(ours)
    x = _x([3, 5, 5, 6])
    np.testing.assert_allclose(ours(x, training=False).numpy(), ref(x, training=False).numpy(), atol=1e-5)
    before = ours.moving_mean.numpy().copy()
    ours(x)
    np.testing.assert_array_equal(ours.moving_mean.numpy(), before)


def test_batchnorm_moving_average_is_the_formula():
    bn = BatchNorm(3, momentum=0.8, fused=True)
    x = _x([4, 3, 3, 3]) * 2 + 5
    bn(x, training=True)
    mu = x.numpy().mean((0, 1, 2))
    var = x.numpy().var((0, 1, 2))  # biased
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.8 * 0 + 0.2 * mu, rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.8 * 1 + 0.2 * var, rtol=1e-5)


def test_fused_and_explicit_batchnorm_agree():
    fused, explicit = BatchNorm(6, momentum=0.9, fused=True), BatchNorm(6, momentum=0.9, fused=False)
    for v_f, v_e in zip(fused.variables, explicit.variables):
        v_e.assign(v_f)
    fused.gamma.assign(tf.random.uniform([6], 0.5, 2.0))
    explicit.gamma.assign(fused.gamma)
    for step in range(3):
        x = _x([8, 4, 4, 6], seed=10 + step)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y_f, y_e = fused(x, training=True), explicit(x, training=True)
            l_f, l_e = tf.reduce_sum(y_f ** 3), tf.reduce_sum(y_e ** 3)
        np.testing.assert_allclose(y_f.numpy(), y_e.numpy(), atol=1e-5)
        for a, b in zip(tape.gradient(l_f, [x, fused.gamma, fused.beta]),
                        tape.gradient(l_e, [x, explicit.gamma, explicit.beta])):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-4)
    for v_f, v_e in zip(fused.variables, explicit.variables):
        np.testing.assert_allclose(v_f.numpy(), v_e.numpy(), atol=1e-6)


def test_variables_exist_before_the_first_call_with_readable_names():
    bn = BatchNorm(4, name="bn_stem")
    assert [v.name for v in bn.variables] == ["bn_stem/beta:0", "bn_stem/gamma:0", "bn_stem/moving_mean:0",
                                              "bn_stem/moving_variance:0"]
    assert [v.trainable for v in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)] == [True, True, False,
                                                                                              False]


def test_functions():
    x = _x([2, 3, 3, 4]) * 5
    np.testing.assert_array_equal(layers.relu6(x).numpy(), np.clip(x.numpy(), 0, 6))
    np.testing.assert_allclose(layers.global_average_pool(x).numpy(), x.numpy().mean((1, 2)), atol=1e-6)
    assert layers.dropout(x, 0.5, training=False) is x
    ones = tf.ones([1000, 100])
    key = tf.constant([1, 2], tf.int64)
    a = layers.dropout(ones, 0.25, training=True, seed=key).numpy()
    np.testing.assert_array_equal(a, layers.dropout(ones, 0.25, training=True, seed=key).numpy())
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.01
    with pytest.raises(ValueError, match="momentum must be in"):
        BatchNorm(3, momentum=1.0)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_conv2d_mixed_precision_multiplies_in_16_bits(dtype):
    """A 1x1 convolution (MobileNet's pointwise, the one mixed precision uses): float32 in and out; the product
    is the convolution of 16-bit-rounded x and W to within a 16-bit step or so at the outputs' scale (the
    CPU kernels round their sums along the way, so small outputs do not get a 16-bit relative error)."""
    full = Conv2D(64, 6, 1, 1)
    half = Conv2D(64, 6, 1, 1, compute_dtype=dtype)
    half.kernel.assign(full.kernel)
    x = _x([2, 5, 5, 64])
    with tf.GradientTape() as tape:
        y = half(x)
        loss = tf.reduce_sum(y * y)
    grad = tape.gradient(loss, half.kernel)
    assert y.dtype == tf.float32 and half.kernel.dtype == tf.float32 and grad.dtype == tf.float32
    rounded = Conv2D(64, 6, 1, 1)
    rounded.kernel.assign(tf.cast(tf.cast(full.kernel, dtype), tf.float32))
    expected = rounded(tf.cast(tf.cast(x, dtype), tf.float32)).numpy()
    # steps: the spacing of 16-bit numbers just above 1, times how many steps the sum may drift
    step = 2.0 ** -7 if dtype == tf.bfloat16 else 4 * 2.0 ** -10
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=step * np.abs(expected).max())
    assert not np.array_equal(y.numpy(), full(x).numpy())  # it really did round
    with tf.GradientTape() as tape:
        loss_full = tf.reduce_sum(full(x) ** 2)
    expected = tape.gradient(loss_full, full.kernel).numpy()
    np.testing.assert_allclose(grad.numpy(), expected, rtol=0, atol=4 * step * np.abs(expected).max())


# ---------------------------------------------------------------- the layers the related networks add

@pytest.mark.parametrize("stride, size, bias", [(1, 8, True), (2, 8, True), (2, 7, False), (1, 5, True)])
def test_separable_conv_matches_keras(stride, size, bias):
    """A DepthwiseConv2D then a 1x1 Conv2D with bias equals Keras' SeparableConv2D (one fused kernel there)."""
    ours = layers.SeparableConv2D(4, 6, 3, stride, use_bias=bias)
    if bias:
        ours.pointwise.bias.assign(tf.random.normal([6]))
    ref = keras.layers.SeparableConv2D(6, 3, strides=stride, padding="same", use_bias=bias)
    ref.build((None, size, size, 4))
    ref.set_weights([ours.depthwise.kernel.numpy(), ours.pointwise.kernel.numpy()]
                    + ([ours.pointwise.bias.numpy()] if bias else []))
    assert ref.count_params() == sum(int(np.prod(v.shape)) for v in ours.trainable_variables)
    x = _x([2, size, size, 4])
    y = ours(x)
    assert y.shape == (2, -(-size // stride), -(-size // stride), 6)
    np.testing.assert_allclose(y.numpy(), ref(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("size, stride, padding, side", [(2, None, "VALID", 7), (3, 2, "SAME", 7), (3, 2, "SAME", 8),
                                                         (3, 1, "SAME", 5), (7, None, "VALID", 7), (3, 2, "VALID", 9)])
def test_pools_match_keras(size, stride, padding, side):
    x = _x([2, side, side, 3])
    for ours, ref in ((layers.max_pool, keras.layers.MaxPooling2D), (layers.average_pool, keras.layers.AveragePooling2D)):
        want = ref(size, strides=stride, padding=padding.lower())(x).numpy()
        got = ours(x, size, stride, padding).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_average_pool_same_counts_only_pixels_inside():
    """A 3x3 window at a corner, stride 1, SAME, averages the 4 pixels inside the image, not 9 with zeros."""
    x = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1])
    got = layers.average_pool(x, 3, 1, "SAME").numpy()[0, :, :, 0]
    assert got[0, 0] == np.mean([0, 1, 4, 5])
    assert layers.max_pool(-tf.ones([1, 3, 3, 1]), 3, 2, "SAME").numpy().max() == -1.0  # padding never wins


def test_flatten_selu_relu_concat_match_keras():
    x = _x([2, 3, 4, 5]) * 3
    np.testing.assert_array_equal(layers.flatten(x).numpy(), keras.layers.Flatten()(x).numpy())
    np.testing.assert_allclose(layers.selu(x).numpy(), keras.activations.selu(x).numpy(), rtol=1e-6)
    lam, alpha = 1.0507009873554805, 1.6732632423543772
    v = x.numpy()
    np.testing.assert_allclose(layers.selu(x).numpy(), lam * np.where(v > 0, v, alpha * (np.exp(v) - 1)), rtol=1e-5)
    np.testing.assert_array_equal(layers.relu(x).numpy(), np.maximum(v, 0))
    y = _x([2, 3, 4, 2], seed=1)
    np.testing.assert_array_equal(layers.concat([x, y]).numpy(), keras.layers.Concatenate()([x, y]).numpy())
