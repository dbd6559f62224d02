"""ShuffleNetV2 against torchvision's published parameter counts (Keras has none), the channel split and
shuffle against numpy, and the CIFAR form's shapes."""
import numpy as np
import pytest
import tensorflow as tf

from lowlevel import lightweight, nets
from lowlevel.nets.shufflenet import ShuffleNetV2


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


@pytest.mark.parametrize("alpha, published", [(0.5, 1_366_792), (1.0, 2_278_604), (1.5, 3_503_624),
                                              (2.0, 7_393_996)])
def test_trainable_parameters_equal_torchvisions(alpha, published):
    """torchvision.models.shufflenet_v2_x{0_5,1_0,1_5,2_0}: its documented counts (num_params), which
    include the batch norms' scales and shifts but not their running statistics."""
    model = ShuffleNetV2(num_classes=1000, alpha=alpha, input_size=224, cifar=False)
    assert _count(model.trainable_variables) == published


def test_channel_split_and_shuffle_against_numpy():
    x = np.arange(2 * 3 * 3 * 8, dtype=np.float32).reshape(2, 3, 3, 8)
    left, right = lightweight.channel_split(tf.constant(x))
    np.testing.assert_array_equal(left.numpy(), x[..., :4])
    np.testing.assert_array_equal(right.numpy(), x[..., 4:])
    shuffled = lightweight.channel_shuffle(tf.constant(x), 2).numpy()
    np.testing.assert_array_equal(shuffled, x[..., [0, 4, 1, 5, 2, 6, 3, 7]])  # channel g*4 + j -> j*2 + g
    np.testing.assert_array_equal(lightweight.channel_shuffle(tf.constant(x), 4).numpy(),
                                  x[..., [0, 2, 4, 6, 1, 3, 5, 7]])


def test_the_cifar_form_and_the_imagenet_form():
    model = nets.build("shufflenet-v2", alpha=0.5)
    shapes = {name: shape for name, _, shape in model.layer_table()}
    assert shapes["stem"] == (32, 32, 24) and shapes["head"] == (4, 4, 1024) and "pool" not in shapes
    assert shapes["units[0].left_depthwise"] == (16, 16, 24) and shapes["units[0].pointwise_1"] == (32, 32, 24)
    logits = model(tf.zeros([2, 32, 32, 3]), training=True)
    assert logits.shape == (2, 10)
    x = tf.random.stateless_normal([2, 32, 32, 3], seed=[1, 2])
    np.testing.assert_allclose(model.inference(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)
    big = ShuffleNetV2(num_classes=1000, alpha=1.0, input_size=224, cifar=False)
    shapes = {name: shape for name, _, shape in big.layer_table()}
    assert shapes["pool"] == (56, 56, 24) and shapes["head"] == (7, 7, 1024)
    assert big(tf.zeros([1, 224, 224, 3])).shape == (1, 1000)
