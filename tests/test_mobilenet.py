"""MobileNetV1 against Keras' MobileNet, the paper's counts, and the invariances a model must keep."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lowlevel.nets.mobilenet import MobileNetV1


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _copy_from_keras(ref, ours):
    """Copy keras.applications.MobileNet's weights into ours, layer by layer, by name."""
    def bn(ours_bn, name):
        for var, value in zip((ours_bn.gamma, ours_bn.beta, ours_bn.moving_mean, ours_bn.moving_variance),
                              ref.get_layer(name).get_weights()):
            var.assign(value)
    ours.stem.kernel.assign(ref.get_layer("conv1").get_weights()[0])
    bn(ours.bn_stem, "conv1_bn")
    for i, block in enumerate(ours.blocks, start=1):
        block.depthwise.kernel.assign(ref.get_layer(f"conv_dw_{i}").get_weights()[0])
        bn(block.bn_depthwise, f"conv_dw_{i}_bn")
        block.pointwise.kernel.assign(ref.get_layer(f"conv_pw_{i}").get_weights()[0])
        bn(block.bn_pointwise, f"conv_pw_{i}_bn")
    kernel, bias = ref.get_layer("conv_preds").get_weights()  # a 1x1 convolution: [1, 1, 1024, classes]
    ours.classifier.kernel.assign(kernel[0, 0])
    ours.classifier.bias.assign(bias)


@pytest.fixture(scope="module")
def imagenet_pair():
    tf.random.set_seed(1)
    ref = keras.applications.MobileNet(weights=None, input_shape=(224, 224, 3), classes=1000, dropout=0.0,
                                       classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in ref.layers:  # give every BN layer non-trivial statistics and parameters
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 2.0, c)])
        elif layer.name == "conv_preds":
            layer.set_weights([w + rng.normal(0, 0.01, w.shape) for w in layer.get_weights()])
    ours = MobileNetV1(num_classes=1000, alpha=1.0, input_size=224, stem_stride=2)
    _copy_from_keras(ref, ours)
    return ref, ours


@pytest.mark.parametrize("training", [False, True])
def test_same_logits_as_keras_mobilenet_224(imagenet_pair, training):
    ref, ours = imagenet_pair
    x = tf.constant(np.random.default_rng(2).normal(size=(2, 224, 224, 3)).astype(np.float32))
    want = ref(x, training=training).numpy()
    got = ours(x, training=training).numpy()
    assert got.shape == (2, 1000)
    scale = max(1.0, np.abs(want).max())
    np.testing.assert_allclose(got, want, atol=1e-4 * scale)
    if training:  # both updated their moving statistics the same way
        np.testing.assert_allclose(ours.blocks[12].bn_pointwise.moving_mean.numpy(),
                                   ref.get_layer("conv_pw_13_bn").moving_mean.numpy(), atol=1e-5)


def test_keras_pads_stride2_like_same():
    """Keras: ZeroPadding2D(((0, 1), (0, 1))) + VALID; TF SAME on an even input pads 0 before, 1 after."""
    x = tf.random.normal([1, 8, 8, 3])
    k = tf.random.normal([3, 3, 3, 1])
    same = tf.nn.depthwise_conv2d(x, k, [1, 2, 2, 1], "SAME")
    padded = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])
    np.testing.assert_allclose(same.numpy(), tf.nn.depthwise_conv2d(padded, k, [1, 2, 2, 1], "VALID").numpy(),
                               atol=1e-6)


def test_imagenet_counts_match_keras(imagenet_pair):
    ref, ours = imagenet_pair
    assert _count(ours.trainable_variables) == 4_231_976
    assert _count(ours.non_trainable_variables) == 21_888
    assert _count(ours.variables) == ref.count_params() == 4_253_864


@pytest.mark.parametrize("kwargs, trainable", [
    ({}, 3_217_226),  # the CIFAR default
    ({"standard": True}, 28_279_338),
    ({"num_classes": 1000, "input_size": 224, "stem_stride": 2, "standard": True}, 29_294_088),
])
def test_parameter_counts(kwargs, trainable):
    assert _count(MobileNetV1(**kwargs).trainable_variables) == trainable


def test_the_friendly_network_has_no_depthwise_batch_norms():
    """Sheng et al.'s blocks: MobileNet v1 less the 4 vectors (gamma, beta, moving mean and variance) of
    each depthwise batch norm, one per input channel of each block."""
    ours, v1 = MobileNetV1(alpha=0.5, friendly=True), MobileNetV1(alpha=0.5)
    channels = sum(b.depthwise.kernel.shape[2] for b in v1.blocks)  # 2,480 at width 0.5
    assert _count(v1.trainable_variables) - _count(ours.trainable_variables) == 2 * channels
    assert _count(v1.variables) - _count(ours.variables) == 4 * channels
    assert [bn is None for _, _, bn in ours.conv_layers()] == [False] + [True, False] * 13


@pytest.mark.parametrize("training", [False, True])
def test_the_friendly_block_is_keras_separable_conv_then_batch_norm_and_relu(training):
    """FriendlyBlock = keras SeparableConv2D (depth multiplier 1, no bias: depthwise then pointwise, nothing
    between) + BatchNormalization + ReLU, with the weights copied."""
    from lowlevel.nets.mobilenet import FriendlyBlock
    from conftest import randomize_batch_norms

    rng = np.random.default_rng(0)
    ref = keras.Sequential([keras.Input((8, 8, 6)), keras.layers.SeparableConv2D(10, 3, 2, "same", use_bias=False),
                            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3), keras.layers.ReLU()])
    randomize_batch_norms(ref, rng)
    ours = FriendlyBlock(6, 10, 2, bn_momentum=0.9, fused_bn=True)
    depthwise, pointwise = ref.layers[0].get_weights()
    ours.depthwise.kernel.assign(depthwise.reshape(ours.depthwise.kernel.shape))
    ours.pointwise.kernel.assign(pointwise)
    bn = ours.bn_pointwise
    for var, value in zip((bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance), ref.layers[1].get_weights()):
        var.assign(value)
    x = rng.normal(size=(4, 8, 8, 6)).astype(np.float32)
    np.testing.assert_allclose(ours(tf.constant(x), training).numpy(), ref(x, training=training).numpy(),
                               atol=1e-4)
    if training:  # and the moving statistics moved alike
        np.testing.assert_allclose(bn.moving_variance.numpy(), ref.layers[1].moving_variance.numpy(), rtol=1e-4)
    else:
        np.testing.assert_allclose(ours.inference(tf.constant(x)).numpy(), ref(x).numpy(), atol=1e-4)


def test_cifar_keras_same_architecture_counts():
    """Keras' MobileNet at 32x32 (stem stride 2 is fixed there) has the same weights as ours: strides add none."""
    ref = keras.applications.MobileNet(weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
    assert ref.count_params() == _count(MobileNetV1().variables)


@pytest.mark.parametrize("alpha, first, last", [(0.25, 8, 256), (0.5, 16, 512), (0.75, 24, 768), (0.1, 8, 102)])
def test_width_multiplier_rounding(alpha, first, last):
    m = MobileNetV1(alpha=alpha)
    assert m.stem.out_channels == first and m.classifier.in_features == last


def _small(**kw):
    tf.random.set_seed(3)
    return MobileNetV1(alpha=0.125, **kw)


def test_eager_and_function_agree_and_unknown_batch_traces_once():
    model = _small()
    traces = []

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3]), tf.TensorSpec([], tf.bool)])
    def call(x, training):
        traces.append(1)
        return tf.cond(training, lambda: model(x, training=True), lambda: model(x, training=False))

    for batch in (4, 3, 7):
        x = tf.random.normal([batch, 32, 32, 3])
        np.testing.assert_allclose(call(x, False).numpy(), model(x, training=False).numpy(), atol=1e-5)
        snapshot = [v.numpy() for v in model.non_trainable_variables]
        graph = call(x, True).numpy()
        after_graph = [v.numpy() for v in model.non_trainable_variables]
        for v, s in zip(model.non_trainable_variables, snapshot):
            v.assign(s)
        np.testing.assert_allclose(graph, model(x, training=True).numpy(), atol=1e-4)
        for v, g in zip(model.non_trainable_variables, after_graph):
            np.testing.assert_allclose(v.numpy(), g, atol=1e-6)
    assert len(traces) == 1


def test_checkpoint_restore_gives_identical_outputs(tmp_path):
    model = _small(dropout=0.2)
    x = tf.random.normal([5, 32, 32, 3])
    for _ in range(3):  # move the statistics away from their initial values
        model(x, training=True, seed=tf.constant([0, 1]))
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    tf.random.set_seed(99)
    fresh = MobileNetV1(alpha=0.125, dropout=0.2)
    assert not np.array_equal(fresh.stem.kernel.numpy(), model.stem.kernel.numpy())
    tf.train.Checkpoint(model=fresh).read(path).assert_consumed()
    np.testing.assert_array_equal(fresh(x, training=False).numpy(), model(x, training=False).numpy())
    key = tf.constant([4, 5])
    np.testing.assert_array_equal(fresh(x, training=True, seed=key).numpy(), model(x, training=True, seed=key).numpy())
    for a, b in zip(fresh.variables, model.variables):
        assert a.name == b.name
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # moving statistics included


def test_checkpoint_keys_follow_attribute_paths(tmp_path):
    path = tf.train.Checkpoint(model=_small()).write(str(tmp_path / "ckpt"))
    keys = {name for name, _ in tf.train.list_variables(path)}
    assert "model/blocks/3/depthwise/kernel/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "model/blocks/3/bn_pointwise/moving_mean/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "model/bn_stem/gamma/.ATTRIBUTES/VARIABLE_VALUE" in keys


def test_variable_names_are_readable():
    names = [v.name for v in _small().variables]
    assert "mobilenet_v1/block_3/depthwise/kernel:0" in names
    assert "mobilenet_v1/block_3/bn_pointwise/moving_mean:0" in names


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 0.0}, r"alpha \(the width multiplier\) must be greater than 0, not 0.0\."),
    ({"alpha": -1}, r"alpha .* must be greater than 0"),
    ({"input_size": 8}, r"input size 8 is too small for the strides \(they divide it by 16\); use at least 16"),
    ({"input_size": 16, "stem_stride": 2}, r"input size 16 is too small .* by 32"),
    ({"stem_stride": 3}, r"stem stride must be 1 \(CIFAR\) or 2 \(ImageNet\), not 3"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"num_classes": 0}, r"number of classes must be at least 1"),
])
def test_bad_arguments_are_one_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MobileNetV1(**kwargs)


def test_unknown_option_is_one_sentence():
    with pytest.raises(TypeError, match="unexpected keyword argument 'width'"):
        MobileNetV1(width=2)


@pytest.mark.parametrize("precision, tolerance", [("bfloat16", 0.05), ("float16", 0.01)])
def test_mixed_precision_model_shares_the_checkpoint_and_nearly_the_outputs(tmp_path, precision, tolerance):
    """The same float32 variables and checkpoint keys; only the 1x1 convolutions multiply in 16 bits.

    One block differs from float32 by a few 16-bit steps; through 27 layers of a random network the logits
    differ by a few percent of their scale (measured: bfloat16 1.5-2.3%, float16 0.2%).
    """
    full = _small()
    path = tf.train.Checkpoint(model=full).write(str(tmp_path / "ckpt"))
    mixed = _small(precision=precision)
    tf.train.Checkpoint(model=mixed).read(path).assert_consumed()
    assert all(v.dtype == tf.float32 for v in mixed.variables)
    assert mixed.blocks[0].pointwise.compute_dtype == tf.as_dtype(precision)
    assert mixed.blocks[0].depthwise.kernel.dtype == tf.float32 and mixed.stem.compute_dtype is None
    x = tf.random.normal([8, 32, 32, 3])
    stem = tf.nn.relu6(full.bn_stem(full.stem(x)))
    a, b = full.blocks[0](stem, training=True).numpy(), mixed.blocks[0](stem, training=True).numpy()
    eps = 2.0 ** -7 if precision == "bfloat16" else 2.0 ** -10
    assert b.dtype == np.float32 and not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, atol=2 * eps * np.abs(a).max())
    a, b = full(x).numpy(), mixed(x).numpy()
    assert b.dtype == np.float32 and not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, atol=tolerance * np.abs(a).max())


def test_unknown_precision_is_one_sentence():
    with pytest.raises(ValueError, match=r"precision must be one of float32, bfloat16, float16, not 'half'\."):
        MobileNetV1(precision="half")


@pytest.mark.parametrize("kwargs", [{}, {"standard": True}, {"precision": "bfloat16"}, {"friendly": True}])
def test_folded_inference_gives_the_inference_logits(kwargs):
    """inference(x) folds every batch norm into its convolution: the same function as model(x, training=False)."""
    model = _small(**kwargs)
    x = tf.random.normal([6, 32, 32, 3])
    for _ in range(3):  # move the moving statistics and the scales away from 0 and 1
        model(x, training=True)
    for v in model.trainable_variables:
        if "gamma" in v.name or "beta" in v.name:
            v.assign(v + tf.random.normal(v.shape, stddev=0.3))
    expected, folded = model(x, training=False).numpy(), model.inference(x).numpy()
    tolerance = 1e-5 if not kwargs.get("precision") else 0.05  # bfloat16 rounds the folded kernel too
    np.testing.assert_allclose(folded, expected, atol=tolerance * np.abs(expected).max())
    assert np.abs(expected).max() > 0.01


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_inference_runs_every_convolution_in_16_bits(precision):
    model = _small(precision=precision)
    graph = tf.function(model.inference).get_concrete_function(tf.TensorSpec([None, 32, 32, 3])).graph
    convs = [op for op in graph.get_operations() if op.type in ("Conv2D", "DepthwiseConv2dNative")]
    assert len(convs) == 1 + 2 * len(model.blocks)  # the stem, then each block's depthwise and pointwise
    assert {tf.as_dtype(op.get_attr("T")).name for op in convs} == {precision}
    assert graph.outputs[0].dtype == tf.float32


def test_fold_is_the_formula():
    from lowlevel.layers import BatchNorm, DepthwiseConv2D
    bn = BatchNorm(4)
    bn.gamma.assign([1.0, 2.0, 3.0, 4.0])
    bn.beta.assign([0.5, 0.0, -1.0, 2.0])
    bn.moving_mean.assign([0.1, 0.2, 0.3, 0.4])
    bn.moving_variance.assign([1.0, 4.0, 9.0, 16.0])
    dw = DepthwiseConv2D(2, multiplier=2)  # output channel c*2 + q is kernel[..., c, q]
    kernel, bias = bn.fold(dw.kernel, depthwise=True)
    s = np.array([1, 2, 3, 4]) / np.sqrt(np.array([1, 4, 9, 16]) + 1e-3)
    np.testing.assert_allclose(kernel.numpy(), dw.kernel.numpy() * s.reshape(2, 2), rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), [0.5, 0.0, -1.0, 2.0] - np.array([0.1, 0.2, 0.3, 0.4]) * s, rtol=1e-6)
    x = tf.random.normal([2, 5, 5, 2])
    np.testing.assert_allclose(tf.nn.bias_add(dw(x, kernel), bias).numpy(), bn(dw(x)).numpy(), atol=1e-5)
