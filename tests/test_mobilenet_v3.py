"""MobileNetV3-Small and -Large against Keras' MobileNetV3Small / MobileNetV3Large (include_preprocessing=False):
parameter counts at several widths, the same logits with the same weights; hard-swish, hard-sigmoid and the
squeeze-and-excitation gate against numpy."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lowlevel import lightweight, nets
from lowlevel.nets.mobilenet_v3 import MobileNetV3

from conftest import keras_copier, randomize_batch_norms

KERAS = {"small": keras.applications.MobileNetV3Small, "large": keras.applications.MobileNetV3Large}


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _keras(size, alpha, side=224, classes=1000):
    return KERAS[size](weights=None, input_shape=(side, side, 3), alpha=alpha, classes=classes,
                       include_preprocessing=False, classifier_activation=None, dropout_rate=0.0)


@pytest.mark.parametrize("size, alpha", [("small", 0.75), ("small", 1.0), ("large", 0.75), ("large", 1.0)])
def test_parameter_counts_equal_keras(size, alpha):
    ref = _keras(size, alpha)
    ours = MobileNetV3(size, num_classes=1000, alpha=alpha, input_size=224, cifar=False)
    assert _count(ours.trainable_variables) == _count(ref.trainable_weights)
    assert _count(ours.variables) - _count(ours.trainable_variables) == _count(ref.non_trainable_weights)


def test_hard_activations_and_the_gate_against_numpy():
    x = np.linspace(-5, 5, 41).astype(np.float32)
    hs = np.clip(x + 3, 0, 6) / 6
    np.testing.assert_allclose(lightweight.hard_sigmoid(tf.constant(x)).numpy(), hs, atol=1e-6)
    np.testing.assert_allclose(lightweight.hard_swish(tf.constant(x)).numpy(), x * hs, atol=1e-6)
    np.testing.assert_allclose(lightweight.hard_swish(tf.constant(x)).numpy(),
                               keras.activations.hard_swish(tf.constant(x)).numpy(), atol=1e-6)
    se = lightweight.SqueezeExcite(6, 4)
    rng = np.random.default_rng(0)
    for conv in (se.squeeze, se.excite):
        conv.bias.assign(rng.normal(size=conv.bias.shape).astype(np.float32))
    m = rng.normal(size=(2, 5, 5, 6)).astype(np.float32)
    s = m.mean(axis=(1, 2))  # [2, 6]
    w1, b1 = se.squeeze.kernel.numpy()[0, 0], se.squeeze.bias.numpy()
    w2, b2 = se.excite.kernel.numpy()[0, 0], se.excite.bias.numpy()
    gate = np.clip(np.maximum(s @ w1 + b1, 0) @ w2 + b2 + 3, 0, 6) / 6  # [2, 6]
    np.testing.assert_allclose(se(tf.constant(m)).numpy(), m * gate[:, None, None, :], rtol=1e-5, atol=1e-6)


def _copy_from_keras(ref, ours):
    rng = np.random.default_rng(0)
    randomize_batch_norms(ref, rng)
    for layer in ref.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            layer.set_weights([w + rng.normal(0, 0.05, w.shape) for w in layer.get_weights()])

    copy, bn = keras_copier(ref)

    copy(ours.stem, "conv"), bn(ours.bn_stem, "conv_bn")
    for i, block in enumerate(ours.blocks):
        prefix = f"expanded_conv_{i}_" if i else "expanded_conv_"
        if block.expand is not None:
            copy(block.expand, f"{prefix}expand"), bn(block.bn_expand, f"{prefix}expand_bn")
        copy(block.depthwise, f"{prefix}depthwise"), bn(block.bn_depthwise, f"{prefix}depthwise_bn")
        if block.se is not None:
            copy(block.se.squeeze, f"{prefix}squeeze_excite_conv")
            copy(block.se.excite, f"{prefix}squeeze_excite_conv_1")
        copy(block.project, f"{prefix}project"), bn(block.bn_project, f"{prefix}project_bn")
    copy(ours.head, "conv_1"), bn(ours.bn_head, "conv_1_bn")
    copy(ours.last, "conv_2"), copy(ours.classifier, "logits")


@pytest.mark.parametrize("size", ["small", "large"])
def test_same_logits_as_keras_with_the_same_weights(size):
    tf.random.set_seed(1)
    ref = _keras(size, 0.75, side=96, classes=10)
    ours = MobileNetV3(size, num_classes=10, alpha=0.75, input_size=96, cifar=False, bn_momentum=0.999)
    _copy_from_keras(ref, ours)
    x = tf.constant(np.random.default_rng(2).normal(size=(4, 96, 96, 3)).astype(np.float32))
    want = ref(x, training=False).numpy()
    scale = max(1.0, np.abs(want).max())
    np.testing.assert_allclose(ours(x, training=False).numpy(), want, atol=1e-4 * scale)
    np.testing.assert_allclose(ours.inference(x).numpy(), want, atol=1e-4 * scale)  # batch norms folded
    np.testing.assert_allclose(ours(x, training=True).numpy(), ref(x, training=True).numpy(), atol=1e-4 * scale)


@pytest.mark.parametrize("name", ["mobilenet-v3-small", "mobilenet-v3-large"])
def test_the_cifar_form_keeps_the_early_resolution(name):
    model = nets.build(name, alpha=0.5)
    assert model.stem.stride == 1
    shapes = {n: shape for n, _, shape in model.layer_table()}
    assert shapes["head"][:2] == (4, 4) and shapes["classifier"] == (10,)


def test_the_blocks_taps_are_the_gates_and_the_two_halves_of_the_residual_sum():
    """taps="pre" records each gate g = se.gate(depthwise output), and for a residual block its shortcut
    (the previous block's output) and branch (its projection), whose sum is the block's output."""
    model = nets.build("mobilenet-v3-small", alpha=0.25)
    pre = model(tf.random.stateless_normal([2, 32, 32, 3], seed=[3, 4]), training=False, taps="pre")
    assert "blocks[0]:gate" not in model(tf.zeros([1, 32, 32, 3]), taps=True)  # only with "pre"
    gated = [i for i, b in enumerate(model.blocks) if b.se is not None]
    residual = [i for i, b in enumerate(model.blocks) if b.residual]
    assert gated and residual and 0 not in residual  # each residual block has a block before it
    for i in gated:
        g = pre[f"blocks[{i}]:gate"]
        assert g.shape == [2, 1, 1, model.blocks[i].depthwise.in_channels]
        np.testing.assert_allclose(g, model.blocks[i].se.gate(pre[f"blocks[{i}].depthwise"]), atol=1e-6)
    for i in residual:
        np.testing.assert_array_equal(pre[f"blocks[{i}]:branch"], pre[f"blocks[{i}].project"])
        before = pre[f"blocks[{i - 1}]:shortcut"] + pre[f"blocks[{i - 1}]:branch"] if i - 1 in residual \
            else pre[f"blocks[{i - 1}].project"]
        np.testing.assert_array_equal(pre[f"blocks[{i}]:shortcut"], before)
