"""`python -m lowlevel.bench profile`: milliseconds per training step by op type, one kernel at a time."""
from __future__ import annotations

import time

from lowlevel._tf import tf


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
    from lowlevel.step import cross_entropy

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


def run(args) -> int:
    table, wall_ms = profile_by_op(args.batch_size, args.alpha, args.repeats, args.precision)
    total = sum(ms for _, ms in table)
    print(f"training step by op type, alpha {args.alpha:g}, batch {args.batch_size}, {args.precision}, "
          f"mean of {args.repeats} traced steps, one kernel at a time")
    for op, ms in table[:15]:
        print(f"{op:<44s} {ms:8.1f} ms {100 * ms / total:6.1f}%")
    print(f"{'all kernels':<44s} {total:8.1f} ms; {wall_ms:.1f} ms per step by the wall clock (tracing included)")
    return 0
