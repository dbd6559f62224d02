"""Hand-written optimizers and learning-rate schedules.

An optimizer is a `tf.Module` shown its variables in the constructor, where it
creates one slot variable per variable and slot, so they exist before the first
traced step and a checkpoint restores them.  `apply(grads, variables)` then
takes the same variables in the same order (the optimizer does not hold them,
so they are checkpointed once, under the model).  `iterations` counts the updates applied; the
schedule turns it into the learning rate inside the graph.

Weight decay (which variables): by kind of parameter (`kinds(model)`): the kernels of
k x k convolutions ("conv", MobileNet's stem), of 1 x 1 ones ("pointwise"), of depthwise
ones ("depthwise") and of dense layers ("dense", MobileNet's classifier); batch-norm gamma
and beta ("norm") and biases ("bias").  Training's `--decay-on` names the kinds decayed.
Scales and shifts are never worth decaying (pulling them to zero only fights the
normalization); the MobileNet paper puts little or no decay on the depthwise filters,
which have few parameters.  `decays(variables)` is the mask of every kernel, the
optimizers' default; `decay_mask(model, kinds)` the mask of the kinds given, with or without
the squeeze-and-excitation gates' kernels (`--no-decay-gates`).

`skip()` counts an update without applying it: the float16 training step calls
it instead of `apply` when its gradients overflowed (`LossScale`), so that the
step counter, which also picks the batch and the learning rate, still advances.
"""
from __future__ import annotations

import math

from lowlevel._tf import tf


KINDS = ("conv", "pointwise", "depthwise", "dense", "norm", "bias")  # of parameter (module docstring)


def decays(variables) -> list[bool]:
    """The optimizers' default weight-decay mask: True for kernels, False for BN parameters and biases."""
    return [v.name.split(":")[0].endswith("kernel") for v in variables]


def kinds(model: tf.Module) -> dict[str, list[tf.Variable]]:
    """Each of KINDS -> the model's trainable variables of that kind, found from the layer that owns them."""
    from lowlevel import layers

    found = {kind: [] for kind in KINDS}
    for m in model.submodules:
        if isinstance(m, layers.Conv2D):
            found["conv" if m.kernel_size > 1 else "pointwise"].append(m.kernel)
        elif isinstance(m, layers.DepthwiseConv2D):
            found["depthwise"].append(m.kernel)
        elif isinstance(m, layers.Dense):
            found["dense"].append(m.kernel)
        elif isinstance(m, layers.BatchNorm):
            found["norm"] += [m.gamma, m.beta]
        found["bias"] += [b for b in [getattr(m, "bias", None)] if isinstance(b, tf.Variable)]
    listed = {v.ref() for vs in found.values() for v in vs}
    missing = [v.name for v in model.trainable_variables if v.ref() not in listed]
    if missing or len(listed) != len(model.trainable_variables):
        raise ValueError(f"parameters of no known kind: {', '.join(missing)}")
    return found


def gate_kernels(model: tf.Module) -> list[tf.Variable]:
    """The kernels of the model's squeeze-and-excitation gates (1 x 1: of kind "pointwise")."""
    from lowlevel.lightweight import SqueezeExcite

    gates = [m for m in model.submodules if isinstance(m, SqueezeExcite)]
    return [conv.kernel for se in gates for conv in (se.squeeze, se.excite)]


def decay_mask(model: tf.Module, decayed, gates: bool = True) -> list[bool]:
    """For each of model.trainable_variables, whether its kind is one of `decayed`; gates False: never
    the squeeze-and-excitation gates' kernels (`gate_kernels`)."""
    found = kinds(model)
    chosen = {v.ref() for kind in decayed for v in found[kind]}
    if not gates:
        chosen -= {v.ref() for v in gate_kernels(model)}
    return [v.ref() in chosen for v in model.trainable_variables]


# ---------------------------------------------------------------- schedules

class WarmupCosine:
    """Linear warmup from 0 to `peak` over `warmup` steps, then cosine decay to `final`:

        lr(t) = peak * (t + 1) / warmup                                      t < warmup
        lr(t) = final + (peak - final) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2
    """

    def __init__(self, peak: float, total: int, warmup: int = 0, final: float = 0.0):
        self.peak, self.total, self.warmup, self.final = peak, max(total, 1), warmup, final

    def __call__(self, step) -> tf.Tensor:
        t = tf.cast(step, tf.float32)
        warm = self.peak * (t + 1.0) / max(self.warmup, 1)
        progress = tf.clip_by_value((t - self.warmup) / max(self.total - self.warmup, 1), 0.0, 1.0)
        cosine = self.final + (self.peak - self.final) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(t < self.warmup, warm, cosine)


class WarmupLinear:
    """The one-cycle shape: linear warmup from 0 to `peak` over `warmup` steps, then linear decay to 0:

        lr(t) = peak * (t + 1) / warmup                                      t < warmup
        lr(t) = peak * (total - t) / (total - warmup)                        t >= warmup
    """

    def __init__(self, peak: float, total: int, warmup: int = 0):
        self.peak, self.total, self.warmup = peak, max(total, 1), warmup

    def __call__(self, step) -> tf.Tensor:
        t = tf.cast(step, tf.float32)
        warm = self.peak * (t + 1.0) / max(self.warmup, 1)
        down = self.peak * tf.clip_by_value((self.total - t) / max(self.total - self.warmup, 1), 0.0, 1.0)
        return tf.where(t < self.warmup, warm, down)


class StepDecay:
    """lr(t) = base * factor ** (number of boundaries <= t), e.g. 0.1 -> 0.01 -> 0.001."""

    def __init__(self, base: float, boundaries: list[int], factor: float = 0.1):
        self.base, self.boundaries, self.factor = base, list(boundaries), factor

    def __call__(self, step) -> tf.Tensor:
        passed = tf.reduce_sum(tf.cast(tf.cast(step, tf.int64) >= tf.constant(self.boundaries or [2**62],
                                                                               tf.int64), tf.float32))
        return self.base * tf.pow(self.factor, passed)


class Constant:
    def __init__(self, lr: float):
        self.lr = lr

    def __call__(self, step) -> tf.Tensor:
        return tf.constant(self.lr, tf.float32)


# ---------------------------------------------------------------- optimizers

class _Optimizer(tf.Module):
    """What SGD and Adam share: `iterations` and `skip`."""

    def skip(self) -> tf.Tensor:
        """Count a step whose update is dropped; returns its learning rate."""
        lr = self.schedule(self.iterations)
        self.iterations.assign_add(1)
        return lr


class SGD(_Optimizer):
    """SGD with momentum mu, Nesterov optional, and L2 weight decay lambda:

        g <- g + lambda * w                  (decayed variables only)
        b <- mu * b + g
        w <- w - lr * b                      plain momentum
        w <- w - lr * (g + mu * b)           Nesterov

    (PyTorch's form.  Keras keeps v = -lr * b instead; with a constant
    learning rate the two give the same weights.)
    """

    def __init__(self, variables, schedule, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, decay_mask: list[bool] | None = None, name: str = "sgd"):
        super().__init__(name=name)
        variables = list(variables)
        self.schedule, self.momentum, self.nesterov, self.weight_decay = schedule, momentum, nesterov, weight_decay
        self.decay_mask = decays(variables) if decay_mask is None else list(decay_mask)
        with self.name_scope:
            self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
            self.velocity = [tf.Variable(tf.zeros_like(v), trainable=False, name="velocity")
                             for v in variables]

    def apply(self, grads, variables) -> tf.Tensor:
        """One update of every variable from its gradient; returns the learning rate used."""
        lr = self.schedule(self.iterations)
        for w, g, b, decay in zip(variables, grads, self.velocity, self.decay_mask, strict=True):
            if decay and self.weight_decay:
                g = g + self.weight_decay * w
            b_new = self.momentum * b + g  # the new value used directly, not read back from the slot (one read
            b.assign(b_new)                 # fewer; suspected, never shown, of reordering under tf.distribute)
            w.assign_sub(lr * (g + self.momentum * b_new if self.nesterov else b_new))
        self.iterations.assign_add(1)
        return lr


class Adam(_Optimizer):
    """Adam (Kingma and Ba 2015) as Keras computes it, with decoupled weight decay (AdamW):

        w <- w - lr * lambda * w             (decayed variables only; Loshchilov and Hutter 2019)
        m <- b1 * m + (1 - b1) * g
        v <- b2 * v + (1 - b2) * g^2
        w <- w - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

    with t the 1-based update count.
    """

    def __init__(self, variables, schedule, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 weight_decay: float = 0.0, decay_mask: list[bool] | None = None, name: str = "adam"):
        super().__init__(name=name)
        variables = list(variables)
        self.schedule, self.beta_1, self.beta_2, self.epsilon = schedule, beta_1, beta_2, epsilon
        self.weight_decay = weight_decay
        self.decay_mask = decays(variables) if decay_mask is None else list(decay_mask)
        with self.name_scope:
            self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
            self.m = [tf.Variable(tf.zeros_like(v), trainable=False, name="m") for v in variables]
            self.v = [tf.Variable(tf.zeros_like(v), trainable=False, name="v") for v in variables]

    def apply(self, grads, variables) -> tf.Tensor:
        """One update of every variable from its gradient; returns the learning rate used."""
        lr = self.schedule(self.iterations)
        t = tf.cast(self.iterations + 1, tf.float32)
        step_size = lr * tf.sqrt(1.0 - self.beta_2 ** t) / (1.0 - self.beta_1 ** t)
        for w, g, m, v, decay in zip(variables, grads, self.m, self.v, self.decay_mask, strict=True):
            if decay and self.weight_decay:
                w.assign_sub(lr * self.weight_decay * w)
            m_new = self.beta_1 * m + (1.0 - self.beta_1) * g  # values, not read back (see SGD.apply)
            v_new = self.beta_2 * v + (1.0 - self.beta_2) * tf.square(g)
            m.assign(m_new)
            v.assign(v_new)
            w.assign_sub(step_size * m_new / (tf.sqrt(v_new) + self.epsilon))
        self.iterations.assign_add(1)
        return lr


class LossScale(tf.Module):
    """Dynamic loss scaling for float16 training (Micikevicius et al. 2018, "Mixed Precision Training").

    float16 gradients smaller than 6e-8 flush to zero.  The step multiplies the
    loss by S before the backward pass, so every gradient is S times larger, and
    divides the float32 gradients by S afterwards:

        grads = gradient(S * loss) / S
        all finite:  apply; after `period` finite steps in a row, S <- 2 S
        otherwise:   skip the update (overflow: S was too big);  S <- max(S / 2, 1)

    S starts at 2^15 and `period` is 2000, Keras' LossScaleOptimizer defaults.
    bfloat16 has float32's exponent range and needs none of this.
    """

    def __init__(self, initial: float = 2.0 ** 15, period: int = 2000, name: str = "loss_scale"):
        super().__init__(name=name)
        self.period = period
        with self.name_scope:
            self.scale = tf.Variable(initial, dtype=tf.float32, trainable=False, name="scale")
            self.finite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="finite_steps")

    def unscale(self, grads) -> tuple[list[tf.Tensor], tf.Tensor]:
        """(grads / S, whether all are finite), and S updated for the next step."""
        grads = [g / self.scale for g in grads]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        count = tf.where(finite, self.finite_steps + 1, 0)
        grow = count >= self.period
        self.scale.assign(tf.where(finite, tf.where(grow, 2.0 * self.scale, self.scale),
                                   tf.maximum(self.scale / 2.0, 1.0)))
        self.finite_steps.assign(tf.where(grow, tf.constant(0, tf.int64), count))
        return grads, finite
