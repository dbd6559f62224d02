"""One training step and one evaluation, compiled: the loss, the `Trainer` that owns the model, its
optimizer and everything a checkpoint holds, and the evaluator.

One compiled function (`Trainer.train_steps`) runs `steps_per_call` steps: gather the batch
from the uint8 images on the device, augment it, forward, backward, update.  The step is
written once and run through `strategy.run`: on one device (TensorFlow's default strategy)
the cross-replica slicing and sums are the identity, on several (lowlevel/distribute.py) each
replica takes its slice and the gradients are summed.  Everything random is a function of
(seed, step), so a resumed run computes the very same weights as one that never stopped.
Nothing here prints or writes a file.
"""
from __future__ import annotations

import numpy as np

from lowlevel._tf import tf

from lowlevel import distribute, ema, layers, optim, pipeline, runs
from lowlevel.config import Config


def cross_entropy(logits, labels, smoothing: float = 0.0, partner=None, share=1.0) -> tf.Tensor:
    """Mean over the batch of  -sum_k q_k log softmax(logits)_k,  q = (1 - s) t + s / K,  with the target
    t = onehot(y), or with CutMix (pipeline.cutmix) t = share onehot(y) + (1 - share) onehot(y').

    logits [B, K] float, labels y [B] int, partner labels y' [B] int or None, share scalar -> scalar.
    """
    log_p = tf.nn.log_softmax(tf.cast(logits, tf.float32))  # [B, K]
    k = logits.shape[-1]
    t = tf.one_hot(labels, k)  # [B, K]
    if partner is not None:
        t = share * t + (1.0 - share) * tf.one_hot(partner, k)
    q = t * (1.0 - smoothing) + smoothing / k  # [B, K]
    return tf.reduce_mean(-tf.reduce_sum(q * log_p, axis=-1))


class Trainer(tf.Module):
    """The model, its optimizer and the compiled steps, plus what a checkpoint must hold."""

    def __init__(self, cfg: Config, train: pipeline.Batches, num_classes: int = 10, strategy=None):
        super().__init__(name="trainer")
        self.cfg, self.train = cfg, train
        self.strategy = strategy or tf.distribute.get_strategy()  # TensorFlow's default: one device
        self.replicas = distribute.replicas(self.strategy)
        with distribute.scope(self.strategy):  # with several replicas, a copy of every variable on each
            self._build(cfg, train, num_classes)

    def _build(self, cfg: Config, train: pipeline.Batches, num_classes: int) -> None:
        tf.random.set_seed(cfg.seed)  # the initial weights
        def build():
            return runs.build_model(cfg, num_classes, train.images.shape[1:], train.steps_per_epoch)

        self.model = build()
        if cfg.from_run:  # fine-tuning: another run's weights
            runs.start_from(self.model, cfg.from_run)
        for bn in self.model.submodules:
            if isinstance(bn, layers.BatchNorm):
                bn.sync = cfg.sync_bn  # only matters with several replicas
        # the weights' moving average (--ema), or None; built after the model, so the model's initial
        # weights are those of a run without it
        self.average = ema.Average(self.model, cfg.ema, build) if cfg.ema else None
        spe = train.steps_per_epoch
        total, warmup = cfg.epochs * spe, int(cfg.warmup_epochs * spe)
        schedule = {"cosine": lambda: optim.WarmupCosine(cfg.lr, total, warmup),
                    "linear": lambda: optim.WarmupLinear(cfg.lr, total, warmup),
                    "step": lambda: optim.StepDecay(cfg.lr, [total // 2, total * 3 // 4])}[cfg.schedule]()
        params = self.model.trainable_variables
        mask = optim.decay_mask(self.model, [k for k in cfg.decay_on.split(",") if k], cfg.decay_gates)
        if cfg.optimizer == "sgd":
            self.optimizer = optim.SGD(params, schedule, cfg.momentum, True, cfg.weight_decay, mask)
        else:
            self.optimizer = optim.Adam(params, schedule, beta_1=cfg.momentum, weight_decay=cfg.weight_decay,
                                        decay_mask=mask)
        # sums over the current epoch, checkpointed so that a resume mid-epoch reports the same epoch
        self.epoch_loss = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.epoch_correct = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch_seen = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_val_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
        self.elapsed = tf.Variable(0.0, dtype=tf.float64, trainable=False)  # seconds of training and eval
        self.seed = tf.Variable(cfg.seed, dtype=tf.int64, trainable=False)
        self.loss_scale = optim.LossScale() if cfg.precision == "float16" else None

    @property
    def evaluated(self) -> tf.Module:
        """The weights validation, the best checkpoint and the test measure: the average's, if any."""
        return self.average.model if self.average is not None else self.model

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def epoch_means(self) -> tuple[float, float, int]:
        """(mean training loss, accuracy, images) of the epoch so far."""
        seen = int(self.epoch_seen.numpy())
        return (float(self.epoch_loss.numpy()) / max(seen, 1), int(self.epoch_correct.numpy()) / max(seen, 1),
                seen)

    def reset_epoch(self) -> None:
        for v in (self.epoch_loss, self.epoch_correct, self.epoch_seen):
            v.assign(tf.zeros_like(v))

    def checkpoint(self, normalization: bool = True) -> tf.train.Checkpoint:
        """What a checkpoint holds; normalization=False for restoring runs from before it was saved."""
        extra = {"loss_scale": self.loss_scale} if self.loss_scale is not None else {}
        if self.average is not None:
            extra["averaged"] = self.average.model  # restored alone as a model by runs.load
        if normalization:
            extra["normalization"] = self.train.norm
        return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, epoch_loss=self.epoch_loss,
                                   epoch_correct=self.epoch_correct, epoch_seen=self.epoch_seen,
                                   best_val_accuracy=self.best_val_accuracy, elapsed=self.elapsed, seed=self.seed,
                                   **extra)

    def _step(self, order, step) -> tf.Tensor:
        """One training step (on one replica, in strategy.run: see lowlevel/distribute.py, where with one
        device the slicing and the sums are the identity): this replica's slice of the global batch, the
        global mean loss's gradients all-reduced, the same update everywhere.  Returns the learning rate."""
        x, y, partner, kept = self.train.mixed_batch(order, step)  # the global batch; CutMix: partners, pixels kept
        x, y, partner = distribute.local_slice(x, y, partner)  # [B/R, H, W, C], [B/R], [B/R]
        params = self.model.trainable_variables
        with tf.GradientTape() as tape:  # dropout's masks: slices of the global batch's (layers.dropout)
            logits = self.model(x, training=True, seed=pipeline.dropout_key(self.cfg.seed, step))  # [B/R, K]
            loss = cross_entropy(logits, y, self.cfg.label_smoothing, partner, kept)  # the slice's mean
            share = loss / self.replicas  # summed over the replicas: the global batch's mean
            scaled = share * self.loss_scale.scale if self.loss_scale is not None else share
        grads = distribute.all_reduce_sum(tape.gradient(scaled, params))
        if self.loss_scale is not None:  # float16: drop the update if the scaled gradients overflowed
            grads, finite = self.loss_scale.unscale(grads)
            lr = tf.cond(finite, lambda: self.optimizer.apply(grads, params), self.optimizer.skip)
        else:
            lr = self.optimizer.apply(grads, params)
        if self.average is not None:
            self.average.update(self.model, step)
        b = tf.cast(tf.shape(y)[0], tf.float64)
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, -1, tf.int32) == y, tf.float64))
        loss_sum, correct, seen = distribute.all_reduce_sum([tf.cast(loss, tf.float64) * b, correct, b])
        self.epoch_loss.assign_add(loss_sum)
        self.epoch_correct.assign_add(tf.cast(correct, tf.int64))  # whole numbers, exact in float64
        self.epoch_seen.assign_add(tf.cast(seen, tf.int64))
        return lr

    @tf.function(autograph=False)
    def train_steps(self, order, n) -> tf.Tensor:
        """n training steps on the epoch whose image order is `order`; returns the last learning rate.
        The loop is a tf.while_loop written out, and AutoGraph is off: the graph is the code as written."""
        start = self.optimizer.iterations.read_value()

        def body(i, lr):
            step = start + tf.cast(i, tf.int64)  # not re-read: under a strategy the update is cross-replica
            lr = self.strategy.experimental_local_results(self.strategy.run(self._step, args=(order, step)))[0]
            return i + 1, lr

        return tf.while_loop(lambda i, lr: i < n, body, [tf.constant(0), tf.constant(0.0)])[1]

    def all_finite(self) -> bool:
        """Whether every floating-point variable (weights, moving statistics, optimizer slots) is finite.
        Checked in numpy, one read per variable: a compiled check would take longer to trace than to run."""
        averaged = list(self.average.variables) if self.average is not None else []
        state = [v for v in list(self.model.variables) + list(self.optimizer.variables) + averaged
                 if v.dtype.is_floating]
        return all(np.isfinite(v.numpy()).all() for v in state)

    @tf.function(autograph=False)
    def grad_norms(self, order, step) -> list[tf.Tensor]:
        """The norm of the loss's gradient with respect to each convolution's kernel, on training batch
        `step`, in inference mode (moving statistics used, none updated): for TensorBoard."""
        x, y = self.train.train_batch(order, step)
        kernels = [conv.kernel for _, conv, _ in self.model.conv_layers()]
        with tf.GradientTape() as tape:
            loss = cross_entropy(self.model(x, training=False), y, self.cfg.label_smoothing)
        return [tf.norm(g) for g in tape.gradient(loss, kernels)]


SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # flip-shift's moves (dy, dx): one pixel up, down, left, right


def shifted(x: tf.Tensor, dy: int, dx: int, fill: tf.Tensor) -> tf.Tensor:
    """x [B, H, W, C] moved by one pixel: out[:, i, j] = x[:, i + dy, j + dx] where that is inside the image,
    fill [C] where it is not (the row or column moved in)."""
    h, w = x.shape[1], x.shape[2]
    rolled = tf.roll(x, shift=[-dy, -dx], axis=[1, 2])  # rolled[:, i, j] = x[:, (i + dy) % H, (j + dx) % W]
    i, j = tf.range(h)[:, None] + dy, tf.range(w)[None, :] + dx
    inside = (i >= 0) & (i < h) & (j >= 0) & (j < w)  # [H, W]
    return tf.where(inside[None, :, :, None], rolled, tf.cast(fill, x.dtype))


def log_probabilities(model, x, tta: str = "none", fill: tf.Tensor | None = None) -> tf.Tensor:
    """log p [B, K] for images x [B, H, W, C], in inference mode (batch norms folded), p the mean of
    softmax(f(v)) over the views v of x that `tta` names:

        tta "none":        x
        tta "flip":        x and mirror(x),   mirror(x)[:, i, j] = x[:, i, W-1-j]
        tta "flip-shift":  those two, and each moved by one pixel up, down, left and right (`shifted`,
                           `SHIFTS`; the pixels moved in are `fill` [C], the normalized black that
                           training's crops pad with, `Normalization.black`): 10 views

    (the mean taken in log space: log p = logsumexp over views of log_softmax(f(v)) - log(views)).
    """
    if tta == "flip-shift" and fill is None:
        raise ValueError("tta flip-shift moves the images: give fill, e.g. Normalization.black().")
    views = [x]
    if tta in ("flip", "flip-shift"):
        views.append(tf.reverse(x, axis=[2]))
    if tta == "flip-shift":
        views += [shifted(v, dy, dx, fill) for v in views for dy, dx in SHIFTS]
    log_p = [tf.nn.log_softmax(tf.cast(model.inference(v), tf.float32)) for v in views]
    if len(log_p) == 1:
        return log_p[0]
    return tf.reduce_logsumexp(tf.stack(log_p), axis=0) - np.log(len(log_p)).astype(np.float32)


def evaluator(model, norm: pipeline.Normalization, tta: str = "none", batch_size: int = 500):
    """A function (uint8 images [N, H, W, C], labels [N]) -> (mean loss, accuracy, predictions int32 [N])
    over every image once, normalized by `norm`, `batch_size` at a time (the last batch partial).  The
    loss is the mean of -log p_y (`log_probabilities`; with tta "none", the cross-entropy).  Compiled
    once for any N, so validation and the final test share one graph."""
    spec = [tf.TensorSpec([None, *model.input_shape], tf.uint8), tf.TensorSpec([None], tf.int32)]

    @tf.function(autograph=False, input_signature=spec)
    def run(images, labels):
        fill = norm.black()  # [C], read when called: the statistics as restored
        n = tf.shape(labels)[0]
        count = (n + batch_size - 1) // batch_size

        def body(k, loss_sum, preds):
            x, y = pipeline.eval_batch(images, labels, norm, k, batch_size)
            log_p = log_probabilities(model, x, tta, fill)  # [B, K]
            nll = -tf.gather(log_p, y, batch_dims=1)  # [B]
            return (k + 1, loss_sum + tf.reduce_sum(tf.cast(nll, tf.float64)),
                    preds.write(k, tf.argmax(log_p, -1, tf.int32)))

        start = [tf.constant(0), tf.constant(0.0, tf.float64), tf.TensorArray(tf.int32, size=count, infer_shape=False)]
        _, loss_sum, preds = tf.while_loop(lambda k, *_: k < count, body, start)
        return loss_sum / tf.cast(n, tf.float64), preds.concat()

    def evaluate(images, labels):
        labels = np.asarray(labels, np.int32)
        loss, preds = run(tf.convert_to_tensor(images, tf.uint8), labels)
        preds = preds.numpy()
        return float(loss), float(np.mean(preds == labels)), preds
    evaluate.compiled = run
    return evaluate
