"""The small Fashion-MNIST networks of the Keras tutorial this comparison grew from (28x28x1, 10 classes).

    fashion-cnn            3x3 SELU convolutions 32, 32, max-pool 2, 64, 64, max-pool 2, 128, 128,
                           max-pool 2, flatten, dense 128 SELU, dense 10: 435,306 parameters
    fashion-cnn-separable  the same, every convolution but the first separable (3x3 depthwise, then
                           1x1 with bias, Keras' SeparableConv2D): 184,234
    fashion-separable      all six separable, ReLU throughout: 183,987

The pools are 2x2, stride 2, VALID (Keras' MaxPooling2D default): 28 -> 14 -> 7 -> 3.
"""
from __future__ import annotations

from lowlevel.nets.stack import Conv, Dense, Flatten, Pool, factory

INPUT_SHAPE, NUM_CLASSES = (28, 28, 1), 10


def table(separable_from: int, act: str) -> tuple:
    """Six 3x3 convolutions in pairs of 32, 64, 128 with a 2x2 max-pool after each pair; the ones
    from index `separable_from` on are separable; then dense 128 and the classifier."""
    rows = []
    for i, c in enumerate((32, 32, 64, 64, 128, 128)):
        rows.append(Conv(c, act=act, separable=i >= separable_from))
        if i % 2:
            rows.append(Pool("max", 2))
    return (*rows, Flatten(), Dense(128, act), Dense(0))


FASHION_CNN = table(separable_from=6, act="selu")
FASHION_CNN_SEPARABLE = table(separable_from=1, act="selu")
FASHION_SEPARABLE = table(separable_from=0, act="relu")


fashion_cnn = factory(FASHION_CNN, "fashion-cnn", INPUT_SHAPE, NUM_CLASSES)
fashion_cnn_separable = factory(FASHION_CNN_SEPARABLE, "fashion-cnn-separable", INPUT_SHAPE, NUM_CLASSES)
fashion_separable = factory(FASHION_SEPARABLE, "fashion-separable", INPUT_SHAPE, NUM_CLASSES)
