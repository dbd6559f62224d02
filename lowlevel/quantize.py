"""Quantization-aware training (Jacob et al. 2018; Krishnamoorthi 2018): the network trained as the int8
network will compute, with every rounding simulated in float ("fake quantization").

An 8-bit tensor stands for real values  r = scale * (q - zero),  q an integer in 0..255 (activations)
or -127..127 (weights, zero = 0).  Fake quantization rounds x to the nearest such value in float:

    fq(x; lo, hi) = scale * (round(clamp(x, lo, hi) / scale - z) + z),   scale = (hi - lo) / 255

(`tf.quantization.fake_quant_with_min_max_vars`, which first nudges lo and hi so that 0 is one of the
values, as integer kernels need).  Its gradient is the straight-through estimator: 1 where lo <= x <= hi,
0 outside, the rounding being treated as the identity.

What `Quantized(net, ...)` changes in `net`, for every convolution of `net.conv_layers()` with its batch
norm, and the classifier (a convolution without batch norm, as the depthwise ones of `mobilenet-friendly`
and every one of the plain networks of lowlevel/nets/stack.py, has its kernel rounded as it is and its
bias, if any, as the next point says; a batch norm after the activation, as Inception-v2's, cannot be
folded, and such a network is refused):

  * weights: the batch norm folded in,  W' = W s,  s = gamma / sqrt(moving_var + eps)  [C_out], then
    fake-quantized symmetrically, [-max|W'|, max|W'|] per output channel (or per tensor; the classifier's
    always per tensor);
  * the batch norm on z = conv(x, fq(W')), which is s * conv(x, W) up to rounding, so that
        training (batch statistics of z: mean m_z, variance v_z):
            y = |gamma| (z - m_z) / sqrt(v_z + eps s^2) + beta   = BN(conv(x, W)) exactly without rounding,
            and the moving statistics move towards the batch's of conv(x, W): m_z / s, v_z / s^2;
        after `freeze_after` training steps, and at inference (Krishnamoorthi 2018, section 3.2.2):
            y = z + (beta - moving_mean s),   the folded layer the int8 network runs;
  * activations: the input of every convolution and of the classifier, the logits, and the tensors no
    convolution reads alone, at the points its modules name (lightweight.Rounded: an inverted residual
    block's projection, shortcut and sum, a squeeze-and-excitation gate's, a hard-swish's or swish's
    input), fake-quantized with ranges [lo, hi] kept as moving averages of each training batch's min and
    max (the first batch sets them), read alone at inference; where the int8 kernel's output range is
    fixed (the gates, a swish's sigmoid), on that range.  Each tensor is rounded once, by the first of
    these points it reaches (`Quantized.once`): a block's input that the block before it rounded keeps
    that scale, as the int8 file holds it.  The map a global average pool reduces for the classifier is
    rounded on the classifier's input range (`LayerQuantization.pooled`).
  * the convolutions no batch norm follows outside `conv_layers()` (the gates', MobileNetV3's last):
    their kernels rounded as they are (as the scheme says);
  * biases, folded or not: rounded to the int8 file's int32 grid, step = input step x weight step
    (`LayerQuantization.bias`).

The int8 file (lowlevel/export.py) then takes every scale from these ranges, without calibration; the
pixels' normalization before the network is one 1x1 depthwise convolution of the uint8 pixels, whose
output the network's first range rounds (`normalization`); a --qat run normalizes its pixels so in
training and evaluation too (`IntegerNormalization`), so the simulated network reads what the file reads.
"""
from __future__ import annotations

import types

from lowlevel._tf import tf

from lowlevel.layers import BatchNorm, Conv2D, Dense, DepthwiseConv2D
from lowlevel.lightweight import Rounded
from lowlevel.pipeline import Normalization

SCHEMES = ("per-channel", "per-tensor")
RANGE_MOMENTUM = 0.99  # of the activation ranges' moving averages


def fake_quant(x: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor) -> tf.Tensor:
    """x rounded to the 256 values of [lo, hi] (nudged to hold 0), the straight-through gradient."""
    return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8)


def fake_quant_weights(w: tf.Tensor, per_channel: bool, depthwise: bool = False, steps: bool = False):
    """W [..., C_out] (depthwise: [k, k, C, m], C_out = C m) rounded symmetrically to 255 values:
    scale = max|W| / 127 over each output channel (per_channel) or the whole tensor.  steps: also
    return the scale ([C_out], or a scalar per tensor)."""
    shape = w.shape
    if depthwise:  # output channel c*m + q is W[..., c, q]: make them the last axis
        w = tf.reshape(w, [*shape[:2], 1, shape[2] * shape[3]])
    if per_channel:
        top = tf.reduce_max(tf.abs(w), axis=list(range(w.shape.rank - 1)))  # [C_out]
        q = tf.quantization.fake_quant_with_min_max_vars_per_channel(w, -top, top, num_bits=8, narrow_range=True)
    else:
        top = tf.reduce_max(tf.abs(w))
        q = tf.quantization.fake_quant_with_min_max_vars(w, -top, top, num_bits=8, narrow_range=True)
    q = tf.reshape(q, shape)
    return (q, top / 127.0) if steps else q


class Range(tf.Module):
    """An activation's [lo, hi]: moving averages of the batches' min and max (momentum RANGE_MOMENTUM),
    set by the first batch (lo = hi = 0 until then)."""

    def __init__(self, name: str | None = None):
        super().__init__(name=name)
        with self.name_scope:
            self.lo = tf.Variable(0.0, trainable=False, name="lo")
            self.hi = tf.Variable(0.0, trainable=False, name="hi")

    def __call__(self, x: tf.Tensor, training: bool, calibrating: bool = False, enabled: bool = True,
                 moved: bool = False) -> tf.Tensor:
        """fq(x; lo, hi), after `move` (unless this call has moved it already: moved); enabled False: x."""
        if not moved:
            self.move(x, training, calibrating, enabled)
        if not enabled:
            return x
        return tf.cast(fake_quant(tf.cast(x, tf.float32), self.lo, self.hi), x.dtype)

    def move(self, x: tf.Tensor, training: bool, calibrating: bool = False, enabled: bool = True) -> None:
        """training (and enabled): move [lo, hi] towards this batch's; calibrating: widen it to hold this
        batch's (the min and max over every batch so passed)."""
        if calibrating:
            x32 = tf.cast(x, tf.float32)
            fresh = tf.equal(self.lo, self.hi)
            self.lo.assign(tf.minimum(tf.where(fresh, 0.0, self.lo), tf.reduce_min(x32)))
            self.hi.assign(tf.maximum(tf.where(fresh, 0.0, self.hi), tf.reduce_max(x32)))
        if training and enabled:
            x32 = tf.stop_gradient(tf.cast(x, tf.float32))
            lo, hi = tf.minimum(tf.reduce_min(x32), 0.0), tf.maximum(tf.reduce_max(x32), 0.0)
            fresh = tf.equal(self.lo, self.hi)
            m = tf.where(fresh, 0.0, RANGE_MOMENTUM)
            self.lo.assign(m * self.lo + (1.0 - m) * lo)
            self.hi.assign(m * self.hi + (1.0 - m) * hi)

    @property
    def step(self) -> tf.Tensor:
        """The distance between two of its 256 values, (hi - lo) / 255 (0 while unset)."""
        return (self.hi - self.lo) / 255.0

    def rounded(self, x: tf.Tensor, unset_possible: bool) -> tf.Tensor:
        """fq(x; lo, hi) without moving [lo, hi]; unset_possible (training, calibrating): x itself while
        no batch has set them."""
        y = tf.cast(fake_quant(tf.cast(x, tf.float32), self.lo, self.hi), x.dtype)
        return tf.where(tf.equal(self.lo, self.hi), x, y) if unset_possible else y


class LayerQuantization(tf.Module):
    """One convolution's or the classifier's part: its input's Range, its weights' rounding (with its
    batch norm folded in, if it has one), and its bias's: the int8 file holds a bias as int32 on the
    scale of the input times the weights', so the simulated network rounds it there too (`bias`).
    Set as the layer's `quantization`; the layer calls it, and its batch norm calls `batch_norm`."""

    def __init__(self, state: "Quantized", batch_norm: BatchNorm | None = None, depthwise: bool = False,
                 per_channel: bool = True, name: str | None = None):
        super().__init__(name=name)
        # functions, not the objects: a checkpoint reaches the network and its batch norms by one path
        self._state = lambda: state
        self._fold = batch_norm.fold if batch_norm is not None else None
        self.depthwise, self.per_channel = depthwise, per_channel
        self._last = types.SimpleNamespace(bias_step=None, moved=False)  # of the call traced: `bias`, `pooled`
        with self.name_scope:
            self.input = Range(name="input")

    def __call__(self, x: tf.Tensor, kernel: tf.Tensor, folded: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """(fq(x), fq(W')): `kernel` is W, or already W s when `folded` (BatchNorm.fold's, at inference)."""
        state = self._state()
        if self._fold is not None and not folded:
            kernel, _ = self._fold(kernel, depthwise=self.depthwise)
        moved, self._last.moved, self._last.bias_step = self._last.moved, False, None
        x = state.once(x, lambda x: self.input(x, state.training, state.calibrating, state.activations, moved),
                       (lambda: self.input.step) if state.activations else None)
        if state.weights:
            # the classifier's per tensor in both schemes: the converter cannot carry a per-channel scale
            # of the [C_in, C_out] matrix into LiteRT's transposed [C_out, C_in] one
            kernel, steps = fake_quant_weights(kernel, state.per_channel and self.per_channel, self.depthwise,
                                               steps=True)
            x_step = state.step_of(x)
            self._last.bias_step = None if x_step is None else tf.stop_gradient(x_step * steps)
        return x, kernel

    def bias(self, b: tf.Tensor) -> tf.Tensor:
        """b [C_out] rounded to the int32 grid of the call just made, step = (input step) (weight step
        [C_out] or per tensor), with the straight-through gradient; b itself when the call rounded
        neither its input nor its weights, or the input's range is unset."""
        step = self._last.bias_step
        if step is None:
            return b
        rounded = tf.where(step > 0.0, tf.round(tf.math.divide_no_nan(b, step)) * step, b)
        return (b - tf.stop_gradient(b)) + tf.stop_gradient(rounded)  # exactly `rounded`: 0 + rounded

    def batch_norm(self, bn: BatchNorm, z: tf.Tensor, training: bool) -> tf.Tensor:
        """The layer's batch norm's call inside the network (BatchNorm.__call__ hands it here)."""
        state = self._state()
        return folded_batch_norm(bn, z, training, state.steps >= state.freeze_after, self.bias)

    def pooled(self, x: tf.Tensor) -> tf.Tensor:
        """x [B, H, W, C], the map whose global average this layer reads, rounded on this layer's input
        range: the int8 file's pooling reads the map on one scale, and without a range of its own the
        map gets the one its reader's input has.  The range moves in this call, on the map's averages
        (training, calibrating), so that the map and its average are rounded on the same one."""
        state = self._state()
        self.input.move(tf.reduce_mean(x, axis=[1, 2]), state.training, state.calibrating, state.activations)
        self._last.moved = True  # by the pooled values this layer is about to read: its call leaves the range
        if not state.activations:
            return x
        return self.input.rounded(x, state.training or state.calibrating)


class Points(tf.Module):
    """A module's named rounding points (lightweight.Rounded: an inverted residual block's projection
    and sum, a squeeze-and-excitation gate's, a hard-swish's input): a Range each, learned or fixed.
    Set as the module's `quantization`; the module calls it with the point's name."""

    def __init__(self, state: "Quantized", points: dict, name: str | None = None):
        super().__init__(name=name)
        self._state = lambda: state  # as in LayerQuantization
        self.fixed = {what: bounds for what, bounds in points.items() if bounds is not None}
        with self.name_scope:
            self.ranges = {what: Range(name=what) for what, bounds in points.items() if bounds is None}

    def __call__(self, what: str, y: tf.Tensor) -> tf.Tensor:
        state = self._state()
        if what in self.fixed:
            lo, hi = self.fixed[what]
            return state.once(y, lambda y: y if not state.activations else
                              tf.cast(fake_quant(tf.cast(y, tf.float32), lo, hi), y.dtype),
                              (lambda: tf.constant((hi - lo) / 255.0)) if state.activations else None)
        r = self.ranges[what]
        return state.once(y, lambda y: r(y, state.training, state.calibrating, state.activations),
                          (lambda: r.step) if state.activations else None)


def folded_batch_norm(bn: BatchNorm, z: tf.Tensor, training: bool, frozen: tf.Tensor, bias=None) -> tf.Tensor:
    """The batch norm of a convolution whose kernel has it folded in: z = conv(x, fq(W s)) [B, H, W, C]
    (module docstring).  frozen: a bool tensor, True once the moving statistics stand in for the batch's.
    bias: the rounding of the folded bias (LayerQuantization.bias), else none."""
    scale = bn.gamma * tf.math.rsqrt(bn.moving_variance + bn.epsilon)  # s [C]
    shift = bn.beta - bn.moving_mean * scale
    inference = z + (shift if bias is None else bias(shift))
    if not training:
        return inference
    m_z, v_z = tf.nn.moments(z, axes=list(range(z.shape.rank - 1)))  # [C]
    batch = tf.abs(bn.gamma) * (z - m_z) * tf.math.rsqrt(v_z + bn.epsilon * tf.square(scale)) + bn.beta
    keep = tf.where(frozen, 1.0, bn.momentum)  # frozen: the moving statistics stay
    bn.moving_mean.assign(keep * bn.moving_mean + (1.0 - keep) * tf.stop_gradient(tf.math.divide_no_nan(m_z, scale)))
    bn.moving_variance.assign(keep * bn.moving_variance + (1.0 - keep) * tf.stop_gradient(
        tf.math.divide_no_nan(v_z, tf.square(scale))))
    return tf.where(frozen, inference, batch)


def unfoldable(net) -> list[str]:
    """The convolutions of `net` whose batch norm quantization-aware training cannot fold into them as the
    int8 network runs them: all that have one, when it follows the activation (`net.folds_batch_norm`
    False, as in Inception-v2)."""
    if getattr(net, "folds_batch_norm", True):
        return []
    return [name for name, _, bn in net.conv_layers() if bn is not None]


class Quantized(tf.Module):
    """`net` trained and run as its int8 network (module docstring).  scheme: "per-channel" or
    "per-tensor" weight scales; freeze_after: the training steps with batch statistics, after which the
    batch norms' moving statistics are frozen.  Calls, `inference` and every attribute are `net`'s."""

    def __init__(self, net: tf.Module, scheme: str, freeze_after: int = 0):
        super().__init__(name="quantized")
        if scheme not in SCHEMES:
            raise ValueError(f"the quantization scheme must be {' or '.join(SCHEMES)}, not {scheme!r}.")
        unfolded = unfoldable(net)
        if unfolded:
            raise ValueError(f"quantization-aware training folds each batch norm into its convolution, and "
                             f"{unfolded[0]}'s follows the activation")
        self.net, self.freeze_after = net, freeze_after
        self.scheme = scheme
        # what a call rounds (Python switches, read as the call is traced): lowlevel.inspect turns them
        self.weights = self.activations = True
        self.training = self.calibrating = False
        self._roundings = types.SimpleNamespace(pairs=[])  # this call's (tensor, its rounding, step): once()
        with self.name_scope:
            self.steps = tf.Variable(0.0, trainable=False, name="steps")  # training calls so far (float: --ema)
            self.output = Range(name="output")
            for _, conv, bn in net.conv_layers():
                conv.quantization = LayerQuantization(self, bn, isinstance(conv, DepthwiseConv2D))
                if bn is not None:
                    bn.quantization = conv.quantization.batch_norm  # (a method: see LayerQuantization)
            for dense in [m for m in net.submodules if isinstance(m, Dense)]:
                dense.quantization = LayerQuantization(self, per_channel=False)
            for conv in [m for m in net.submodules if isinstance(m, (Conv2D, DepthwiseConv2D))]:
                if conv.quantization is None:  # one of no batch norm, outside conv_layers (a gate's, V3's last)
                    conv.quantization = LayerQuantization(self, depthwise=isinstance(conv, DepthwiseConv2D))
            for module in [net, *net.submodules]:
                if isinstance(module, Rounded) and module.rounding_points():
                    module.quantization = Points(self, module.rounding_points())

    @property
    def per_channel(self) -> bool:
        return self.scheme == "per-channel"

    def detach(self) -> tf.Module:
        """The network alone again, in float (its layers' quantization removed); returns it."""
        for m in [self.net, *self.net.submodules]:
            if hasattr(m, "quantization"):
                m.quantization = None
        return self.net

    def calibrate(self, images) -> None:
        """Widen every activation range to hold these images' (a network never trained with --qat)."""
        self.calibrating = True
        try:
            self(images)
        finally:
            self.calibrating = False

    def __getattr__(self, name):  # everything else is the network's (input_shape, conv_layers, ...)
        if name == "net":
            raise AttributeError(name)
        return getattr(self.net, name)

    def __call__(self, images, training: bool = False, seed=None, taps=False):
        return self._run(lambda: self.net(images, training, seed, taps), training, taps)

    def inference(self, images):
        return self._run(lambda: self.net.inference(images), False, False)

    def once(self, x: tf.Tensor, rounding, step=None) -> tf.Tensor:
        """rounding(x), unless this call has rounded x already, or x is a rounding's output: then that
        rounding's output.  The int8 network holds each tensor on one scale, which every reader shares;
        a second range on the same tensor (a block's input, which the previous block's sum rounded and
        the next convolution's input range would round again) is one the file cannot hold: its converter
        keeps one of the two scales for the tensor and computes the reader's bias with the other.
        step: a function giving the step of the rounding's grid, called after it (for `step_of`)."""
        for before, after, _ in self._roundings.pairs:
            if x is before or x is after:
                return after
        y = rounding(x)
        self._roundings.pairs.append((x, y, None if step is None else step()))  # (after the range moved)
        return y

    def step_of(self, x: tf.Tensor) -> tf.Tensor | None:
        """The step of the grid a rounding of this call put x on (`once`'s step), or None."""
        return next((step for _, after, step in self._roundings.pairs if x is after), None)

    def _run(self, call, training: bool, taps):
        self.training, self._roundings.pairs = training, []
        try:
            out = call()
        finally:
            self.training, self._roundings.pairs = False, []
        if training:
            self.steps.assign_add(1.0)
        def rounded(logits):
            return self.output(logits, training, self.calibrating, self.activations)
        if isinstance(out, dict):
            out["logits"] = rounded(out["logits"])
            return out
        return rounded(out)


def normalization(norm, images: tf.Tensor) -> tf.Tensor:
    """norm(images), (x / 255 - mean) / std, as the int8 file computes it: one 1x1 depthwise convolution
    of the pixels 0..255 (scale 1, exact) with kernel k_c = 1 / (255 std_c) (per channel: each weight is
    its own channel's largest, so it rounds to itself) and bias -mean_c / std_c on the file's int32 grid
    (`integer_bias`).  Its output is rounded once, by the network's first Range.
    uint8 or float pixels [B, H, W, C] -> float32 [B, H, W, C]."""
    x = fake_quant(tf.cast(images, tf.float32), tf.constant(0.0), tf.constant(255.0))
    kernel = tf.reshape(1.0 / (255.0 * norm.std), [1, 1, -1, 1])  # [1, 1, C, 1]
    kernel = fake_quant_weights(kernel, per_channel=True, depthwise=True)
    return tf.nn.bias_add(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID"), integer_bias(norm))


def integer_bias(norm) -> tf.Tensor:
    """The normalization's bias -mean_c / std_c rounded to the int32 grid the int8 file holds it on, step
    = input step (1) x weight step (k_c / 127, about 1e-4); float32 [C].  Unrounded, it is up to half a
    step off, which on CIFAR-10 moved 0.37% of the first range's roundings of the normalized pixels."""
    step = 1.0 / (255.0 * norm.std) / 127.0  # [C]
    return tf.round(-norm.mean / norm.std / step) * step


class IntegerNormalization(Normalization):
    """A --qat run's normalization of the pixels: the statistics of `pipeline.Normalization`, the map as its
    int8 file computes it (`normalization`), in training, validation and the simulated network's test, so
    that the simulated network reads the pixels the file reads.  A black pixel is `integer_bias`."""

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        return normalization(self, images)

    def black(self) -> tf.Tensor:
        return integer_bias(self)
