"""The networks lowlevel builds, by name: `python -m lowlevel.train --model NAME`, `lowlevel.summary --model NAME`.

Every network is a `tf.Module` with one interface, so training, evaluation, inspect and the
summary treat them all alike (no `if model == ...` anywhere):

    net(images, training, seed=None, taps=False)  images [B, H, W, C] -> logits [B, num_classes]
                                                   (taps: every convolution's output by name)
    net.inference(images)                          the same logits, in the fastest exact form
    net.conv_layers()                              (name, convolution, its batch norm or None)
    net.layer_table()                              (name, layer, output shape) for the cost summary
    net.input_shape, net.num_classes, net.folds_batch_norm

A network is built for the data it is given (input shape and classes from the data set), so
MobileNet trains on 28x28x1 Fashion-MNIST as well as on CIFAR-10; each entry below also names
the shape, classes and data set it was designed for, used when none is given.
This module imports no TensorFlow: the constructors are imported when a network is built.
"""
from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Entry:
    module: str  # lowlevel.nets.<module>
    factory: str  # an attribute of it: a function (input_shape, num_classes, **options) -> network
    input_shape: tuple[int, int, int]  # what it was designed for
    num_classes: int
    dataset: str  # the data set it trains on when --dataset is not given
    about: str  # one line for --help and the summary
    defaults: dict = dataclasses.field(default_factory=dict)  # training settings it wants unless given


# Networks without batch norm diverge at the default peak learning rate 0.1 (in the tests' tiny runs,
# vgg-blocks-separable reached NaN at 0.05 and trains at 0.01), so they start from 0.01.
NO_BN = {"lr": 0.01}

NETS = {
    "mobilenet": Entry("mobilenet", "separable", (32, 32, 3), 10, "cifar10",
                       "MobileNet v1, depthwise-separable (Howard et al. 2017), CIFAR stem"),
    "mobilenet-standard": Entry("mobilenet", "standard", (32, 32, 3), 10, "cifar10",
                                "MobileNet v1 with full 3x3 convolutions (the paper's Table 4)"),
    "mobilenet-friendly": Entry("mobilenet", "friendly", (32, 32, 3), 10, "cifar10",
                                "MobileNet v1 with quantization-friendly separable blocks: no batch norm or "
                                "activation after the depthwise convolutions, ReLU (Sheng et al. 2018)"),
    "mobilenet-v2": Entry("mobilenet_v2", "build", (32, 32, 3), 10, "cifar10",
                          "MobileNetV2, inverted residuals and linear bottlenecks (Sandler et al. 2018), CIFAR strides"),
    "mobilenet-v3-small": Entry("mobilenet_v3", "small", (32, 32, 3), 10, "cifar10",
                                "MobileNetV3-Small, searched blocks with squeeze-excitation and hard-swish "
                                "(Howard et al. 2019), CIFAR strides"),
    "mobilenet-v3-large": Entry("mobilenet_v3", "large", (32, 32, 3), 10, "cifar10",
                                "MobileNetV3-Large (Howard et al. 2019), CIFAR strides"),
    "shufflenet-v2": Entry("shufflenet", "build", (32, 32, 3), 10, "cifar10",
                           "ShuffleNetV2, channel split and shuffle (Ma et al. 2018), CIFAR stem"),
    "efficientnet-b0": Entry("efficientnet", "b0", (32, 32, 3), 10, "cifar10",
                             "EfficientNet-B0, MBConv with squeeze-excitation, swish, stochastic depth "
                             "(Tan and Le 2019), CIFAR strides"),
    "fashion-cnn": Entry("fashion", "fashion_cnn", (28, 28, 1), 10, "fashion-mnist",
                         "six 3x3 SELU convolutions, three max-pools, dense 128", NO_BN),
    "fashion-cnn-separable": Entry("fashion", "fashion_cnn_separable", (28, 28, 1), 10, "fashion-mnist",
                                   "fashion-cnn with every convolution but the first separable", NO_BN),
    "fashion-separable": Entry("fashion", "fashion_separable", (28, 28, 1), 10, "fashion-mnist",
                               "six separable ReLU convolutions, three max-pools, dense 128", NO_BN),
    "vgg-blocks": Entry("vgg", "vgg_blocks", (32, 32, 3), 10, "cifar10",
                        "three VGG blocks of two 3x3 ReLU convolutions (64, 128, 256), dense 10", NO_BN),
    "vgg-blocks-separable": Entry("vgg", "vgg_blocks_separable", (32, 32, 3), 10, "cifar10",
                                  "vgg-blocks with all six convolutions separable", NO_BN),
    "alexnet": Entry("alexnet", "build", (224, 224, 3), 17, "flowers17",
                     "AlexNet as the Keras tutorial builds it (one tower)", {**NO_BN, "dropout": 0.5}),
    "vgg16": Entry("vgg", "vgg16", (224, 224, 3), 17, "flowers17", "VGG16's 13 convolutions, dense 4096 x2",
                   {**NO_BN, "dropout": 0.5}),
    "inception-v2": Entry("inception", "build", (224, 224, 3), 17, "flowers17",
                          "BN-Inception (Ioffe and Szegedy 2015, Table 1)"),
}

# MobileNet v1 and the lightweight series after it (docs/series.md, `python -m lowlevel.bench networks`)
SERIES = ("mobilenet", "mobilenet-v2", "mobilenet-v3-small", "mobilenet-v3-large", "shufflenet-v2", "efficientnet-b0")


def build(name: str, input_shape=None, num_classes: int | None = None, **options):
    """The network `name` for images of `input_shape` (H, W, C) and `num_classes` classes (default:
    the ones it was designed for).  options: alpha, dropout, bn_momentum, precision.
    An unknown name or an impossible shape raises ValueError, in one sentence."""
    if name not in NETS:
        raise ValueError(f"unknown model {name!r}; the models are {', '.join(NETS)}.")
    entry = NETS[name]
    factory = getattr(importlib.import_module(f"lowlevel.nets.{entry.module}"), entry.factory)
    return factory(tuple(input_shape or entry.input_shape), num_classes or entry.num_classes, **options)
