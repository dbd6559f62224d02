"""The training loop: epochs of compiled steps, and at each epoch's end validation, history.csv,
checkpoints and the learning curves; signals save a checkpoint; a resume continues exactly.

`run()` is the loop to read top to bottom.  `Loop` holds what it needs: the data split and
batches, the `step.Trainer`, the checkpoint managers (the last `--keep` and the best), the
history, the clock and the event writer.  `restore` verifies and restores the checkpoint a
resumed run continues from.  It knows no network by name: `runs.build_model` builds the one
config.json names.

The run folder it writes is described in lowlevel/runs.py.  On the workers of a multi-worker run
after the first it writes into a temporary folder instead (lowlevel/distribute.py).
"""
from __future__ import annotations

import shlex
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from lowlevel._tf import tf

from lowlevel import checkpoints, datasets, distribute, history, kernels, pipeline, progress, runs, step
from lowlevel.config import Config
from lowlevel.errors import ConfigError, RunError, WriteError, first_line
from lowlevel.events import Events


def run(cfg: Config, folder: Path, data: datasets.Dataset, strategy=None, out: Path | None = None) -> int:
    """Train the run in `folder` to its end (or to --max-steps, or a signal); return the exit status."""
    loop = signals = None
    try:
        loop = Loop(cfg, folder, data, strategy, out)
        t, signals = loop.trainer, Signals()
        while t.step < loop.limit and signals.caught is None:
            lr, seconds, images = loop.train_epoch(signals)
            if t.epoch_means()[2] == 0:
                continue  # a signal came before the first step of the epoch: nothing to record
            if t.step % loop.spe == 0:
                loop.end_epoch(lr, seconds, images)
            else:  # stopped within the epoch: its running sums go into the checkpoint
                t.elapsed.assign_add(seconds)
                loop.save()
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except distribute.peer_lost_errors(cfg.strategy):
        return peer_lost(cfg, folder, loop.trainer.step if loop else 0)
    finally:
        if signals:
            signals.restore()
        if loop:
            loop.events.close()
    if t.step < loop.total:
        why = signal.Signals(signals.caught).name if signals.caught else f"--max-steps {cfg.max_steps}"
        again = ["--strategy", cfg.strategy] if cfg.strategy != "default" else []  # an invocation flag: not saved
        print(f"stopped ({why}) at step {t.step} of {loop.total}, checkpoint {loop.manager.latest_checkpoint}; "
              f"continue with: {runs.command(folder, *again)}", flush=True)
        return {None: 0, signal.SIGINT: 130, signal.SIGTERM: 143}[signals.caught]
    if loop.chief:
        loop.test()
        print(f"evaluate with: python -m lowlevel.evaluate --checkpoint {shlex.quote(str(folder))}", flush=True)
    return 0


class Loop:
    """The epochs of one run: training calls, end-of-epoch bookkeeping, checkpoints.

    It reads the run folder `run` and writes into `out`: the same folder, except on the workers of
    a multi-worker run after the first, which write into a temporary one (lowlevel/distribute.py).
    """

    def __init__(self, cfg: Config, run: Path, data: datasets.Dataset, strategy=None, out: Path | None = None):
        train_x, train_y, val_x, val_y = pipeline.split_validation(data.train_images, data.train_labels,
                                                                   cfg.val_size)
        # the training images' statistics; a resumed run restores the ones it started with
        norm = runs.normalization_type(cfg).of(train_x)
        self.train = pipeline.Batches(train_x, train_y, norm, cfg.batch_size, cfg.seed, augment=cfg.augment,
                                      cutout=cfg.cutout, cutmix=cfg.cutmix, flip=cfg.flip)
        self.cfg, self.run, self.data = cfg, run, data
        self.out = out or run
        self.chief = self.out == run
        strategy = strategy or tf.distribute.get_strategy()
        replicas = distribute.replicas(strategy)
        if cfg.batch_size % replicas:
            raise ConfigError(f"--batch-size {cfg.batch_size} does not divide among the {replicas} replicas of "
                              f"--strategy {cfg.strategy}; give a multiple of {replicas}.")
        self.trainer = step.Trainer(cfg, self.train, num_classes=len(data.label_names), strategy=strategy)
        if cfg.resume:
            restore(self.trainer, cfg, run)
        ckpt = self.trainer.checkpoint()
        self.manager = tf.train.CheckpointManager(ckpt, self.out, max_to_keep=cfg.keep, checkpoint_name="ckpt")
        self.best = tf.train.CheckpointManager(ckpt, self.out / "best", max_to_keep=1, checkpoint_name="ckpt")
        self.spe = self.train.steps_per_epoch
        self.total = cfg.epochs * self.spe
        self.limit = min(self.total, cfg.max_steps) if cfg.max_steps else self.total
        self.history_path = self.out / "history.csv"
        self.history = history.resume(run, self.trainer.step // self.spe)
        history.write(self.history_path, self.history)
        self.evaluate = step.evaluator(self.trainer.evaluated, norm, cfg.tta)  # validation and the test
        self.val = (tf.constant(val_x), val_y) if len(val_x) else None  # on the device, like the training images
        self.bar = cfg.progress == "bar" or (cfg.progress == "auto" and sys.stderr.isatty())
        self.clock = progress.Clock()
        self.events = Events(run, cfg.tensorboard and self.chief)
        print(f"run {run}: {self.train.n} training and {len(val_x)} validation images, {self.spe} steps per "
              f"epoch, {self.trainer.step} of {self.total} steps done", flush=True)
        self.kernels = kernels.describe()
        print(kernels.line(self.kernels), flush=True)
        if cfg.ema or cfg.tta != "none":
            print(f"validation and test measure: {describe(cfg)[2:]}", flush=True)
        if cfg.precision == "float16" and not tf.config.list_physical_devices("GPU"):
            print("note: float16 is for GPUs; on a CPU its convolutions fall back to slow kernels "
                  "(--precision bfloat16 is the CPU's 16-bit type)", flush=True)

    def check_finite(self) -> None:
        if not self.trainer.all_finite():
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

    def train_epoch(self, signals: Signals) -> tuple[float, float, int]:
        """Train until the epoch ends, --max-steps is reached or a signal came.

        Returns (last lr, seconds, images trained by this call): a resumed epoch's running sums
        also count the images trained before the stop, which this process did not time.
        """
        t, cfg, clock = self.trainer, self.cfg, self.clock
        epoch = t.step // self.spe
        end = min((epoch + 1) * self.spe, self.limit)
        order = self.train.order(epoch)
        start, lr, before = time.perf_counter(), float("nan"), t.epoch_means()[2]
        bar = progress.Bar(epoch + 1, cfg.epochs, self.spe)
        while t.step < end and signals.caught is None:
            lr = float(t.train_steps(order, tf.constant(min(cfg.steps_per_call, end - t.step))))
            clock.tick(t.step)
            loss = t.epoch_means()[0]
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
                _, acc, seen = t.epoch_means()
                elapsed = time.perf_counter() - start
                print(bar.line(t.step - epoch * self.spe, loss, acc, (seen - before) / elapsed, elapsed,
                               clock.left(t.step, end), clock.left(t.step, self.limit)),
                      end="", file=sys.stderr, flush=True)
        if self.bar:
            print(file=sys.stderr)
        return lr, time.perf_counter() - start, t.epoch_means()[2] - before

    def estimate(self, per: float) -> None:
        """Say how long what is left should take, at `per` seconds per step (validation not counted)."""
        step, clock = self.trainer.step, self.clock
        ends = datetime.fromtimestamp(time.time() + per * (self.limit - step))
        whole = (f"; the whole run's {self.total - step} steps, about {progress.duration(per * (self.total - step))}"
                 if self.limit < self.total else "")
        print(f"speed: {self.cfg.batch_size / per:.0f} images/s over steps {clock.first_step + 1}-{step}; the "
              f"{self.limit - step} steps left should take about {progress.duration(per * (self.limit - step))} (ending "
              f"around {ends:%Y-%m-%d %H:%M}, validation not counted){whole}", flush=True)

    def end_epoch(self, lr: float, seconds: float, images: int) -> None:
        """Validate, append to history.csv, save (and maybe save as best), redraw the curves, print the line."""
        t = self.trainer
        self.check_finite()  # before anything of this epoch is written
        start = time.perf_counter()
        train_loss, train_accuracy, _ = t.epoch_means()
        row = {"epoch": t.step // self.spe, "step": t.step, "train_loss": train_loss,
               "train_accuracy": train_accuracy, "lr": lr, "images_per_s": images / seconds,
               "kernels": kernels.short(self.kernels)}
        val_loss, val_acc, _ = self.evaluate(*self.val) if self.val else (float("nan"), float("nan"), None)
        t.elapsed.assign_add(seconds + time.perf_counter() - start)
        row.update(val_loss=val_loss, val_accuracy=val_acc, elapsed_s=float(t.elapsed.numpy()))
        t.reset_epoch()
        improved = self.val is not None and val_acc > float(t.best_val_accuracy.numpy())
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
        val = f"val loss {val_loss:.4f} acc {100 * val_acc:5.2f}%" if self.val else "no validation set"
        print(f"epoch {row['epoch']:3d}/{self.cfg.epochs}  train loss {row['train_loss']:.4f} acc "
              f"{100 * row['train_accuracy']:5.2f}%  {val}  lr {lr:.4f}  {row['images_per_s']:.0f} img/s  "
              f"{row['elapsed_s'] / 60:.1f} min, {self.clock.left(t.step, self.limit)} left", flush=True)

    def plot(self) -> None:
        from lowlevel import figures  # matplotlib: imported at the first epoch's end, never by the step

        if self.chief:
            figures.learning_curves(self.run)

    def test(self) -> None:
        loss, acc, _ = self.evaluate(self.data.test_images, self.data.test_labels)
        print(f"test loss {loss:.4f}, test accuracy {100 * acc:.2f}% ({len(self.data.test_labels)} images, checkpoint "
              f"{self.manager.latest_checkpoint}{describe(self.cfg)})", flush=True)


def restore(trainer: step.Trainer, cfg: Config, run: Path) -> None:
    """Continue from --from-checkpoint, or from the latest checkpoint, after verifying it."""
    if cfg.from_checkpoint:  # the checkpoint lists are rewritten below (checkpoints.set_aside_after)
        prefix = run / cfg.from_checkpoint
        if prefix.parent not in (run, run / "best") or checkpoints.step_of(prefix) < 0:
            raise RunError(f"--from-checkpoint {cfg.from_checkpoint}: name a checkpoint of the run, such as "
                           f"ckpt-20 or best/ckpt-20 (its files are {run}/ckpt-20.index and .data-*).")
    else:
        try:
            prefix = checkpoints.latest(run)
            checkpoints.read_state(run / "best")
        except checkpoints.DamagedState as e:
            if not e.intact:
                raise RunError(f"{e}; none of them is intact, so the run cannot be continued: start a new "
                               f"run with another --run-name.") from None
            name = str(e.intact[0].relative_to(run))
            raise RunError(f"{e}; the intact ones are {checkpoints.names(e.intact, run)}: continue from the newest "
                           f"with: {runs.command(run, '--from-checkpoint', name)}") from None
        if prefix is None:
            return  # stopped before its first save: start from the beginning
    try:
        checkpoints.verify(prefix)
    except checkpoints.DamagedCheckpoint as e:
        older = checkpoints.intact(run, before=checkpoints.step_of(prefix))
        if not older:
            raise RunError(f"{e}; no older checkpoint of the run is intact, so it cannot be continued: "
                           f"start a new run with another --run-name.") from None
        name = str(older[0].relative_to(run))
        raise RunError(f"{e}; the older checkpoints {checkpoints.names(older, run)} are intact: continue from the "
                       f"newest with: {runs.command(run, '--from-checkpoint', name)}") from None
    saved_norm = checkpoints.has_normalization(prefix)
    fresh = trainer.train.norm.values()  # of the images --data holds; the restore puts the saved ones in
    try:
        trainer.checkpoint(saved_norm).read(str(prefix)).assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise RunError(f"{prefix}: cannot be restored into this run's model ({first_line(e)}); "
                       f"it is from another configuration.") from None
    if saved_norm and not np.allclose(fresh, trainer.train.norm.values(), rtol=1e-6, atol=0):
        mean = ", ".join(f"{v:.4f}" for v in trainer.train.norm.values()[0])
        raise RunError(f"--data {cfg.data or 'data'}: holds other images than the run was trained on (their "
                       f"per-channel mean is {', '.join(f'{v:.4f}' for v in fresh[0])}, the run's {mean}, "
                       f"saved in {prefix.name}); give --data the data set the run was made with.")
    if not saved_norm:
        print(f"note: {prefix} predates saved normalization statistics: recomputed from the training "
              f"images, as that run did", flush=True)
    if cfg.from_checkpoint:
        moved = checkpoints.set_aside_after(run, checkpoints.step_of(prefix))
        print(f"continuing from {prefix}" + (f"; the later checkpoints are now in {moved}" if moved else ""),
              flush=True)


def describe(cfg: Config) -> str:
    """Which weights and which test-time augmentation are measured, e.g. ", averaged weights (--ema 0.999),
    flip TTA"; empty for the trained weights without TTA."""
    parts = ([f"averaged weights (--ema {cfg.ema})"] if cfg.ema else []) + (
        [f"{cfg.tta} TTA"] if cfg.tta != "none" else [])
    return "".join(", " + p for p in parts)


class Signals:
    """Remembers a SIGINT or SIGTERM so the loop can save before it exits."""

    def __init__(self):
        self.caught = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        if self.caught is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.caught = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this call",
              file=sys.stderr, flush=True)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def peer_lost(cfg: Config, run: Path, step: int) -> int:
    """Another worker of a multi-worker run is gone: say so (the collectives raised), exit 1."""
    try:
        last = checkpoints.latest(run)
    except RunError:
        last = None
    kept = f"its last checkpoint is {last.name}" if last else "it has no checkpoint yet"
    print(f"error: another worker of the TF_CONFIG cluster stopped answering (at step {step}), so this one stops "
          f"too; {kept}: start every worker again with: {runs.command(run, '--strategy', cfg.strategy)}",
          file=sys.stderr, flush=True)
    return 1
