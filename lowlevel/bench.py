"""`python -m lowlevel.bench`: how fast is the raw-op step, against Keras and against the machine?

Measured in one run, on the same machine, on random data of CIFAR's shape:

  * lowlevel's compiled training step (the one `python -m lowlevel.train` runs:
    gather, augment, forward, backward, update), and its inference;
  * the same network built from Keras layers, trained with `model.fit` and run
    with `model.predict` at the same batch size: the reference (its training
    figure times Keras' steps alone, as lowlevel's times its compiled steps;
    whole `model.fit` calls, set-up included, are printed beside it);
  * the input pipeline alone (gather, crop + flip, normalize, cutout), which must
    outrun the training step many times over;
  * this machine's float32 `tf.matmul` throughput (the compute limit) and the
    network's training FLOPs per image (6 x its multiply-adds: 2 FLOPs per
    multiply-add, backward about twice forward), giving the fraction of the
    limit the training step reaches.

`--strategy mirrored` instead times the training step under tf.distribute (lowlevel/distribute.py)
against the one-device step, in one process: on a machine without GPUs it splits the CPU into
`--replicas` logical devices, which share its cores (so any gain comes from running the replicas'
half-batches side by side, not from more hardware); the step without cross-replica batch norm,
and the gradients' all-reduce alone, say what the strategy's communication costs.

`--kernels` instead times the training and inference steps, Keras' training steps and the matmul
peak under each kernel set (lowlevel's default, TensorFlow's default on this CPU, Eigen, oneDNN
capped at AVX2, one inter-op thread), each in a fresh process, since TensorFlow reads its kernel
settings once when it starts (lowlevel/kernels.py).

`--exported checkpoints/RUN/export` instead times the files `python -m lowlevel.export` wrote:
batch-1 latency (median of `--runs` calls) and batch-128 images/s, with 1 and 2 threads,
each file and thread count in a fresh process.

Each figure is timed after warm-up calls, around whole calls that end in a
value read back to Python (a synchronization), best of `--repeats`.  The last
line printed is one JSON object for scripts.  This module imports Keras; the
package never imports this module.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from lowlevel._tf import tf
from lowlevel.config import Parser
from lowlevel.nets.mobilenet import PRECISIONS


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls of fn (each ends in a synchronization)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(n: int = 2048, reps: int = 10, repeats: int = 3, dtype=tf.float32) -> float:
    """[n, n] @ [n, n] in `dtype`, `reps` in one compiled call: 2 n^3 FLOPs each."""
    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)

    @tf.function
    def run():
        acc = tf.zeros([n, n], dtype)
        for _ in tf.range(reps):
            acc += tf.matmul(a, b)
        return acc[0, 0]

    run().numpy()
    return 2 * n ** 3 * reps / best_time(lambda: run().numpy(), repeats) / 1e9


def random_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def lowlevel_throughput(batch: int, alpha: float, steps: int, repeats: int,
                        precision: str = "float32") -> tuple[float, float]:
    """(training images/s, inference images/s) of lowlevel's compiled steps."""
    from lowlevel import pipeline
    from lowlevel.config import Config
    from lowlevel.train import Trainer

    images, labels = random_images(batch * (steps + 1))
    cfg = Config(alpha=alpha, batch_size=batch, precision=precision)
    batches = pipeline.Batches(images, labels, pipeline.Normalization.of(images), batch, seed=0, cutout=cfg.cutout)
    trainer = Trainer(cfg, batches)
    order = batches.order(0)
    n = tf.constant(steps)
    float(trainer.train_steps(order, tf.constant(1)))  # trace and warm up
    train_s = best_time(lambda: float(trainer.train_steps(order, n)), repeats)

    x, _ = batches.eval_batch(0)
    model = trainer.model

    @tf.function
    def infer(k):
        acc = tf.constant(0.0)
        for _ in tf.range(k):
            acc += model.inference(x)[0, 0]  # batch norms folded
        return acc

    float(infer(tf.constant(1)))
    infer_s = best_time(lambda: float(infer(n)), repeats)
    return batch * steps / train_s, batch * steps / infer_s


def strategy_throughput(batch: int, alpha: float, steps: int, repeats: int, replicas: int) -> dict:
    """Training images/s of one device, of `replicas` mirrored replicas with and without sync batch
    norm, and the milliseconds of one all-reduce of every gradient (summed over the replicas)."""
    from lowlevel import distribute, pipeline
    from lowlevel.config import Config
    from lowlevel.train import Trainer

    if not tf.config.list_physical_devices("GPU"):  # before TensorFlow's first op: R logical CPUs
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    images, labels = random_images(batch * (steps + 1))
    batches = pipeline.Batches(images, labels, pipeline.Normalization.of(images), batch, seed=0,
                               cutout=Config().cutout)
    order, n = batches.order(0), tf.constant(steps)
    mirrored = distribute.strategy("mirrored")
    result = {"replicas": distribute.replicas(mirrored)}
    for name, strategy, sync in [("default", None, True), ("mirrored", mirrored, True),
                                 ("mirrored_no_sync_bn", mirrored, False)]:
        trainer = Trainer(Config(alpha=alpha, batch_size=batch, sync_bn=sync), batches, strategy=strategy)
        float(trainer.train_steps(order, tf.constant(1)))  # trace and warm up
        result[f"{name}_images_per_s"] = batch * steps / best_time(lambda: float(trainer.train_steps(order, n)),
                                                                   repeats)
    params = trainer.model.trainable_variables  # read in the step: constants' sums would be folded away

    @tf.function
    def all_reduce(k):
        acc = tf.constant(0.0)
        for _ in tf.range(k):  # the loop outside strategy.run, as in Trainer.train_steps
            acc += mirrored.experimental_local_results(mirrored.run(  # one value of each sum, so none is pruned
                lambda: tf.add_n([tf.reshape(g, [-1])[0] for g in distribute.all_reduce_sum(
                    [tf.identity(v) for v in params])])))[0]
        return acc

    float(all_reduce(tf.constant(1)))
    result["gradient_all_reduce_ms"] = 1000 * best_time(lambda: float(all_reduce(n)), repeats) / steps
    result["gradient_floats"] = sum(int(v.shape.num_elements()) for v in params)
    return result


def summaries_throughput(batch: int, alpha: float, steps: int, repeats: int, per_call: int = 10,
                         steps_per_epoch: int = 351) -> tuple[float, float]:
    """(training images/s with TensorBoard summaries off, with them on), as lowlevel.train runs them.

    Off: `steps` training steps in calls of `per_call` (train's --steps-per-call).  On: the same
    calls, each followed by the per-call scalars (Events.step), plus the end-of-epoch summaries
    (the gradient norms on one batch, every histogram, the scalars: Events.epoch) timed on their
    own and charged at one per `steps_per_epoch` steps (351: CIFAR-10 at batch 128).
    """
    import tempfile
    from pathlib import Path

    from lowlevel import pipeline
    from lowlevel.config import Config
    from lowlevel.events import Events
    from lowlevel.train import Trainer

    images, labels = random_images(batch * (steps + 1))
    cfg = Config(alpha=alpha, batch_size=batch)
    batches = pipeline.Batches(images, labels, pipeline.Normalization.of(images), batch, seed=0, cutout=cfg.cutout)
    trainer = Trainer(cfg, batches)
    order, calls = batches.order(0), [min(per_call, steps - k) for k in range(0, steps, per_call)]
    float(trainer.train_steps(order, tf.constant(calls[0])))  # trace and warm up
    names = [name for name, _, _ in trainer.model.conv_layers()]
    row = dict.fromkeys(("train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_s"), 0.5)
    with tempfile.TemporaryDirectory() as folder:
        events = Events(Path(folder), enabled=True)

        def train(summaries: bool):
            for n in calls:
                lr = float(trainer.train_steps(order, tf.constant(n)))
                if summaries:
                    events.step(trainer.step, float(trainer.epoch_loss.numpy()), lr)

        def epoch_end():
            norms = trainer.grad_norms(order, tf.constant(0, tf.int64))
            events.epoch(trainer.step, row, trainer.model, {n: float(v) for n, v in zip(names, norms)})

        epoch_end()  # trace grad_norms
        off, on = best_time(lambda: train(False), repeats), best_time(lambda: train(True), repeats)
        on += best_time(epoch_end, repeats) * steps / steps_per_epoch
        events.close()
    return batch * steps / off, batch * steps / on


def pipeline_throughput(batch: int, steps: int, repeats: int) -> float:
    """Images/s of the input pipeline alone: gather, crop + flip, normalize, cutout, `steps` batches per call."""
    from lowlevel import pipeline
    from lowlevel.config import Config

    images, labels = random_images(batch * steps)
    batches = pipeline.Batches(images, labels, pipeline.Normalization.of(images), batch, seed=0,
                               cutout=Config().cutout)
    order = batches.order(0)

    @tf.function
    def run(n):
        acc = tf.constant(0.0)
        for step in tf.range(n):
            x, _ = batches.train_batch(order, step)
            acc += x[0, 0, 0, 0]  # use the batch, so it is computed
        return acc

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
    is done, so a batch's end is a synchronization.)  Whole calls are what an earlier version of
    this benchmark compared against; both are reported.

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


def profile_by_op(batch: int, alpha: float, steps: int,
                  precision: str = "float32") -> tuple[list[tuple[str, float]], float]:
    """(milliseconds per training step in each op type, wall milliseconds per traced step).

    The step is built in a TF1-style graph, where a session can trace every kernel
    (`RunOptions.FULL_TRACE`); the kernels are the ones the compiled step runs.  The
    session runs one kernel at a time (each still on all cores), so every kernel's time
    is its own: with kernels in parallel, two sharing the cores would each be timed
    twice as long.  Call it in a fresh process: it turns eager execution off.
    """
    import collections

    from lowlevel import optim
    from lowlevel.nets.mobilenet import MobileNetV1
    from lowlevel.train import cross_entropy

    tf.compat.v1.disable_eager_execution()
    graph = tf.compat.v1.get_default_graph()
    model = MobileNetV1(alpha=alpha, precision=precision)
    params = model.trainable_variables
    opt = optim.SGD(params, optim.Constant(0.05), weight_decay=5e-4)
    x = tf.random.normal([batch, 32, 32, 3])
    y = tf.random.uniform([batch], 0, 10, tf.int32)
    with tf.GradientTape() as tape:
        loss = cross_entropy(model(x, training=True), y, 0.1)
    before = len(graph.get_operations())
    opt.apply(tape.gradient(loss, params), params)
    # the step = the optimizer's updates and the batch-norm moving-average updates
    updates = [op for i, op in enumerate(graph.get_operations()) if op.type.startswith("Assign")
               and (i >= before or "moving" in op.name) and "Initializer" not in op.name]
    step = tf.group(*updates)
    sess = tf.compat.v1.Session(config=tf.compat.v1.ConfigProto(inter_op_parallelism_threads=1))
    sess.run(tf.compat.v1.global_variables_initializer())
    sess.run(step)  # warm up
    totals: collections.Counter = collections.Counter()
    options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
    start = time.perf_counter()
    for _ in range(steps):
        meta = tf.compat.v1.RunMetadata()
        sess.run(step, options=options, run_metadata=meta)
        for device in meta.step_stats.dev_stats:
            for node in device.node_stats:
                label = node.timeline_label
                op = label.split("=")[1].split("(")[0].strip() if "=" in label else node.node_name
                totals[op.replace("_MklNative", "").replace("_Mkl", "")] += node.op_end_rel_micros
    wall_ms = (time.perf_counter() - start) / steps * 1000
    return [(op, us / steps / 1000) for op, us in totals.most_common()], wall_ms


def exported_speed(path: str, threads: int, runs: int = 200, warmup: int = 20, batch: int = 128,
                   repeats: int = 3) -> dict:
    """One exported model's speed with `threads` threads, on random uint8 images of its input shape:
    batch-1 latency, the median of `runs` timed calls after `warmup` untimed ones, and batch-`batch`
    images/s, the best of `repeats` calls.  For a SavedModel, TensorFlow's thread pools are set here,
    so this must run before TensorFlow's first op in the process (`exported_table` gives each its own)."""
    from lowlevel import export

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    model = export.Exported(path, threads)
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, [1, *model.input_shape], dtype=np.uint8)
    many = rng.integers(0, 256, [batch, *model.input_shape], dtype=np.uint8)
    for _ in range(warmup):
        model.predict(one)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict(one)
        times.append(time.perf_counter() - start)
    model.predict(many)
    return {"file": str(path), "bytes": export.size(path), "threads": threads,
            "latency_ms": round(1000 * float(np.median(times)), 3),
            "images_per_s": round(batch / best_time(lambda: model.predict(many), repeats), 1)}


def exported_table(folder: str, threads: list[int], calls: int = 200) -> list[dict]:
    """exported_speed of every file export.json lists in `folder`, at each thread count, each in a new
    process (thread pools are fixed once TensorFlow starts, and no measurement warms another's caches)."""
    import subprocess

    from lowlevel import export, runs

    manifest = export.read_manifest(folder)
    if manifest is None:
        raise runs.RunError(f"{folder}: has no readable export.json; give a folder python -m lowlevel.export wrote.")
    rows = []
    for fmt, name in manifest["files"].items():
        for n in threads:
            out = subprocess.run([sys.executable, "-m", "lowlevel.bench", "--exported", str(Path(folder) / name),
                                  "--threads", str(n), "--runs", str(calls)], capture_output=True, text=True)
            if out.returncode != 0:
                last = out.stderr.strip().splitlines()[-1:] or [f"exit status {out.returncode}"]
                raise runs.RunError(f"{Path(folder) / name}: could not be timed ({last[0].removeprefix('error: ')})")
            rows.append({"format": fmt, **json.loads(out.stdout.strip().splitlines()[-1])})
    return rows


def tensorflow_default_onednn(flags: set[str]) -> bool:
    """Whether TensorFlow on its own turns oneDNN on for a CPU with these flags: only with AVX512_VNNI,
    AVX512_BF16, AVX_VNNI or AMX (tensorflow/core/util/port.cc, IsMKLEnabled)."""
    return bool(flags & {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8"})


def kernel_sets(flags: set[str]) -> list[tuple[str, dict]]:
    """(name, environment variables) of each kernel set `--kernels` measures on a CPU with these flags.
    Eigen is what TensorFlow runs by default on an AVX2-only CPU; oneDNN capped at AVX2 is what lowlevel
    runs there (measured only on a CPU that has more than AVX2)."""
    tf_default = "1" if tensorflow_default_onednn(flags) else "0"
    sets = [("lowlevel's default", {}),
            (f"TensorFlow's default (TF_ENABLE_ONEDNN_OPTS={tf_default} on this CPU)",
             {"TF_ENABLE_ONEDNN_OPTS": tf_default}),
            ("Eigen (TF_ENABLE_ONEDNN_OPTS=0)", {"TF_ENABLE_ONEDNN_OPTS": "0"}),
            ("lowlevel's default, 1 inter-op thread", {"TF_NUM_INTEROP_THREADS": "1"})]
    if flags & {"avx512f", "avx_vnni"}:
        sets.insert(3, ("oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2)", {"ONEDNN_MAX_CPU_ISA": "AVX2"}))
    return sets


def kernel_row(batch: int, alpha: float, steps: int, repeats: int, precision: str, quick: bool = False) -> dict:
    """One kernel set's figures, in this process: matmul peak, lowlevel and Keras training, inference."""
    from lowlevel import kernels

    peak = matmul_gflops(*((512, 2) if quick else (2048, 10)), repeats)
    train, infer = lowlevel_throughput(batch, alpha, steps, repeats, precision)
    keras_train, _, keras_infer = keras_throughput(batch, alpha, steps, repeats, precision)
    return {"kernels": kernels.short(), "matmul_gflops": round(peak, 1), "train_images_per_s": round(train, 1),
            "infer_images_per_s": round(infer, 1), "keras_train_images_per_s": round(keras_train, 1),
            "keras_infer_images_per_s": round(keras_infer, 1)}


def kernels_table(args) -> list[dict]:
    """kernel_row under each of kernel_sets, each in a fresh process with its environment."""
    import os
    import subprocess

    from lowlevel import kernels

    rows = []
    for name, env in kernel_sets(kernels.cpu_flags()):
        child = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA",
                                                                  "TF_NUM_INTEROP_THREADS")}
        argv = [sys.executable, "-m", "lowlevel.bench", "--kernel-row", "--batch-size", str(args.batch_size),
                "--alpha", str(args.alpha), "--steps", str(args.steps), "--repeats", str(args.repeats),
                "--precision", args.precision] + (["--quick"] if args.quick else [])
        out = subprocess.run(argv, env={**child, **env}, capture_output=True, text=True)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
            raise RuntimeError(f"the kernel set {name!r} could not be timed: {last}")
        rows.append({"name": name, "env": env, **json.loads(out.stdout.strip().splitlines()[-1])})
    return rows


def print_kernels(args) -> int:
    rows = kernels_table(args)
    flops = 6 * _madds(args.alpha)
    ref = rows[0]["train_images_per_s"]
    print(f"MobileNet v1, alpha {args.alpha:g}, batch {args.batch_size}, 32x32, {args.precision}, {args.steps} steps "
          f"per timed call, best of {args.repeats}; each kernel set in a fresh process")
    print(f"{'kernel set':<62s} {'kernels':<28s} {'matmul':>7s} {'train':>7s} {'% peak':>6s} {'vs 1st':>6s} "
          f"{'Keras':>7s} {'ratio':>6s} {'infer':>7s} {'Keras':>7s}")
    for r in rows:
        share = 100 * flops * r["train_images_per_s"] / (r["matmul_gflops"] * 1e9)
        print(f"{r['name']:<62s} {r['kernels']:<28s} {r['matmul_gflops']:7.1f} {r['train_images_per_s']:7.1f} "
              f"{share:6.1f} {r['train_images_per_s'] / ref:5.2f}x {r['keras_train_images_per_s']:7.1f} "
              f"{r['train_images_per_s'] / r['keras_train_images_per_s']:5.2f}x {r['infer_images_per_s']:7.1f} "
              f"{r['keras_infer_images_per_s']:7.1f}")
    print("(images/s; matmul: float32 GFLOP/s; % peak: training FLOPs against that set's matmul rate; Keras: "
          "its steps alone, on the same kernels)")
    print(json.dumps(rows))
    return 0


def _madds(alpha: float) -> int:
    from lowlevel import summary
    from lowlevel.nets.mobilenet import MobileNetV1

    return summary.totals(summary.rows(MobileNetV1(alpha=alpha))).madds


def parser() -> Parser:
    ap = Parser(prog="python -m lowlevel.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    ap.add_argument("--alpha", type=float, default=1.0, help="width multiplier (default 1.0)")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed call (default 20)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls; the fastest counts (default 3)")
    ap.add_argument("--precision", default="float32", choices=PRECISIONS,
                    help="lowlevel's --precision, and Keras' matching mixed policy (default float32)")
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run: alpha 0.25, batch 16, 2 steps")
    ap.add_argument("--profile", action="store_true", help="instead: milliseconds per training step by op type")
    ap.add_argument("--summaries", action="store_true", help="instead: training images/s with TensorBoard "
                                                             "summaries off and on, as lowlevel.train writes them")
    ap.add_argument("--strategy", default="", choices=["", "mirrored"],
                    help="instead: training images/s under --strategy mirrored against one device")
    ap.add_argument("--replicas", type=int, default=2, help="with --strategy, on CPUs: logical devices (default 2)")
    ap.add_argument("--kernels", action="store_true", help="instead: the training and inference steps under "
                                                           "each kernel set (oneDNN, Eigen, AVX2, threads), each "
                                                           "in a fresh process")
    ap.add_argument("--kernel-row", action="store_true", help=argparse.SUPPRESS)  # one row of --kernels
    ap.add_argument("--exported", default="", help="instead: the latency and images/s of the models "
                                                   "python -m lowlevel.export wrote (its folder, or one file)")
    ap.add_argument("--threads", default="1,2", help="with --exported: thread counts to measure (default 1,2)")
    ap.add_argument("--runs", type=int, default=200, help="with --exported: timed batch-1 calls (default 200)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        args.alpha, args.batch_size, args.steps, args.repeats = 0.25, 16, 2, 1
    if min(args.batch_size, args.steps, args.repeats, args.replicas) < 1 or not args.alpha > 0:
        print("error: --batch-size, --steps, --repeats and --replicas must be at least 1 and --alpha above 0.",
              file=sys.stderr)
        return 2
    if args.strategy and args.batch_size % args.replicas:
        print(f"error: --batch-size {args.batch_size} does not divide among --replicas {args.replicas}; give a "
              f"multiple of it.", file=sys.stderr)
        return 2

    if args.exported:
        return exported(args)
    if args.kernels:
        return print_kernels(args)
    if args.kernel_row:
        print(json.dumps(kernel_row(args.batch_size, args.alpha, args.steps, args.repeats, args.precision,
                                    args.quick)))
        return 0

    if args.profile:
        table, wall_ms = profile_by_op(args.batch_size, args.alpha, args.repeats, args.precision)
        total = sum(ms for _, ms in table)
        print(f"training step by op type, alpha {args.alpha:g}, batch {args.batch_size}, {args.precision}, "
              f"mean of {args.repeats} traced steps, one kernel at a time")
        for op, ms in table[:15]:
            print(f"{op:<44s} {ms:8.1f} ms {100 * ms / total:6.1f}%")
        print(f"{'all kernels':<44s} {total:8.1f} ms; {wall_ms:.1f} ms per step by the wall clock (tracing included)")
        return 0

    if args.strategy:
        r = strategy_throughput(args.batch_size, args.alpha, args.steps, args.repeats, args.replicas)
        one = r["default_images_per_s"]
        step_ms = 1000 * args.batch_size / r["mirrored_images_per_s"]
        print(f"training images/s, alpha {args.alpha:g}, global batch {args.batch_size}, best of {args.repeats}; "
              f"{r['replicas']} replicas of --strategy {args.strategy} on this machine's devices")
        for name in ("default", "mirrored", "mirrored_no_sync_bn"):
            v = r[f"{name}_images_per_s"]
            print(f"{name:<24s} {v:10.1f}  {v / one:6.3f}x one device")
        print(f"all-reduce of the {r['gradient_floats'] / 1e6:.2f}M gradients: {r['gradient_all_reduce_ms']:.1f} ms, "
              f"{100 * r['gradient_all_reduce_ms'] / step_ms:.1f}% of a mirrored step ({step_ms:.0f} ms)")
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
        return 0

    if args.summaries:
        off, on = summaries_throughput(args.batch_size, args.alpha, args.steps, args.repeats)
        print(f"training images/s, alpha {args.alpha:g}, batch {args.batch_size}, best of {args.repeats}: "
              f"summaries off {off:.1f}, on {on:.1f} ({100 * (1 - on / off):.2f}% slower)")
        print(json.dumps({"train_images_per_s_summaries_off": round(off, 2), "train_images_per_s_summaries_on":
                          round(on, 2), "summaries_cost": round(1 - on / off, 5)}))
        return 0

    from lowlevel import kernels

    madds = _madds(args.alpha)
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


def exported(args) -> int:
    """--exported: one file at one thread count (a JSON line), or a folder's table."""
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        threads = [0]
    if min(threads) < 1 or args.runs < 1:
        print(f"error: --threads must be positive whole numbers such as 1,2 and --runs at least 1, not "
              f"{args.threads!r} and {args.runs}.", file=sys.stderr)
        return 2
    from lowlevel import runs

    folder = Path(args.exported)
    if (folder / "export.json").is_file():
        try:
            rows = exported_table(args.exported, threads, args.runs)
        except runs.RunError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{args.exported}: batch-1 latency (median of {args.runs} calls after 20) and batch-128 images/s "
              f"(best of 3), on random images")
        print(f"{'format':<24s} {'MB':>7s} {'threads':>7s} {'latency ms':>10s} {'images/s':>9s}")
        for r in rows:
            print(f"{r['format']:<24s} {r['bytes'] / 1e6:7.2f} {r['threads']:7d} {r['latency_ms']:10.3f} "
                  f"{r['images_per_s']:9.1f}")
        print(json.dumps(rows))
        return 0
    try:
        result = exported_speed(args.exported, threads[0], args.runs, repeats=args.repeats)
    except runs.RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
