"""`python -m lowlevel.bench step` (the default): lowlevel's compiled training step and inference
against the same network of stock Keras layers, trained with `model.fit` and run with
`model.predict` at the same batch size; the input pipeline alone; and the machine's matmul rate,
giving the fraction of the compute limit the training step reaches (6 x the multiply-adds per
training image: 2 FLOPs each forward, backward about twice that).  Imports Keras.
"""
from __future__ import annotations

import json
import time

import numpy as np

from lowlevel._tf import tf

from lowlevel.bench import timing
from lowlevel.bench.timing import best_time, matmul_gflops, random_images


def lowlevel_throughput(batch: int, alpha: float, steps: int, repeats: int,
                        precision: str = "float32") -> tuple[float, float]:
    """(training images/s, inference images/s) of lowlevel's compiled steps."""
    t, order, batches = timing.trainer(batch, alpha, steps, precision)
    train = timing.training_images_per_s(t, order, steps, repeats)
    return train, timing.inference_images_per_s(t.model, batches.eval_batch(0)[0], steps, repeats)


def pipeline_throughput(batch: int, steps: int, repeats: int) -> float:
    """Images/s of the input pipeline alone: gather, crop + flip, normalize, cutout, `steps` batches per call."""
    from lowlevel import pipeline
    from lowlevel.config import Config

    images, labels = random_images(batch * steps)
    batches = pipeline.Batches(images, labels, pipeline.Normalization.of(images), batch, seed=0,
                               cutout=Config().cutout)
    order = batches.order(0)

    run = timing.summed(lambda step: batches.train_batch(order, step)[0][0, 0, 0, 0])  # used, so computed

    float(run(tf.constant(1)))
    return batch * steps / best_time(lambda: float(run(tf.constant(steps))), repeats)


def keras_model(alpha: float):
    """The same architecture from stock Keras layers (stem stride 1, as lowlevel's CIFAR default)."""
    import keras
    from keras import layers

    from lowlevel.nets.mobilenet import BODY, STEM, scaled

    x = inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(scaled(STEM.channels, alpha), 3, padding="same", use_bias=False)(x)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    for row in BODY:
        x = layers.DepthwiseConv2D(3, strides=row.stride, padding="same", use_bias=False)(x)
        x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
        x = layers.Conv2D(scaled(row.channels, alpha), 1, use_bias=False)(x)
        x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def keras_throughput(batch: int, alpha: float, steps: int, repeats: int,
                     precision: str = "float32") -> tuple[float, float, float]:
    """(training images/s of Keras' steps alone, of whole model.fit calls, inference images/s with
    model.predict).

    Steps alone: a callback reads the clock at the end of every batch; the time from the end of
    the first batch to the end of the last is that of the other steps-1 steps, without fit's
    set-up (building the data adapter and iterator, callbacks, the epoch's start and end), which
    lowlevel's figure does not include either.  (A compiled function call returns once its work
    is done, so a batch's end is a synchronization.)  Whole calls are reported beside
    them.

    With a 16-bit precision Keras runs under its "mixed_bfloat16" / "mixed_float16" policy (every layer
    computes in 16 bits; model.compile adds loss scaling for float16): like for like with lowlevel.
    """
    import keras

    class BatchEnds(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.times = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    keras.mixed_precision.set_global_policy("float32" if precision == "float32" else "mixed_" + precision)
    try:
        model = keras_model(alpha)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    n = max(steps, 2)
    images, labels = random_images(batch * n)
    x = ((images.astype(np.float32) / 255.0) - 0.47) / 0.25
    model.fit(x[:batch * 2], labels[:batch * 2], batch_size=batch, epochs=1, verbose=0)  # trace and warm up
    ends = BatchEnds()
    steps_s, fit_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(x, labels, batch_size=batch, epochs=1, verbose=0, callbacks=[ends])
        fit_s.append(time.perf_counter() - start)
        steps_s.append((ends.times[-1] - ends.times[0]) / (n - 1))
    model.predict(x[:batch * 2], batch_size=batch, verbose=0)
    infer_s = best_time(lambda: model.predict(x, batch_size=batch, verbose=0), repeats)
    return batch / min(steps_s), batch * n / min(fit_s), batch * n / infer_s


def mult_adds(alpha: float) -> int:
    from lowlevel import costs
    from lowlevel.nets.mobilenet import MobileNetV1

    return costs.totals(costs.rows(MobileNetV1(alpha=alpha))).madds


def run(args) -> int:
    """`bench step`: lowlevel's training and inference against Keras', the input pipeline, the matmul peak."""
    from lowlevel import kernels

    madds = mult_adds(args.alpha)
    flops = 6 * madds  # training: forward 2 FLOPs per multiply-add, backward about twice that
    size, reps = (512, 2) if args.quick else (2048, 10)
    peak = matmul_gflops(size, reps, args.repeats)
    peak16 = matmul_gflops(size, reps, args.repeats, tf.as_dtype(args.precision)) if args.precision != "float32" else 0
    feed = pipeline_throughput(args.batch_size, max(args.steps, 10), args.repeats)
    ours = lowlevel_throughput(args.batch_size, args.alpha, args.steps, args.repeats, args.precision)
    ref = keras_throughput(args.batch_size, args.alpha, args.steps, args.repeats, args.precision)
    result = {
        "batch_size": args.batch_size, "alpha": args.alpha, "steps": args.steps, "precision": args.precision,
        "train_images_per_s": round(ours[0], 1), "keras_train_images_per_s": round(ref[0], 1),
        "train_speedup_vs_keras": round(ours[0] / ref[0], 3),
        "keras_fit_images_per_s": round(ref[1], 1), "train_speedup_vs_keras_fit": round(ours[0] / ref[1], 3),
        "infer_images_per_s": round(ours[1], 1), "keras_infer_images_per_s": round(ref[2], 1),
        "infer_speedup_vs_keras": round(ours[1] / ref[2], 3),
        "matmul_gflops": round(peak, 1), "train_flops_per_image": flops,
        "compute_fraction": round(flops * ours[0] / (peak * 1e9), 3),
        "pipeline_images_per_s": round(feed, 1), "kernels": kernels.describe(),
    }
    if peak16:
        result[f"matmul_gflops_{args.precision}"] = round(peak16, 1)
    print(kernels.line())
    print(f"MobileNet v1, alpha {args.alpha:g}, batch {args.batch_size}, 32x32, {args.precision}, {args.steps} steps "
          f"per timed call, best of {args.repeats}")
    print(f"{'':<24s} {'lowlevel':>12s} {'Keras':>12s} {'ratio':>8s}")
    print(f"{'training images/s':<24s} {ours[0]:12.1f} {ref[0]:12.1f} {ours[0] / ref[0]:7.2f}x   (Keras' steps alone)")
    print(f"{'':<24s} {'':>12s} {ref[1]:12.1f} {ours[0] / ref[1]:7.2f}x   (whole model.fit calls, set-up included)")
    print(f"{'inference images/s':<24s} {ours[1]:12.1f} {ref[2]:12.1f} {ours[1] / ref[2]:7.2f}x")
    print(f"{'input pipeline images/s':<24s} {feed:12.1f} {'':>12s} {feed / ours[0]:7.0f}x the training step")
    print(f"float32 matmul peak {peak:.1f} GFLOP/s; training {flops / 1e6:.1f} MFLOP per image; "
          f"lowlevel reaches {100 * result['compute_fraction']:.1f}% of the peak")
    if peak16:
        print(f"{args.precision} matmul peak {peak16:.1f} GFLOP/s; lowlevel reaches "
              f"{100 * flops * ours[0] / (peak16 * 1e9):.1f}% of it")
    print(json.dumps(result))
    return 0
