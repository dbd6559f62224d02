"""What every benchmark shares: random images of CIFAR's shape, the compiled training step on them,
one timed loop, and the machine's matmul rate."""
from __future__ import annotations

import time

import numpy as np

from lowlevel._tf import tf


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls of fn (each ends in a synchronization)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def summed(fn, shape=(), dtype=tf.float32):
    """A compiled function of k (int32 tensor): the sum of fn(i) over i = 0 .. k-1, each fn(i) a tensor
    of `shape` (a tf.while_loop written out, AutoGraph off, as in step.Trainer.train_steps)."""
    @tf.function(autograph=False)
    def run(k):
        return tf.while_loop(lambda i, acc: i < k, lambda i, acc: (i + 1, acc + fn(i)),
                             [tf.constant(0), tf.zeros(shape, dtype)])[1]
    return run


def matmul_gflops(n: int = 2048, reps: int = 10, repeats: int = 3, dtype=tf.float32) -> float:
    """[n, n] @ [n, n] in `dtype`, `reps` in one compiled call: 2 n^3 FLOPs each."""
    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)

    run = summed(lambda i: tf.matmul(a, b), [n, n], dtype)
    k = tf.constant(reps)
    run(k).numpy()
    return 2 * n ** 3 * reps / best_time(lambda: run(k)[0, 0].numpy(), repeats) / 1e9


def random_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def trainer(batch: int, alpha: float, steps: int, precision: str = "float32", strategy=None, **config):
    """(Trainer, image order, batches) of MobileNet (or config's `model`) on `batch * (steps + 1)` random
    images, as train builds them (lowlevel.step), its step traced and warmed up by one call.  Without the
    moving average of the weights unless `config` asks for one (ema=0.999): the step the Keras reference
    trains, and the benchmarks' figures in docs/ (the average costs 0.5-4%, docs/recipe.md)."""
    from lowlevel import pipeline
    from lowlevel.config import Config
    from lowlevel.step import Trainer

    images, labels = random_images(batch * (steps + 1))
    cfg = Config(alpha=alpha, batch_size=batch, precision=precision, **{"ema": 0.0, **config})
    batches = pipeline.Batches(images, labels, pipeline.Normalization.of(images), batch, seed=0, cutout=cfg.cutout,
                               cutmix=cfg.cutmix, flip=cfg.flip)
    t = Trainer(cfg, batches, strategy=strategy)
    order = batches.order(0)
    float(t.train_steps(order, tf.constant(1)))  # trace and warm up
    return t, order, batches


def training_images_per_s(t, order, steps: int, repeats: int) -> float:
    """The one timed loop of the training step: `steps` steps per call, the best of `repeats` calls."""
    n = tf.constant(steps)
    return t.train.batch_size * steps / best_time(lambda: float(t.train_steps(order, n)), repeats)


def inference_images_per_s(model, x: tf.Tensor, steps: int, repeats: int) -> float:
    """`model.inference` (batch norms folded) on the normalized batch x [B, H, W, C], `steps` times per
    compiled call, the best of `repeats` calls."""
    infer = summed(lambda i: tf.cast(model.inference(x)[0, 0], tf.float32))  # used, so computed
    float(infer(tf.constant(1)))
    return x.shape[0] * steps / best_time(lambda: float(infer(tf.constant(steps))), repeats)
