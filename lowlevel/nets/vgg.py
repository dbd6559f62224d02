"""VGG-style networks (Simonyan and Zisserman 2015): stacks of 3x3 SAME ReLU convolutions and 2x2 max-pools.

    vgg-blocks            CIFAR-10 (32x32x3): blocks of two convolutions of 64, 128, 256 filters, each
                          block followed by a 2x2 max-pool, then flatten and dense 10 (1,186,378 parameters)
    vgg-blocks-separable  the same with all six convolutions separable (174,821)
    vgg16                 224x224x3, 17 classes (Oxford flowers): the 13 convolutions of VGG16, 64x2,
                          128x2, 256x3, 512x3, 512x3, a 2x2 max-pool after each group, then dense 4096,
                          dropout 0.5, dense 4096, dropout 0.5, dense 17
"""
from __future__ import annotations

from lowlevel.nets.stack import Conv, Dense, Dropout, Flatten, Pool, factory


def blocks(groups, separable: bool = False) -> list:
    """Each group (filters, convolutions) as that many 3x3 convolutions, then a 2x2 max-pool."""
    rows = []
    for filters, n in groups:
        rows += [Conv(filters, separable=separable) for _ in range(n)] + [Pool("max", 2)]
    return rows


VGG_BLOCKS = (*blocks([(64, 2), (128, 2), (256, 2)]), Flatten(), Dense(0))
VGG_BLOCKS_SEPARABLE = (*blocks([(64, 2), (128, 2), (256, 2)], separable=True), Flatten(), Dense(0))
VGG16 = (*blocks([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]), Flatten(),
         Dense(4096), Dropout(0.5), Dense(4096), Dropout(0.5), Dense(0))


vgg_blocks = factory(VGG_BLOCKS, "vgg-blocks", (32, 32, 3), 10)
vgg_blocks_separable = factory(VGG_BLOCKS_SEPARABLE, "vgg-blocks-separable", (32, 32, 3), 10)
vgg16 = factory(VGG16, "vgg16", (224, 224, 3), 17)
