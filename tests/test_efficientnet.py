"""EfficientNet-B0 against Keras' EfficientNetB0: parameter counts, the same logits with the same weights;
swish and stochastic depth against their formulas."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lowlevel import lightweight, nets
from lowlevel.nets.efficientnet import EfficientNet

from conftest import keras_copier, randomize_batch_norms


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _keras(alpha=1.0, side=224, classes=1000):
    return keras.applications.EfficientNetB0(weights=None, input_shape=(side, side, 3), classes=classes,
                                             classifier_activation=None) if alpha == 1.0 else \
        keras.src.applications.efficientnet.EfficientNet(alpha, 1.0, side, 0.2, input_shape=(side, side, 3),
                                                         classes=classes, weights=None, classifier_activation=None,
                                                         name="efficientnet_scaled")


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_parameter_counts_equal_keras(alpha):
    """Keras' model holds a Normalization layer (mean, variance, count: 7 values for RGB) that lowlevel
    does in its input pipeline; every other weight is counted alike."""
    ref = _keras(alpha)
    normalization = sum(_count(layer.weights) for layer in ref.layers
                        if isinstance(layer, keras.layers.Normalization))
    ours = EfficientNet(num_classes=1000, alpha=alpha, input_size=224, cifar=False)
    assert _count(ours.trainable_variables) == _count(ref.trainable_weights)
    assert _count(ours.variables) - _count(ours.trainable_variables) == \
        _count(ref.non_trainable_weights) - normalization


def test_swish_and_stochastic_depth():
    x = np.linspace(-6, 6, 25).astype(np.float32)
    np.testing.assert_allclose(lightweight.swish(tf.constant(x)).numpy(), x / (1 + np.exp(-x)), rtol=1e-5, atol=1e-6)
    ones = tf.ones([4000, 3, 3, 2])
    dropped = lightweight.drop_path(ones, 0.3, True, tf.constant([1, 2], tf.int64)).numpy()
    per_example = dropped.reshape(4000, -1)
    assert np.all(per_example.min(1) == per_example.max(1))  # the whole example dropped or kept
    kept = per_example[:, 0] > 0
    assert set(np.unique(per_example[:, 0])) <= {0.0, np.float32(1 / 0.7)}
    assert abs(kept.mean() - 0.7) < 3 * np.sqrt(0.21 / 4000)  # within 3 standard errors
    assert lightweight.drop_path(ones, 0.3, False) is ones


def _copy_from_keras(ref, ours):
    rng = np.random.default_rng(0)
    randomize_batch_norms(ref, rng)

    copy, bn = keras_copier(ref)

    copy(ours.stem, "stem_conv"), bn(ours.bn_stem, "stem_bn")
    names = [f"block{r + 1}{chr(97 + k)}_" for r, n in enumerate([1, 2, 2, 3, 3, 4, 1]) for k in range(n)]
    for block, p in zip(ours.blocks, names, strict=True):
        if block.expand is not None:
            copy(block.expand, f"{p}expand_conv"), bn(block.bn_expand, f"{p}expand_bn")
        copy(block.depthwise, f"{p}dwconv"), bn(block.bn_depthwise, f"{p}bn")
        copy(block.se.squeeze, f"{p}se_reduce"), copy(block.se.excite, f"{p}se_expand")
        copy(block.project, f"{p}project_conv"), bn(block.bn_project, f"{p}project_bn")
    copy(ours.head, "top_conv"), bn(ours.bn_head, "top_bn")
    copy(ours.classifier, "predictions")


def test_same_logits_as_keras_with_the_same_weights():
    """Inference mode (training mode draws Keras' and lowlevel's dropout and stochastic depth apart).
    Keras' model divides by 255 inside (its Rescaling and, not adapted, identity Normalization)."""
    tf.random.set_seed(1)
    ref = _keras(1.0, side=96, classes=10)
    ours = EfficientNet(num_classes=10, input_size=96, cifar=False)
    _copy_from_keras(ref, ours)
    x = np.random.default_rng(2).normal(size=(4, 96, 96, 3)).astype(np.float32)
    want = ref(tf.constant(x * 255), training=False).numpy()
    scale = max(1.0, np.abs(want).max())
    np.testing.assert_allclose(ours(tf.constant(x), training=False).numpy(), want, atol=1e-4 * scale)
    np.testing.assert_allclose(ours.inference(tf.constant(x)).numpy(), want, atol=1e-4 * scale)


def test_the_cifar_form_keeps_the_early_resolution():
    model = nets.build("efficientnet-b0", alpha=0.25)
    shapes = {n: shape for n, _, shape in model.layer_table()}
    assert model.stem.stride == 1 and shapes["head"][:2] == (4, 4) and shapes["classifier"] == (10,)
    rates = [b.drop_path for b in model.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.2 * 15 / 16) and rates == sorted(rates)
