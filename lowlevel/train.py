"""`python -m lowlevel.train`: train a network (MobileNet v1 on CIFAR-10 by default) with a hand-written loop.

    python -m lowlevel.train --data cifar-10-batches-py --run-name first
    python -m lowlevel.train --run-name first --resume          # after Ctrl-C, a crash, a reboot
    python -m lowlevel.train --model vgg-blocks-separable --run-name vgg   # any network of lowlevel.nets

The loop knows no network by name: `runs.build_model` builds the one config.json names (from
the registry in lowlevel/nets/), for the data set's image shape and classes.

One compiled function runs `steps_per_call` training steps: gather the batch
from the uint8 images on the device, augment it, forward, backward, update.
Everything random is a function of (seed, step), and the checkpoint holds the
weights, the moving statistics, the optimizer's slots and its step count, so a
resumed run computes the very same weights as one that never stopped.

The run folder (checkpoints/<run-name>/, see lowlevel/runs.py) holds
config.json, history.csv (a row per epoch), ckpt-<step> (the last few),
best/ckpt-<step> (best validation accuracy) and learning_curves.png.  One
process at a time may train a run (a lock), every file is written whole or not
at all, a checkpoint is verified before it is restored, and every parameter is
checked to be finite before it is saved.
"""
from __future__ import annotations

import dataclasses
import shlex
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from lowlevel._tf import tf

from lowlevel import datasets, distribute, history, kernels, layers, optim, pipeline, runs
from lowlevel.events import Events
from lowlevel.config import Config, ConfigError
from lowlevel.runs import RunError, WriteError

# ---------------------------------------------------------------- the math of a step

def cross_entropy(logits, labels, smoothing: float = 0.0) -> tf.Tensor:
    """Mean over the batch of  -sum_k q_k log softmax(logits)_k,  q = (1 - s) onehot(y) + s / K.

    logits [B, K] float, labels [B] int -> scalar.
    """
    log_p = tf.nn.log_softmax(tf.cast(logits, tf.float32))  # [B, K]
    k = logits.shape[-1]
    q = tf.one_hot(labels, k) * (1.0 - smoothing) + smoothing / k  # [B, K]
    return tf.reduce_mean(-tf.reduce_sum(q * log_p, axis=-1))


class Trainer(tf.Module):
    """The model, its optimizer and the compiled steps, plus what a checkpoint must hold."""

    def __init__(self, cfg: Config, train: pipeline.Batches, num_classes: int = 10, strategy=None):
        super().__init__(name="trainer")
        self.cfg, self.train = cfg, train
        self.strategy = strategy or tf.distribute.get_strategy()  # TensorFlow's default: one device
        self.replicas = distribute.replicas(self.strategy)
        if self.replicas > 1:  # every variable, one copy per replica (lowlevel/distribute.py)
            with distribute.scope(self.strategy):
                self._build(cfg, train, num_classes)
        else:
            self._build(cfg, train, num_classes)

    def _build(self, cfg: Config, train: pipeline.Batches, num_classes: int) -> None:
        tf.random.set_seed(cfg.seed)  # the initial weights
        self.model = runs.build_model(cfg, num_classes, input_shape=train.images.shape[1:])
        for bn in self.model.submodules:
            if isinstance(bn, layers.BatchNorm):
                bn.sync = cfg.sync_bn  # only matters with several replicas
        spe = train.steps_per_epoch
        total, warmup = cfg.epochs * spe, int(cfg.warmup_epochs * spe)
        if cfg.schedule == "cosine":
            schedule = optim.WarmupCosine(cfg.lr, total, warmup)
        else:
            schedule = optim.StepDecay(cfg.lr, [total // 2, total * 3 // 4])
        params = self.model.trainable_variables
        if cfg.optimizer == "sgd":
            self.optimizer = optim.SGD(params, schedule, cfg.momentum, True, cfg.weight_decay)
        else:
            self.optimizer = optim.Adam(params, schedule, beta_1=cfg.momentum, weight_decay=cfg.weight_decay)
        # sums over the current epoch, checkpointed so that a resume mid-epoch reports the same epoch
        self.epoch_loss = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.epoch_correct = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch_seen = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_val_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
        self.elapsed = tf.Variable(0.0, dtype=tf.float64, trainable=False)  # seconds of training and eval
        self.seed = tf.Variable(cfg.seed, dtype=tf.int64, trainable=False)
        self.loss_scale = optim.LossScale() if cfg.precision == "float16" else None

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def checkpoint(self, normalization: bool = True) -> tf.train.Checkpoint:
        """What a checkpoint holds; normalization=False for restoring runs from before it was saved."""
        extra = {"loss_scale": self.loss_scale} if self.loss_scale is not None else {}
        if normalization:
            extra["normalization"] = self.train.norm
        return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, epoch_loss=self.epoch_loss,
                                   epoch_correct=self.epoch_correct, epoch_seen=self.epoch_seen,
                                   best_val_accuracy=self.best_val_accuracy, elapsed=self.elapsed, seed=self.seed,
                                   **extra)

    def _replica_step(self, order, step) -> tf.Tensor:
        """One training step on one replica, in strategy.run (see lowlevel/distribute.py): its slice of
        the global batch, the global mean loss's gradients all-reduced, the same update everywhere."""
        x, y = distribute.local_slice(*self.train.train_batch(order, step))  # [B/R, H, W, C], [B/R]
        params = self.model.trainable_variables
        with tf.GradientTape() as tape:  # dropout's masks: slices of the global batch's (layers.dropout)
            logits = self.model(x, training=True, seed=pipeline.dropout_key(self.cfg.seed, step))  # [B/R, K]
            loss = cross_entropy(logits, y, self.cfg.label_smoothing)  # the slice's mean
            share = loss / self.replicas  # sum over replicas: the global batch's mean
        grads = distribute.all_reduce_sum(tape.gradient(share, params))
        lr = self.optimizer.apply(grads, params)
        b = tf.cast(tf.shape(y)[0], tf.float64)
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, -1, tf.int32) == y, tf.float64))
        loss_sum, correct, seen = distribute.all_reduce_sum([tf.cast(loss, tf.float64) * b, correct, b])  # one dtype
        self.epoch_loss.assign_add(loss_sum)
        self.epoch_correct.assign_add(tf.cast(correct, tf.int64))  # whole numbers, exact in float64
        self.epoch_seen.assign_add(tf.cast(seen, tf.int64))
        return lr

    @tf.function
    def all_finite(self) -> tf.Tensor:
        """Whether every floating-point variable (weights, moving statistics, optimizer slots) is finite."""
        state = [v for v in self.model.variables + self.optimizer.variables if v.dtype.is_floating]
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in state])

    @tf.function
    def grad_norms(self, order, step) -> list[tf.Tensor]:
        """The norm of the loss's gradient with respect to each convolution's kernel, on training batch
        `step`, in inference mode (moving statistics used, none updated): for TensorBoard."""
        x, y = self.train.train_batch(order, step)
        kernels = [conv.kernel for _, conv, _ in self.model.conv_layers()]
        with tf.GradientTape() as tape:
            loss = cross_entropy(self.model(x, training=False), y, self.cfg.label_smoothing)
        return [tf.norm(g) for g in tape.gradient(loss, kernels)]

    @tf.function
    def train_steps(self, order, n) -> tf.Tensor:
        """n training steps on the epoch whose image order is `order`; returns the last learning rate."""
        lr = tf.constant(0.0)
        if self.replicas > 1:
            start = self.optimizer.iterations.read_value()
            for i in tf.range(n):
                step = start + tf.cast(i, tf.int64)  # not re-read: the update is applied across replicas
                lr = self.strategy.experimental_local_results(
                    self.strategy.run(self._replica_step, args=(order, step)))[0]
            return lr
        for _ in tf.range(n):
            step = self.optimizer.iterations
            x, y = self.train.train_batch(order, step)  # [B, H, W, C] float32, [B] int32
            params = self.model.trainable_variables
            with tf.GradientTape() as tape:
                logits = self.model(x, training=True, seed=pipeline.dropout_key(self.cfg.seed, step))  # [B, K]
                loss = cross_entropy(logits, y, self.cfg.label_smoothing)
                scaled = loss * self.loss_scale.scale if self.loss_scale is not None else loss
            grads = tape.gradient(scaled, params)
            if self.loss_scale is not None:  # float16: drop the update if the scaled gradients overflowed
                grads, finite = self.loss_scale.unscale(grads)
                lr = tf.cond(finite, lambda: self.optimizer.apply(grads, params), self.optimizer.skip)
            else:
                lr = self.optimizer.apply(grads, params)
            b = tf.shape(y, out_type=tf.int64)[0]
            self.epoch_loss.assign_add(tf.cast(loss, tf.float64) * tf.cast(b, tf.float64))
            self.epoch_correct.assign_add(tf.reduce_sum(tf.cast(tf.argmax(logits, -1, tf.int32) == y, tf.int64)))
            self.epoch_seen.assign_add(b)
        return lr


def evaluator(model, batches: pipeline.Batches):
    """A compiled function returning (mean loss, accuracy, predictions int32 [N]) over every image once."""

    @tf.function
    def run():
        loss_sum = tf.constant(0.0, tf.float64)
        preds = tf.TensorArray(tf.int32, size=batches.num_eval_batches, infer_shape=False)
        for k in tf.range(batches.num_eval_batches):
            x, y = batches.eval_batch(k)
            logits = model.inference(x)  # = model(x, training=False), batch norms folded
            b = tf.cast(tf.shape(y)[0], tf.float64)
            loss_sum += tf.cast(cross_entropy(logits, y), tf.float64) * b
            preds = preds.write(k, tf.argmax(logits, -1, tf.int32))
        return loss_sum / batches.n, preds.concat()

    def evaluate():
        loss, preds = run()
        preds = preds.numpy()
        return float(loss), float(np.mean(preds == batches.labels.numpy())), preds
    return evaluate


# ---------------------------------------------------------------- the run folder

def find_run(cfg: Config) -> Path:
    """The run folder: --run-name in --checkpoint-dir, or with --resume and no name the latest run."""
    root = Path(cfg.checkpoint_dir)
    if cfg.run_name:
        return root / cfg.run_name
    if cfg.resume:
        found = sorted(root.glob("*/config.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise RunError(f"{root}: holds no run to resume; give --run-name, or train without --resume.")
        return found[-1].parent
    return root / datetime.now().strftime("run-%Y%m%d-%H%M%S")


def run_config(cfg: Config, explicit: set[str], chief: bool = True) -> tuple[Config, Path]:
    """The run's folder and config: this command's, or with --resume the saved one continued by it.
    Reads only; nothing is created before the data and every setting have been checked.
    (A multi-worker run's other workers read the folder the chief holds and writes.)"""
    run = find_run(cfg)
    saved = run / "config.json"
    if chief:
        runs.refuse_if_locked(run)  # the first thing to say if another process is training it
    if cfg.resume:
        if not saved.is_file():
            raise RunError(f"{run}: is not a run folder (no config.json); check --run-name and --checkpoint-dir.")
        cfg = Config.from_json(saved).resumed_with(cfg, explicit)
    elif saved.exists() and chief:
        raise RunError(f"{run}: already holds a run; add --resume to continue it, or choose another --run-name.")
    else:
        cfg = cfg.with_defaults(explicit)
    return dataclasses.replace(cfg, run_name=run.name).check(), run


def open_run(cfg: Config, run: Path):
    """Create the run folder if new, take its lock (see runs.lock), write config.json if new.
    Returns the lock file, held until it is closed."""
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"{run}: cannot be created ({e.strerror}); choose a writable --checkpoint-dir.") from None
    held = runs.lock(run)
    try:
        if not cfg.resume:
            if (run / "config.json").exists():  # another process made it between our check and the lock
                raise RunError(f"{run}: already holds a run; add --resume to continue it, or choose another "
                               f"--run-name.")
            runs.write_text(run / "config.json", cfg.to_json())
    except BaseException:
        held.close()
        raise
    return held


def read_history(run: Path, epochs_done: int) -> list[dict]:
    """history.csv's rows for the epochs a checkpoint covers (a crash may have left one more).

    A damaged file is moved into run/set-aside-<time>/ (not deleted), and its good rows before the
    damage are kept, with a note: the run goes on, and the rows can still be recovered by hand.
    """
    path = run / "history.csv"
    try:
        rows = history.read(path)
    except history.DamagedHistory as e:
        rows = e.rows
        aside = run / time.strftime("set-aside-%Y%m%d-%H%M%S")
        try:
            aside.mkdir(exist_ok=True)
            shutil.move(str(path), aside / path.name)
        except OSError as err:
            raise WriteError(aside / path.name, err) from None
        print(f"note: {e}; it was moved to {aside / path.name} and its {len(rows)} good rows before the damage "
              f"kept", flush=True)
    return [r for r in rows if r["epoch"] <= epochs_done]


def command(run: Path, *extra: str) -> str:
    """The command that continues this run, ready to paste into a shell."""
    words = ["python", "-m", "lowlevel.train", "--checkpoint-dir", str(run.parent), "--run-name", run.name,
             "--resume", *extra]
    return " ".join(shlex.quote(w) for w in words)


# ---------------------------------------------------------------- progress

def duration(seconds: float) -> str:
    """4 h 05 min, 12 min, 40 s."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


class Clock:
    """This process's training speed, timed from the end of its first call (which traces the step)."""

    ESTIMATE_AFTER = 3  # calls timed before the run's length is estimated

    def __init__(self):
        self.start = self.first_step = None
        self.calls = 0

    def tick(self, step: int) -> None:
        if self.start is None:
            self.start, self.first_step = time.perf_counter(), step
        else:
            self.calls += 1

    def seconds_per_step(self, step: int) -> float | None:
        if self.start is None or step <= self.first_step:
            return None
        return (time.perf_counter() - self.start) / (step - self.first_step)

    def left(self, step: int, until: int) -> str:
        per = self.seconds_per_step(step)
        return "?" if per is None else duration(per * (until - step))


def _bar(epoch, epochs, done, total, loss, acc, rate, elapsed, epoch_left, run_left):
    width = 30
    filled = width * done // total
    return (f"\repoch {epoch}/{epochs} [{'=' * filled}{'.' * (width - filled)}] {done}/{total} "
            f"loss {loss:.3f} acc {100 * acc:.1f}% {rate:.0f} img/s  {duration(elapsed)} elapsed, "
            f"{epoch_left} left in the epoch, {run_left} in the run ")


# ---------------------------------------------------------------- the loop

class _Stop:
    """Remembers a SIGINT or SIGTERM so the loop can save before it exits."""

    def __init__(self):
        self.signal = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this call",
              file=sys.stderr, flush=True)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class Loop:
    """The epochs of one run: training calls, end-of-epoch bookkeeping, checkpoints.

    It reads the run folder `run` and writes into `out`: the same folder, except on the workers of
    a multi-worker run after the first, which write into a temporary one (lowlevel/distribute.py).
    """

    def __init__(self, cfg: Config, run: Path, data: datasets.Dataset, strategy=None, out: Path | None = None):
        train_x, train_y, val_x, val_y = pipeline.split_validation(data.train_images, data.train_labels,
                                                                   cfg.val_size)
        # the training images' statistics; a resumed run restores the ones it started with
        norm = pipeline.Normalization.of(train_x)
        self.train = pipeline.Batches(train_x, train_y, norm, cfg.batch_size, cfg.seed, augment=cfg.augment,
                                      cutout=cfg.cutout)
        self.cfg, self.run, self.data = cfg, run, data
        self.out = out or run
        self.chief = self.out == run
        strategy = strategy or tf.distribute.get_strategy()
        replicas = distribute.replicas(strategy)
        if cfg.batch_size % replicas:
            raise ConfigError(f"--batch-size {cfg.batch_size} does not divide among the {replicas} replicas of "
                              f"--strategy {cfg.strategy}; give a multiple of {replicas}.")
        self.trainer = Trainer(cfg, self.train, num_classes=len(data.label_names), strategy=strategy)
        if cfg.resume:
            self.restore()
        ckpt = self.trainer.checkpoint()
        self.manager = tf.train.CheckpointManager(ckpt, self.out, max_to_keep=cfg.keep, checkpoint_name="ckpt")
        self.best = tf.train.CheckpointManager(ckpt, self.out / "best", max_to_keep=1, checkpoint_name="ckpt")
        self.spe = self.train.steps_per_epoch
        self.total = cfg.epochs * self.spe
        self.limit = min(self.total, cfg.max_steps) if cfg.max_steps else self.total
        self.history_path = self.out / "history.csv"
        self.history = read_history(run, self.trainer.step // self.spe)
        history.write(self.history_path, self.history)
        val = pipeline.Batches(val_x, val_y, norm, 500)
        self.evaluate_val = evaluator(self.trainer.model, val) if len(val_x) else None
        self.bar = cfg.progress == "bar" or (cfg.progress == "auto" and sys.stderr.isatty())
        self.clock = Clock()
        self.events = Events(run, cfg.tensorboard and self.chief)
        print(f"run {run}: {self.train.n} training and {len(val_x)} validation images, {self.spe} steps per "
              f"epoch, {self.trainer.step} of {self.total} steps done", flush=True)
        self.kernels = kernels.describe()
        print(kernels.line(self.kernels), flush=True)
        if cfg.precision == "float16" and not tf.config.list_physical_devices("GPU"):
            print("note: float16 is for GPUs; on a CPU its convolutions fall back to slow kernels "
                  "(--precision bfloat16 is the CPU's 16-bit type)", flush=True)

    def restore(self) -> None:
        """Continue from --from-checkpoint, or from the latest checkpoint, after verifying it."""
        cfg, run = self.cfg, self.run
        if cfg.from_checkpoint:  # the checkpoint lists are rewritten below (runs.set_aside_after)
            prefix = run / cfg.from_checkpoint
            if prefix.parent not in (run, run / "best") or runs.step_of(prefix) < 0:
                raise RunError(f"--from-checkpoint {cfg.from_checkpoint}: name a checkpoint of the run, such as "
                               f"ckpt-20 or best/ckpt-20 (its files are {run}/ckpt-20.index and .data-*).")
        else:
            try:
                prefix = runs.latest(run)
                runs.read_state(run / "best")
            except runs.DamagedState as e:
                if not e.intact:
                    raise RunError(f"{e}; none of them is intact, so the run cannot be continued: start a new "
                                   f"run with another --run-name.") from None
                name = str(e.intact[0].relative_to(run))
                raise RunError(f"{e}; the intact ones are {runs.names(e.intact, run)}: continue from the newest "
                               f"with: {command(run, '--from-checkpoint', name)}") from None
            if prefix is None:
                return  # stopped before its first save: start from the beginning
        try:
            runs.verify(prefix)
        except runs.DamagedCheckpoint as e:
            older = runs.intact(run, before=runs.step_of(prefix))
            if not older:
                raise RunError(f"{e}; no older checkpoint of the run is intact, so it cannot be continued: "
                               f"start a new run with another --run-name.") from None
            name = str(older[0].relative_to(run))
            raise RunError(f"{e}; the older checkpoints {runs.names(older, run)} are intact: continue from the "
                           f"newest with: {command(run, '--from-checkpoint', name)}") from None
        saved_norm = runs.has_normalization(prefix)
        fresh = self.train.norm.values()  # of the images --data holds; the restore puts the saved ones in
        try:
            self.trainer.checkpoint(saved_norm).read(str(prefix)).assert_existing_objects_matched().expect_partial()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise RunError(f"{prefix}: cannot be restored into this run's model ({runs.first_line(e)}); "
                           f"it is from another configuration.") from None
        if saved_norm and not np.allclose(fresh, self.train.norm.values(), rtol=1e-6, atol=0):
            mean = ", ".join(f"{v:.4f}" for v in self.train.norm.values()[0])
            raise RunError(f"--data {cfg.data or 'data'}: holds other images than the run was trained on (their "
                           f"per-channel mean is {', '.join(f'{v:.4f}' for v in fresh[0])}, the run's {mean}, "
                           f"saved in {prefix.name}); give --data the data set the run was made with.")
        if not saved_norm:
            print(f"note: {prefix} predates saved normalization statistics: recomputed from the training "
                  f"images, as that run did", flush=True)
        if cfg.from_checkpoint:
            moved = runs.set_aside_after(run, runs.step_of(prefix))
            print(f"continuing from {prefix}" + (f"; the later checkpoints are now in {moved}" if moved else ""),
                  flush=True)

    def check_finite(self) -> None:
        if not bool(self.trainer.all_finite()):
            raise FloatingPointError(
                f"a weight, moving statistic or optimizer slot became NaN or infinite by step {self.trainer.step}, "
                f"so it was not saved and the last good checkpoint "
                f"({self.manager.latest_checkpoint or 'none yet'}) is kept: start a new run with a lower --lr.")

    def save(self, on_best: bool = False) -> None:
        """Save the latest checkpoint (and, first, the best); every parameter must be finite.

        The best goes first: killed between the two saves, the run resumes from the previous
        latest checkpoint, recomputes the same epoch and saves the same best again.  (The other
        order would leave a latest checkpoint whose best_val_accuracy names a best checkpoint
        that was never written, and the resumed run would never write it.)
        """
        self.check_finite()
        for manager in (self.best, self.manager) if on_best else (self.manager,):
            prefix = Path(manager.directory) / f"ckpt-{self.trainer.step}"
            try:
                manager.save(checkpoint_number=self.trainer.step)
            except (OSError, tf.errors.OpError) as e:
                shutil.rmtree(f"{prefix}_temp", ignore_errors=True)  # what a failed write leaves behind
                raise WriteError(prefix, e) from None

    def train_epoch(self, stop: _Stop) -> tuple[float, float, int]:
        """Train until the epoch ends, --max-steps is reached or a signal came.

        Returns (last lr, seconds, images trained by this call): a resumed epoch's running sums
        also count the images trained before the stop, which this process did not time.
        """
        t, cfg, clock = self.trainer, self.cfg, self.clock
        epoch = t.step // self.spe
        end = min((epoch + 1) * self.spe, self.limit)
        order = self.train.order(epoch)
        start, lr, before = time.perf_counter(), float("nan"), int(t.epoch_seen.numpy())
        while t.step < end and stop.signal is None:
            lr = float(t.train_steps(order, tf.constant(min(cfg.steps_per_call, end - t.step))))
            clock.tick(t.step)
            seen = int(t.epoch_seen.numpy())
            loss = float(t.epoch_loss.numpy()) / max(seen, 1)
            self.events.step(t.step, loss, lr)
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss became {loss} by step {t.step}; the last good checkpoint "
                    f"({self.manager.latest_checkpoint or 'none yet'}) is kept: start a new run with a lower --lr.")
            if clock.calls == clock.ESTIMATE_AFTER and t.step < self.limit:
                if self.bar:
                    print(file=sys.stderr, flush=True)  # the estimate on a line of its own, not inside the bar's
                self.estimate(clock.seconds_per_step(t.step))
            if self.bar:
                acc = int(t.epoch_correct.numpy()) / max(seen, 1)
                elapsed = time.perf_counter() - start
                print(_bar(epoch + 1, cfg.epochs, t.step - epoch * self.spe, self.spe, loss, acc,
                           (seen - before) / elapsed, elapsed, clock.left(t.step, end),
                           clock.left(t.step, self.limit)), end="", file=sys.stderr, flush=True)
        if self.bar:
            print(file=sys.stderr)
        return lr, time.perf_counter() - start, int(t.epoch_seen.numpy()) - before

    def estimate(self, per: float) -> None:
        """Say how long what is left should take, at `per` seconds per step (validation not counted)."""
        step, clock = self.trainer.step, self.clock
        ends = datetime.fromtimestamp(time.time() + per * (self.limit - step))
        whole = (f"; the whole run's {self.total - step} steps, about {duration(per * (self.total - step))}"
                 if self.limit < self.total else "")
        print(f"speed: {self.cfg.batch_size / per:.0f} images/s over steps {clock.first_step + 1}-{step}; the "
              f"{self.limit - step} steps left should take about {duration(per * (self.limit - step))} (ending "
              f"around {ends:%Y-%m-%d %H:%M}, validation not counted){whole}", flush=True)

    def end_epoch(self, lr: float, seconds: float, images: int) -> None:
        """Validate, append to history.csv, save (and maybe save as best), redraw the curves, print the line."""
        t = self.trainer
        self.check_finite()  # before anything of this epoch is written
        start = time.perf_counter()
        seen = int(t.epoch_seen.numpy())
        row = {"epoch": t.step // self.spe, "step": t.step, "train_loss": float(t.epoch_loss.numpy()) / seen,
               "train_accuracy": int(t.epoch_correct.numpy()) / seen, "lr": lr, "images_per_s": images / seconds,
               "kernels": kernels.short(self.kernels)}
        val_loss, val_acc, _ = self.evaluate_val() if self.evaluate_val else (float("nan"), float("nan"), None)
        t.elapsed.assign_add(seconds + time.perf_counter() - start)
        row.update(val_loss=val_loss, val_accuracy=val_acc, elapsed_s=float(t.elapsed.numpy()))
        for v in (t.epoch_loss, t.epoch_correct, t.epoch_seen):
            v.assign(tf.zeros_like(v))
        improved = self.evaluate_val is not None and val_acc > float(t.best_val_accuracy.numpy())
        if improved:
            t.best_val_accuracy.assign(val_acc)
        self.history.append(row)
        history.write(self.history_path, self.history)  # before the save: a crash between them repeats the
        self.save(on_best=improved)  # epoch, and read_history drops the row the checkpoint does not cover
        self.plot()
        if self.events.writer is not None:
            first = t.step - self.spe  # the finished epoch's first batch
            norms = t.grad_norms(self.train.order(first // self.spe), tf.constant(first, tf.int64))
            names = [name for name, _, _ in t.model.conv_layers()]
            self.events.epoch(t.step, row, t.model, {n: float(v) for n, v in zip(names, norms)})
        val = f"val loss {val_loss:.4f} acc {100 * val_acc:5.2f}%" if self.evaluate_val else "no validation set"
        print(f"epoch {row['epoch']:3d}/{self.cfg.epochs}  train loss {row['train_loss']:.4f} acc "
              f"{100 * row['train_accuracy']:5.2f}%  {val}  lr {lr:.4f}  {row['images_per_s']:.0f} img/s  "
              f"{row['elapsed_s'] / 60:.1f} min, {self.clock.left(t.step, self.limit)} left", flush=True)

    def plot(self) -> None:
        from lowlevel import plots  # matplotlib: imported at the first epoch's end, never by the step

        if self.chief:
            plots.learning_curves(self.run)

    def test(self) -> None:
        test = pipeline.Batches(self.data.test_images, self.data.test_labels, self.train.norm, 500)
        loss, acc, _ = evaluator(self.trainer.model, test)()
        print(f"test loss {loss:.4f}, test accuracy {100 * acc:.2f}% ({test.n} images, checkpoint "
              f"{self.manager.latest_checkpoint})", flush=True)


def fit(cfg: Config, run: Path, data: datasets.Dataset, strategy=None, out: Path | None = None) -> int:
    """Train the run to its end (or to --max-steps, or a signal); return the exit status."""
    again = ["--strategy", cfg.strategy] if cfg.strategy != "default" else []  # an invocation flag: not saved
    try:
        loop = Loop(cfg, run, data, strategy, out)
    except distribute.PEER_LOST:
        if cfg.strategy != "multi-worker":
            raise
        return peer_lost(cfg, run, 0)
    t, stop = loop.trainer, _Stop()
    try:
        while t.step < loop.limit and stop.signal is None:
            lr, seconds, images = loop.train_epoch(stop)
            if int(t.epoch_seen.numpy()) == 0:
                continue  # a signal came before the first step of the epoch: nothing to record
            if t.step % loop.spe == 0:
                loop.end_epoch(lr, seconds, images)
            else:  # stopped within the epoch: its running sums go into the checkpoint
                t.elapsed.assign_add(seconds)
                loop.save()
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except distribute.PEER_LOST:
        if cfg.strategy != "multi-worker":
            raise
        return peer_lost(cfg, run, t.step)
    finally:
        stop.restore()
        loop.events.close()
    if t.step < loop.total:
        why = signal.Signals(stop.signal).name if stop.signal else f"--max-steps {cfg.max_steps}"
        print(f"stopped ({why}) at step {t.step} of {loop.total}, checkpoint {loop.manager.latest_checkpoint}; "
              f"continue with: {command(run, *again)}", flush=True)
        return {None: 0, signal.SIGINT: 130, signal.SIGTERM: 143}[stop.signal]
    if not loop.chief:
        return 0
    loop.test()
    print(f"evaluate with: python -m lowlevel.evaluate --checkpoint {shlex.quote(str(run))}", flush=True)
    return 0


def peer_lost(cfg: Config, run: Path, step: int) -> int:
    """Another worker of a multi-worker run is gone: say so (the collectives raised), exit 1."""
    try:
        last = runs.latest(run)
    except RunError:
        last = None
    kept = f"its last checkpoint is {last.name}" if last else "it has no checkpoint yet"
    print(f"error: another worker of the TF_CONFIG cluster stopped answering (at step {step}), so this one stops "
          f"too; {kept}: start every worker again with: {command(run, '--strategy', cfg.strategy)}",
          file=sys.stderr, flush=True)
    return 1


def after_write_error(e: WriteError, run: Path | None) -> str:
    """What to do after a failed write: the run's checkpoints are intact, so say how to continue."""
    fix = runs.advice(e).removesuffix(" and run the command again.").removesuffix(" and run again.").rstrip(".")
    if run is None or not (run / "config.json").is_file():
        return runs.advice(e)
    try:
        last = runs.latest(run)
    except RunError:
        last = None
    kept = f"its last checkpoint, {last.name}, is intact" if last else "it has no checkpoint yet"
    return f"the run stopped and {kept}: {fix}, then continue with: {command(run)}"


def main(argv: list[str] | None = None) -> int:
    cfg, run = None, None
    try:
        cfg, explicit = Config.from_args(argv)
        cfg = cfg.check()
        strategy = distribute.strategy(cfg.strategy)  # first: multi-worker starts this worker's server
        chief = distribute.is_chief(strategy)
        cfg, run = run_config(cfg, explicit, chief)
        data = datasets.load(cfg.dataset, cfg.data, cfg.split_seed)
        cfg.check_data(len(data.train_images), data.train_images.shape[1])
        if not chief:  # another worker of a multi-worker run: it reads the run folder, writes a temporary one
            with tempfile.TemporaryDirectory(prefix="lowlevel-worker-") as scratch:
                return fit(cfg, run, data, strategy, out=Path(scratch))
        with open_run(cfg, run):
            return fit(cfg, run, data, strategy)
    except WriteError as e:
        print(f"error: {e}; {after_write_error(e, run)}", file=sys.stderr)
        return 2
    except (ConfigError, RunError, datasets.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the system refuses, e.g. a name over 255 bytes in --data
        print(f"error: {runs.path_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C
        print("stopped at once, without saving; --resume continues from the last checkpoint.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
