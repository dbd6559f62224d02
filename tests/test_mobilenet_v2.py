"""MobileNetV2 against Keras' MobileNetV2: parameter counts at every width, the same logits with the same
weights (inference and training mode), and the CIFAR form's shapes."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lowlevel import nets
from lowlevel.nets.mobilenet_v2 import MobileNetV2, divisible

from conftest import randomize_batch_norms


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _keras(alpha, size=224, classes=1000):
    return keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), alpha=alpha, classes=classes,
                                          classifier_activation=None)


@pytest.mark.parametrize("alpha", [0.35, 0.5, 1.0, 1.4])
def test_parameter_counts_equal_keras(alpha):
    ref = _keras(alpha)
    ours = MobileNetV2(num_classes=1000, alpha=alpha, input_size=224, cifar=False)
    assert _count(ours.trainable_variables) == _count(ref.trainable_weights)
    assert _count(ours.variables) - _count(ours.trainable_variables) == _count(ref.non_trainable_weights)


def test_the_rounding_rule():
    assert [divisible(v) for v in (32 * 0.35, 16 * 0.35, 24 * 0.5, 320 * 1.4, 3.0)] == [16, 8, 16, 448, 8]


def _copy_from_keras(ref, ours):
    """Keras' weights into ours by layer name; every BN gets non-trivial statistics first."""
    rng = np.random.default_rng(0)
    randomize_batch_norms(ref, rng)

    def conv_bn(conv, bn, name, bn_name):
        conv.kernel.assign(ref.get_layer(name).get_weights()[0])
        for var, value in zip((bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance),
                              ref.get_layer(bn_name).get_weights()):
            var.assign(value)

    conv_bn(ours.stem, ours.bn_stem, "Conv1", "bn_Conv1")
    for i, block in enumerate(ours.blocks):
        prefix = f"block_{i}" if i else "expanded_conv"
        if block.expand is not None:
            conv_bn(block.expand, block.bn_expand, f"{prefix}_expand", f"{prefix}_expand_BN")
        conv_bn(block.depthwise, block.bn_depthwise, f"{prefix}_depthwise", f"{prefix}_depthwise_BN")
        conv_bn(block.project, block.bn_project, f"{prefix}_project", f"{prefix}_project_BN")
    conv_bn(ours.head, ours.bn_head, "Conv_1", "Conv_1_bn")
    kernel, bias = ref.get_layer("predictions").get_weights()
    ours.classifier.kernel.assign(kernel)
    ours.classifier.bias.assign(bias + rng.normal(0, 0.01, bias.shape))
    ref.get_layer("predictions").set_weights([kernel, ours.classifier.bias.numpy()])


@pytest.fixture(scope="module")
def pair():
    tf.random.set_seed(1)
    ref = _keras(0.5, size=96, classes=10)  # the paper's strides at a small size, to keep the test quick
    ours = MobileNetV2(num_classes=10, alpha=0.5, input_size=96, cifar=False, bn_momentum=0.999)
    _copy_from_keras(ref, ours)
    return ref, ours


@pytest.mark.parametrize("training", [False, True])
def test_same_logits_as_keras_with_the_same_weights(pair, training):
    ref, ours = pair
    x = tf.constant(np.random.default_rng(2).normal(size=(4, 96, 96, 3)).astype(np.float32))
    want = ref(x, training=training).numpy()
    got = ours(x, training=training).numpy()
    scale = max(1.0, np.abs(want).max())
    np.testing.assert_allclose(got, want, atol=1e-4 * scale)
    if training:  # both moved their statistics alike (Keras' momentum 0.999)
        np.testing.assert_allclose(ours.blocks[5].bn_expand.moving_mean.numpy(),
                                   ref.get_layer("block_5_expand_BN").moving_mean.numpy(), rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_allclose(ours.inference(x).numpy(), want, atol=1e-4 * scale)  # BN folded


def test_the_cifar_form_keeps_the_early_resolution():
    model = nets.build("mobilenet-v2", alpha=0.25)
    assert model.total_stride() == 8 and model.stem.stride == 1
    shapes = {name: shape for name, _, shape in model.layer_table()}
    assert shapes["head"] == (4, 4, 1280) and shapes["classifier"] == (10,)
    for block in model.blocks:  # at alpha 0.25 rounding to 8 channels makes two more blocks keep their shape
        assert block.residual == (block.stride == 1 and block.depthwise.in_channels // (
            1 if block.expand is None else block.expand.out_channels // block.expand.in_channels)
            == block.project.out_channels)
    assert sum(b.residual for b in model.blocks) == 12
    assert sum(b.residual for b in nets.build("mobilenet-v2").blocks) == 10  # all but each row's first
    taps = model(tf.zeros([2, 32, 32, 3]), taps=True)
    assert list(taps)[:3] == ["stem", "blocks[0].depthwise", "blocks[0].project"] and "head" in taps

