"""AlexNet (Krizhevsky et al. 2012) as the Keras tutorial builds it for 224x224x3 images, 17 classes.

    conv 96 11x11 stride 4, conv 256 5x5, max-pool 2, conv 384 3x3, max-pool 2, conv 384 3x3,
    conv 256 3x3, max-pool 2, flatten, dense 4096, dropout 0.5, dense 4096, dropout 0.5, dense 17

All convolutions SAME with a bias and ReLU; the pools 2x2 stride 2 VALID: 224 -> 56 -> 28 -> 14 -> 7.
(One tower, no local response normalization: the tutorial's simplification of the 2012 network.)
"""
from __future__ import annotations

from lowlevel.nets.stack import Conv, Dense, Dropout, Flatten, Pool, factory

INPUT_SHAPE, NUM_CLASSES = (224, 224, 3), 17

ALEXNET = (Conv(96, 11, 4), Conv(256, 5), Pool("max", 2), Conv(384, 3), Pool("max", 2), Conv(384, 3),
           Conv(256, 3), Pool("max", 2), Flatten(), Dense(4096), Dropout(0.5), Dense(4096), Dropout(0.5), Dense(0))


build = factory(ALEXNET, "alexnet", INPUT_SHAPE, NUM_CLASSES)
