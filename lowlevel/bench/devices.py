"""`python -m lowlevel.bench strategy`: the training step under tf.distribute against one device, and
`python -m lowlevel.bench summaries`: the step with TensorBoard summaries off and on, as train writes them.

On a machine without GPUs `strategy` splits the CPU into `--replicas` logical devices, which share
its cores (so any gain comes from running the replicas' half-batches side by side, not from more
hardware); the step without cross-replica batch norm, and the gradients' all-reduce alone, say
what the strategy's communication costs.
"""
from __future__ import annotations

import json

from lowlevel._tf import tf

from lowlevel.bench import timing
from lowlevel.bench.timing import best_time


def strategy_throughput(batch: int, alpha: float, steps: int, repeats: int, replicas: int) -> dict:
    """Training images/s of one device, of `replicas` mirrored replicas with and without sync batch
    norm, and the milliseconds of one all-reduce of every gradient (summed over the replicas)."""
    from lowlevel import distribute

    if not tf.config.list_physical_devices("GPU"):  # before TensorFlow's first op: R logical CPUs
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    mirrored = distribute.strategy("mirrored")
    result = {"replicas": distribute.replicas(mirrored)}
    for name, strategy, sync in [("default", None, True), ("mirrored", mirrored, True),
                                 ("mirrored_no_sync_bn", mirrored, False)]:
        trainer, order, _ = timing.trainer(batch, alpha, steps, strategy=strategy, sync_bn=sync)
        result[f"{name}_images_per_s"] = timing.training_images_per_s(trainer, order, steps, repeats)
    n = tf.constant(steps)
    params = trainer.model.trainable_variables  # read in the step: constants' sums would be folded away

    # the loop outside strategy.run, as in Trainer.train_steps; one value of each sum, so none is pruned
    all_reduce = timing.summed(lambda i: mirrored.experimental_local_results(mirrored.run(
        lambda: tf.add_n([tf.reshape(g, [-1])[0] for g in distribute.all_reduce_sum(
            [tf.identity(v) for v in params])])))[0])

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

    from lowlevel.events import Events

    trainer, order, _ = timing.trainer(batch, alpha, steps)
    calls = [min(per_call, steps - k) for k in range(0, steps, per_call)]
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


def run_strategy(args) -> int:
    r = strategy_throughput(args.batch_size, args.alpha, args.steps, args.repeats, args.replicas)
    one = r["default_images_per_s"]
    step_ms = 1000 * args.batch_size / r["mirrored_images_per_s"]
    print(f"training images/s, alpha {args.alpha:g}, global batch {args.batch_size}, best of {args.repeats}; "
          f"{r['replicas']} replicas of --strategy mirrored on this machine's devices")
    for name in ("default", "mirrored", "mirrored_no_sync_bn"):
        v = r[f"{name}_images_per_s"]
        print(f"{name:<24s} {v:10.1f}  {v / one:6.3f}x one device")
    print(f"all-reduce of the {r['gradient_floats'] / 1e6:.2f}M gradients: {r['gradient_all_reduce_ms']:.1f} ms, "
          f"{100 * r['gradient_all_reduce_ms'] / step_ms:.1f}% of a mirrored step ({step_ms:.0f} ms)")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
    return 0


def run_summaries(args) -> int:
    off, on = summaries_throughput(args.batch_size, args.alpha, args.steps, args.repeats)
    print(f"training images/s, alpha {args.alpha:g}, batch {args.batch_size}, best of {args.repeats}: "
          f"summaries off {off:.1f}, on {on:.1f} ({100 * (1 - on / off):.2f}% slower)")
    print(json.dumps({"train_images_per_s_summaries_off": round(off, 2), "train_images_per_s_summaries_on":
                      round(on, 2), "summaries_cost": round(1 - on / off, 5)}))
    return 0
