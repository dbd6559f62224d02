"""An exponential moving average of the weights (`--ema DECAY`): a shadow copy of the model.

After every training step t = 0, 1, 2, ... (the optimizer's step count before the update),
each shadow variable s follows its model variable w:

    d_t = min(decay, (1 + t) / (10 + t))
    s  <- d_t * s + (1 - d_t) * w

The warm-up of d_t (TensorFlow's `ExponentialMovingAverage` with `num_updates`) lets the
average forget the random initial weights within the first few hundred steps; later it is
`decay`, an average over about 1 / (1 - decay) steps.  The shadow starts equal to the model.

Every variable of the model is averaged, the batch norms' moving statistics too, so the
averaged weights are always used with averaged statistics: the pair a network of those
weights would have measured, rather than the live statistics of the trained weights.

The shadow is a second instance of the same network (`build()` returns it), so it evaluates,
folds its batch norms and exports like the model itself.  When a run has one (`--ema`: 0.999 unless
`--ema 0`), its validation, best checkpoint, final test, `evaluate` and `export` use the shadow ("averaged"
weights); `evaluate --weights trained` measures the trained ones of the same checkpoint.
A checkpoint holds the shadow under the key `averaged`, so a resume continues it bitwise.
"""
from __future__ import annotations

from lowlevel._tf import tf


class Average(tf.Module):
    """The moving average of `model`'s variables, kept in `self.model`, a network built like it."""

    def __init__(self, model: tf.Module, decay: float, build):
        super().__init__(name="average")
        self.decay = decay
        self.model = build()  # the same network: its variables, in the same order, are the shadows
        for s, w in zip(self.model.variables, model.variables, strict=True):
            if s.shape != w.shape:
                raise ValueError(f"the average's {s.name} {s.shape} does not match {w.name} {w.shape}")
            s.assign(w)

    def rate(self, step) -> tf.Tensor:
        """d_t for step t (int): min(decay, (1 + t) / (10 + t))."""
        t = tf.cast(step, tf.float32)
        return tf.minimum(self.decay, (1.0 + t) / (10.0 + t))

    def update(self, model: tf.Module, step) -> None:
        """s <- d_t s + (1 - d_t) w for every variable of `model` (the one averaged), after the update of
        step t.  (The model is an argument, not an attribute, so that a checkpoint of the average holds
        the shadows alone.)"""
        d = self.rate(step)
        for s, w in zip(self.model.variables, model.variables, strict=True):
            s.assign(d * s + (1.0 - d) * w)
