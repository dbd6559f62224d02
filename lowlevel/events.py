"""TensorBoard event files of a run, under checkpoints/RUN/tensorboard/ (view: tensorboard --logdir checkpoints).

Written from Python between compiled calls, never inside the training step:

  after every call of the step   train/loss (the epoch's running mean), train/lr
  at every epoch's end           epoch/train_loss, epoch/train_accuracy, epoch/val_loss,
                                 epoch/val_accuracy, epoch/images_per_s;
                                 grad_norm/<layer>: the norm of the loss's gradient with respect
                                 to each convolution's kernel, on the epoch's first training batch,
                                 in inference mode (the batch norms use their moving statistics, so
                                 nothing of the run changes);
                                 histograms kernel/<layer>, gamma/<layer>, beta/<layer>,
                                 moving_mean/<layer>, moving_variance/<layer>, kernel/classifier

<layer> is the name `MobileNetV1.conv_layers()` gives ("stem", "blocks[3].pointwise", ...).
The step of every event is the training step, so a resumed run continues the same curves.

The events are written with TensorFlow's own `tf.summary.write` in the formats TensorBoard's
scalar and histogram dashboards read (a float32 scalar; a [buckets, 3] tensor of left edge,
right edge and count), so training needs no TensorBoard package: it is only the viewer,
`pip install -e ".[tensorboard]"`.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from lowlevel._tf import tf

from lowlevel.layers import Dense
from lowlevel.runs import WriteError


class Events:
    """The event writer of one run; every method does nothing when disabled."""

    def __init__(self, run: Path, enabled: bool = True):
        self.folder = Path(run) / "tensorboard"
        self.writer = None
        if enabled:
            try:
                self.writer = tf.summary.create_file_writer(str(self.folder))
            except (OSError, tf.errors.OpError) as e:
                raise WriteError(self.folder, e) from None

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.writer is None:
            return
        with self._writing():
            scalar("train/loss", loss, step)
            scalar("train/lr", lr, step)

    def epoch(self, step: int, row: dict, model, grad_norms: dict[str, float]) -> None:
        if self.writer is None:
            return
        with self._writing():
            for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_s"):
                scalar(f"epoch/{key}", row[key], step)
            for name, value in grad_norms.items():
                scalar(f"grad_norm/{name}", value, step)
            for name, conv, bn in model.conv_layers():
                histogram(f"kernel/{name}", conv.kernel, step)
                for what in ("gamma", "beta", "moving_mean", "moving_variance") if bn is not None else ():
                    histogram(f"{what}/{name}", getattr(bn, what), step)
            for name, layer, _ in model.layer_table():
                if isinstance(layer, Dense):
                    histogram(f"kernel/{name}", layer.kernel, step)
        self.flush()

    def flush(self) -> None:
        if self.writer is not None:
            with self._writing():
                self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    @contextlib.contextmanager
    def _writing(self):
        """Write with this run's writer; a failed write (a full disk) is a WriteError naming the folder."""
        try:
            with self.writer.as_default():
                yield
        except (OSError, tf.errors.OpError) as e:
            raise WriteError(self.folder, e) from None


def _metadata(plugin: str) -> bytes:
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
        plugin_name=plugin)).SerializeToString()


_SCALARS, _HISTOGRAMS = _metadata("scalars"), _metadata("histograms")
BUCKETS = 30


def scalar(tag: str, value, step: int) -> None:
    """A point of TensorBoard's scalar dashboard: a float32 scalar tensor."""
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=_SCALARS)


def histogram(tag: str, values, step: int) -> None:
    """A histogram for TensorBoard's histogram dashboard: BUCKETS equal-width buckets over the values'
    range, as a float64 [BUCKETS, 3] tensor of (left edge, right edge, count)."""
    x = tf.reshape(tf.cast(values, tf.float64), [-1])
    low, high = tf.reduce_min(x), tf.reduce_max(x)
    high = tf.where(high > low, high, low + 1.0)  # all values equal: one unit-wide range
    counts = tf.cast(tf.histogram_fixed_width(x, [low, high], nbins=BUCKETS), tf.float64)
    edges = tf.linspace(low, high, BUCKETS + 1)
    tf.summary.write(tag, tf.stack([edges[:-1], edges[1:], counts], axis=1), step=step, metadata=_HISTOGRAMS)
