"""A network as a table of rows run one after another: the plain convolutional networks.

Each row is a frozen dataclass that says what the layer is (like `mobilenet.BODY`),
and `Stack` turns a table into a `tf.Module`, tracking the shape of one image
[H, W, C] from row to row, so every layer's variables exist at construction and
the cost summary needs no forward pass.  The rows:

    Conv(C, k, s)         y = act(conv(x, W) + b), k x k, stride s, SAME padding; with
                          separable=True a SeparableConv2D (3x3 depthwise, then 1x1 with bias);
                          bn="after": a batch norm after the activation, BN(act(conv(x) + b)),
                          the order of the Keras tutorials these networks come from
    Pool("max", k, s)     max (or "avg") over k x k windows s apart, VALID or SAME padding
    Flatten()             [H, W, C] -> [H*W*C]
    Dense(n, act)         y = act(x W + b); Dense(0) is the classifier: num_classes outputs, no activation
    Dropout(rate)         in training only; the rate is the network's unless --dropout overrides it

Width multiplier alpha: every Conv and hidden Dense of C channels gets max(8, int(alpha * C)),
the rule of MobileNet (`mobilenet.scaled`), so a small test network has the same shape of table.

Layer names follow attribute paths: "layers[3]" is `net.layers[3]`; a separable convolution's two
halves are "layers[3].depthwise" and "layers[3].pointwise".
"""
from __future__ import annotations

import dataclasses

from lowlevel._tf import tf

from lowlevel import layers as L
from lowlevel.nets.mobilenet import PRECISIONS, scaled

ACTIVATIONS = {"relu": L.relu, "selu": L.selu, "relu6": L.relu6, "none": tf.identity}
GAINS = {"relu": 2.0, "relu6": 2.0, "selu": 1.0, "none": 1.0}  # initial Var(w) * fan_in (layers.py)
INT8 = {"relu", "relu6", "none"}  # the activations LiteRT's int8 kernels compute (its converter leaves SELU in float32)


def identifier(path: str) -> str:
    """A layer's path as a module name (for variable names): layers[5].ones[0] -> layers_5_ones_0."""
    return path.replace("[", "_").replace("]", "").replace(".", "_")


def _side(size: int, k: int, stride: int, padding: str) -> int:
    """Output side of a k x k window at `stride`: SAME ceil(size / stride), VALID floor((size - k) / stride) + 1."""
    return -(-size // stride) if padding == "SAME" else (size - k) // stride + 1


@dataclasses.dataclass(frozen=True)
class Conv:
    channels: int
    kernel: int = 3
    stride: int = 1
    act: str = "relu"
    separable: bool = False
    bn: str = ""  # "" none, "after": BN(act(conv(x) + b))

    def build(self, shape, net: "Stack", name: str):
        h, w, c = shape
        out = scaled(self.channels, net.alpha)
        return ConvUnit(self, c, out, net, name), (-(-h // self.stride), -(-w // self.stride), out)


@dataclasses.dataclass(frozen=True)
class Pool:
    kind: str = "max"  # or "avg"
    size: int = 2
    stride: int = 0  # 0: the window's size
    padding: str = "VALID"

    def build(self, shape, net, name):
        h, w, c = shape
        s = self.stride or self.size
        return Op(self, name), (_side(h, self.size, s, self.padding), _side(w, self.size, s, self.padding), c)

    def label(self) -> str:
        s = self.stride or self.size
        return f"{'Max' if self.kind == 'max' else 'Avg'} pool {self.size}x{self.size}/{s}"

    def __call__(self, x, training, seed):
        pool = L.max_pool if self.kind == "max" else L.average_pool
        return pool(x, self.size, self.stride or self.size, self.padding)


@dataclasses.dataclass(frozen=True)
class Flatten:
    def build(self, shape, net, name):
        return Op(self, name), (shape[0] * shape[1] * shape[2],)

    def label(self) -> str:
        return "Flatten"

    def __call__(self, x, training, seed):
        return L.flatten(x)


@dataclasses.dataclass(frozen=True)
class Dropout:
    rate: float = 0.5

    def build(self, shape, net, name):
        rate = self.rate if net.dropout is None else net.dropout
        return Op(dataclasses.replace(self, rate=rate), name), shape

    def label(self) -> str:
        return f"Dropout {self.rate:g}"

    def __call__(self, x, training, seed):
        return L.dropout(x, self.rate, training, seed)


@dataclasses.dataclass(frozen=True)
class Dense:
    units: int  # 0: the classifier, num_classes outputs and no activation
    act: str = "relu"

    def build(self, shape, net, name):
        if len(shape) != 1:
            raise ValueError(f"{name}: a Dense row needs a Flatten before it (its input is {shape}).")
        out = scaled(self.units, net.alpha) if self.units else net.num_classes
        act = self.act if self.units else "none"
        return DenseUnit(shape[0], out, act, name), (out,)


class Op(tf.Module):
    """A row without variables (pooling, flatten, dropout), so every row is a module in `net.layers`."""

    def __init__(self, row, name: str):
        super().__init__(name=identifier(name))
        self.row, self.path = row, name

    def __call__(self, x, training, seed, taps):
        return self.row(x, training, seed)

    def layer_table(self, shape):
        return [(self.path, self.row.label(), shape)]

    def conv_layers(self):
        return []


class ConvUnit(tf.Module):
    """One Conv row: [B, H, W, C_in] -> [B, H/s, W/s, C_out]."""

    def __init__(self, row: Conv, c_in: int, c_out: int, net: "Stack", name: str):
        super().__init__(name=identifier(name))
        self.path, self.act, self.stride = name, row.act, row.stride
        compute, gain = tf.as_dtype(net.precision), GAINS[row.act]
        with self.name_scope:
            if row.separable:
                self.conv = L.SeparableConv2D(c_in, c_out, row.kernel, row.stride, compute_dtype=compute,
                                              gain=gain, name="conv")
            else:
                self.conv = L.Conv2D(c_in, c_out, row.kernel, row.stride, use_bias=True, compute_dtype=compute,
                                     gain=gain, name="conv")
            self.bn = L.BatchNorm(c_out, net.bn_momentum, name="bn") if row.bn else None

    def __call__(self, x, training, seed, taps):
        if isinstance(self.conv, L.SeparableConv2D):
            x = self.conv.depthwise(x)
            if taps is not None:
                taps[f"{self.path}.depthwise"] = x
            z = self.conv.pointwise(x)
            name = f"{self.path}.pointwise"
        else:
            z, name = self.conv(x), self.path
        y = ACTIVATIONS[self.act](z)
        if self.bn is not None:
            if taps is not None:
                taps[f"{name}:bn_input"] = y
            y = self.bn(y, training)
        if taps is not None:
            taps[name] = y
        return y

    def layer_table(self, shape):
        h, w, _ = shape
        if isinstance(self.conv, L.SeparableConv2D):
            dw = self.conv.depthwise
            found = [(f"{self.path}.depthwise", dw, (h, w, dw.out_channels)),
                     (f"{self.path}.pointwise", self.conv.pointwise, shape)]
        else:
            found = [(self.path, self.conv, shape)]
        return found + ([(f"{self.path}.bn", self.bn, shape)] if self.bn is not None else [])

    def conv_layers(self):
        if isinstance(self.conv, L.SeparableConv2D):
            return [(f"{self.path}.depthwise", self.conv.depthwise, None),
                    (f"{self.path}.pointwise", self.conv.pointwise, self.bn)]
        return [(self.path, self.conv, self.bn)]


class DenseUnit(tf.Module):
    def __init__(self, c_in: int, c_out: int, act: str, name: str):
        super().__init__(name=identifier(name))
        self.path, self.act = name, act
        with self.name_scope:
            self.dense = L.Dense(c_in, c_out, gain=GAINS[act], name="dense")

    def __call__(self, x, training, seed, taps):
        return ACTIVATIONS[self.act](self.dense(x))

    def layer_table(self, shape):
        return [(self.path, self.dense, shape)]

    def conv_layers(self):
        return []


def factory(rows, name: str, input_shape, num_classes: int):
    """The registry's constructor for a table: (input_shape, num_classes, **options) -> Stack, with
    the shape and classes the table was designed for as defaults."""
    def make(input_shape=input_shape, num_classes=num_classes, **options) -> "Stack":
        return Stack(rows, input_shape, num_classes, name=identifier(name.replace("-", "_")), **options)
    return make


class Stack(tf.Module):
    """A table of rows as one network: images [B, H, W, C] (normalized floats) -> logits [B, num_classes].

    The same interface as MobileNetV1, so training, evaluation, inspect and the summary need no
    special case: __call__(images, training, seed, taps), inference(images), conv_layers(),
    layer_table(), input_shape, num_classes.
    dropout: None keeps each Dropout row's rate; a number replaces them all.
    """

    folds_batch_norm = False  # a batch norm here follows the activation, so it cannot fold into the convolution

    def __init__(self, rows, input_shape=(32, 32, 3), num_classes: int = 10, alpha: float = 1.0,
                 dropout: float | None = None, bn_momentum: float = 0.99, precision: str = "float32",
                 name: str = "net"):
        super().__init__(name=name)
        if not alpha > 0:
            raise ValueError(f"alpha (the width multiplier) must be greater than 0, not {alpha}.")
        if num_classes < 1:
            raise ValueError(f"the number of classes must be at least 1, not {num_classes}.")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}.")
        self.input_shape, self.num_classes, self.alpha, self.dropout = tuple(input_shape), num_classes, alpha, dropout
        self.bn_momentum, self.precision = bn_momentum, precision
        shape, self.layers, self._shapes = tuple(input_shape), [], []
        with self.name_scope:
            for i, row in enumerate(rows):
                unit, shape = row.build(shape, self, f"layers[{i}]")
                if min(shape) < 1:
                    raise ValueError(f"{input_shape[0]}x{input_shape[1]} images are too small for this network: "
                                     f"layers[{i}] ({type(row).__name__}) would leave nothing; use larger images.")
                self.layers.append(unit)
                self._shapes.append(shape)
        if shape != (num_classes,):
            raise ValueError(f"the table must end with the classifier Dense(0), not {rows[-1]}.")

    def __call__(self, images: tf.Tensor, training: bool = False, seed=None, taps: bool | str = False):
        """images [B, H, W, C] -> logits [B, num_classes], or with taps the dict of every convolution's
        output (after its activation and batch norm) by name, then "logits"; taps="pre" adds the
        batch norms' inputs under "<name>:bn_input".  seed: the dropout key; each Dropout row folds
        in its own index, so no two share a mask."""
        record = {} if taps else None
        x = images
        for i, unit in enumerate(self.layers):
            key = None if seed is None else tf.random.experimental.stateless_fold_in(seed, i)
            x = unit(x, training, key, record)
        if not taps:
            return x
        record["logits"] = x
        return {k: v for k, v in record.items() if taps == "pre" or not k.endswith(":bn_input")}

    def inference(self, images: tf.Tensor) -> tf.Tensor:
        """The logits of __call__(images, training=False)."""
        return self(images, training=False)

    def conv_layers(self) -> list[tuple[str, tf.Module, L.BatchNorm | None]]:
        """(name, convolution, its batch norm or None) for every convolution, in order."""
        return [c for unit in self.layers for c in unit.conv_layers()]

    def float_activations(self) -> list[tuple[str, str]]:
        """(layer, activation) for each layer whose activation an int8 LiteRT file cannot compute in int8."""
        return [(unit.path, unit.act) for unit in self.layers if getattr(unit, "act", "none") not in INT8]

    def layer_table(self) -> list[tuple[str, object, tuple[int, ...]]]:
        """(name, layer, output shape of one image) for every layer in order (see lowlevel.summary)."""
        return [r for unit, shape in zip(self.layers, self._shapes) for r in unit.layer_table(shape)]
