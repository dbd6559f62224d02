"""Inception-v2, also called BN-Inception (Ioffe and Szegedy 2015, Table 1), for 224x224x3 images, 17 classes.

    conv 64 7x7/2, max-pool 3x3/2, conv 64 1x1, conv 192 3x3, max-pool 3x3/2     224 -> 112 -> 56 -> 28
    inception 3a, 3b, 3c (stride 2)                                             28 -> 14
    inception 4a, 4b, 4c, 4d, 4e (stride 2)                                     14 -> 7
    inception 5a, 5b                                                            7
    average pool 7x7, flatten, dense 17

An inception module concatenates four branches along channels (Table 1's columns):

    #1x1                       1x1 conv                                    (absent when 0)
    #3x3 reduce, #3x3          1x1 conv, then 3x3 conv (stride s)
    double #3x3 reduce, #3x3   1x1 conv, then 3x3 conv, then 3x3 conv (stride s): the paper's change
                               from GoogLeNet's 5x5, two 3x3s seeing the same 5x5 window for less
    pool + proj                3x3 average or max pool (stride s, SAME), then 1x1 conv ("pass
                               through": no conv, the pooled input itself)

Every convolution here is conv + bias + ReLU followed by a batch norm, BN(relu(conv(x) + b)): the
order of the Keras tutorial these networks come from (the paper puts the batch norm before the
ReLU).  Pools are SAME, so 112 -> 56 as in the paper.  The table follows the paper's branch widths
exactly; where its "output" column disagrees with their sum (4c and 4d: 160+160+160+128 = 608
and 96+192+192+128 = 608 channels, listed as 576) the branches win, as they do in Keras.
"""
from __future__ import annotations

import dataclasses

from lowlevel._tf import tf

from lowlevel import layers as L
from lowlevel.nets.stack import Conv, Dense, Flatten, Pool, factory, identifier

INPUT_SHAPE, NUM_CLASSES = (224, 224, 3), 17


@dataclasses.dataclass(frozen=True)
class Mixed:
    """One inception module: Table 1's columns."""
    ones: int
    reduce3: int
    three: int
    reduce_double: int
    double: int
    pool: str  # "avg" or "max"
    proj: int  # 0: pass through
    stride: int = 1

    def build(self, shape, net, name):
        unit = MixedUnit(self, shape, net, name)
        h, w = -(-shape[0] // self.stride), -(-shape[1] // self.stride)
        return unit, (h, w, unit.out_channels)


def _conv(channels, kernel=1, stride=1):
    return Conv(channels, kernel, stride, act="relu", bn="after")


class MixedUnit(tf.Module):
    """[B, H, W, C] -> [B, H/s, W/s, sum of the branches' channels]."""

    def __init__(self, row: Mixed, shape, net, name: str):
        super().__init__(name=identifier(name))
        self.path, self.row = name, row
        s, pool = row.stride, Pool(row.pool, 3, row.stride, "SAME")
        plans = [("ones", [_conv(row.ones)] if row.ones else None),
                 ("three", [_conv(row.reduce3), _conv(row.three, 3, s)]),
                 ("double", [_conv(row.reduce_double), _conv(row.double, 3), _conv(row.double, 3, s)]),
                 ("pool", [_conv(row.proj)] if row.proj else [])]
        self.branches, self.shapes, out = {}, {}, 0  # shapes: of one image after the pool and each unit
        with self.name_scope:
            for branch, rows in plans:
                if rows is None:
                    continue
                units = []
                shapes = [(-(-shape[0] // s), -(-shape[1] // s), shape[2])] if branch == "pool" else []
                c = shapes[0] if shapes else shape
                for j, conv in enumerate(rows):
                    unit, c = conv.build(c, net, f"{name}.{branch}[{j}]")
                    units.append(unit)
                    shapes.append(c)
                self.branches[branch], self.shapes[branch] = units, shapes
                out += c[2]
        self.pool, self.out_channels = pool, out

    def __call__(self, x, training, seed, taps):
        outputs = []
        for branch, units in self.branches.items():
            y = self.pool(x, training, seed) if branch == "pool" else x
            for unit in units:
                y = unit(y, training, seed, taps)
            outputs.append(y)
        return L.concat(outputs)  # [B, H/s, W/s, out_channels]

    def layer_table(self, shape):
        found = []
        for branch, units in self.branches.items():
            shapes = list(self.shapes[branch])
            if branch == "pool":
                found.append((f"{self.path}.pool", self.pool.label(), shapes.pop(0)))
            for unit, c in zip(units, shapes):
                found += unit.layer_table(c)
        return found + [(f"{self.path}.concat", "Concat", shape)]

    def conv_layers(self):
        return [c for units in self.branches.values() for unit in units for c in unit.conv_layers()]


# Ioffe and Szegedy 2015, Table 1: #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool, proj
INCEPTION_V2 = (
    _conv(64, 7, 2), Pool("max", 3, 2, "SAME"), _conv(64), _conv(192, 3), Pool("max", 3, 2, "SAME"),
    Mixed(64, 64, 64, 64, 96, "avg", 32),  # 3a
    Mixed(64, 64, 96, 64, 96, "avg", 64),  # 3b
    Mixed(0, 128, 160, 64, 96, "max", 0, stride=2),  # 3c
    Mixed(224, 64, 96, 96, 128, "avg", 128),  # 4a
    Mixed(192, 96, 128, 96, 128, "avg", 128),  # 4b
    Mixed(160, 128, 160, 128, 160, "avg", 128),  # 4c
    Mixed(96, 128, 192, 160, 192, "avg", 128),  # 4d
    Mixed(0, 128, 192, 192, 256, "max", 0, stride=2),  # 4e
    Mixed(352, 192, 320, 160, 224, "avg", 128),  # 5a
    Mixed(352, 192, 320, 192, 224, "max", 128),  # 5b
    Pool("avg", 7, 1), Flatten(), Dense(0),
)


build = factory(INCEPTION_V2, "inception-v2", INPUT_SHAPE, NUM_CLASSES)
