"""Training on several devices with tf.distribute: the same hand-written step, run on every replica.

    python -m lowlevel.train --strategy mirrored ...     # every visible GPU (or the logical devices a test makes)
    TF_CONFIG='{...}' python -m lowlevel.train --strategy multi-worker ...   # on each machine: see the README

TensorFlow's `MirroredStrategy` keeps a copy of every variable on each device and
runs the step once per device ("replica").  lowlevel's step under it:

  1. every replica draws the global batch B exactly as one device would (same
     order, same augmentation keys), and keeps its slice: replica r of R takes
     images [r B/R, (r+1) B/R) (and dropout's masks for them, layers.dropout);
  2. forward and backward on that slice; each batch norm computes the global
     batch's statistics across replicas (layers.BatchNorm, "sync batch norm");
  3. the loss is the slice's mean divided by R, so the all-reduced (summed)
     gradients are the gradients of the global batch's mean loss;
  4. every replica applies the same hand-written optimizer update to the same
     all-reduced gradients, so the copies stay equal.  Each variable is created
     with aggregation ONLY_FIRST_REPLICA, which tells TensorFlow that an update made
     on every replica is one update: the first replica's copy is written to all.

`--strategy multi-worker` is TensorFlow's `MultiWorkerMirroredStrategy`: the same
step, with replicas in several processes (one per machine, each with its GPUs or
its CPU), named by the TF_CONFIG environment variable, and the all-reduces done
over the network.  Every worker trains; only the chief (worker 0, or the "chief" task if
TF_CONFIG names one) writes the run folder.  The others write their checkpoints into a temporary folder they delete,
as TensorFlow's guide does, since saving may itself need every worker.

A run's result then depends on the number of replicas only through float32
reduction order, and its checkpoints (one value per variable) restore on any
number of devices.  The default strategy (`--strategy default`) is TensorFlow's
no-op one, under which the same step runs on one device.
"""
from __future__ import annotations

import contextlib
import json
import os

from lowlevel._tf import tf
from lowlevel.config import ConfigError
from lowlevel.layers import cross_replica_sum

PEER_LOST = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
             tf.errors.CancelledError)  # what a collective raises when another worker has gone


def peer_lost_errors(name: str) -> tuple:
    """The errors that mean another worker is gone under the strategy `name`: PEER_LOST for multi-worker,
    none elsewhere (where such an error is an error of its own, and stays one)."""
    return PEER_LOST if name == "multi-worker" else ()


def cluster() -> dict:
    """TF_CONFIG, checked: {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}
    (a "chief" job of one address may come first, as TensorFlow allows)."""
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        raise ConfigError("--strategy multi-worker needs the TF_CONFIG environment variable, the JSON that lists "
                          "every worker's host:port and says which one this is (see the README); set it for each "
                          "worker's command.")
    try:
        config = json.loads(text)
        jobs, task = config["cluster"], config["task"]
        addresses = jobs[task["type"]]
        ok = (isinstance(addresses, list) and 0 <= int(task["index"]) < len(addresses)
              and set(jobs) <= {"chief", "worker"} and all(isinstance(a, str) and ":" in a
                                                             for job in jobs.values() for a in job))
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise ConfigError(f"TF_CONFIG={text!r} is not a cluster: give JSON such as {{\"cluster\": {{\"worker\": "
                          f"[\"host1:12345\", \"host2:12345\"]}}, \"task\": {{\"type\": \"worker\", "
                          f"\"index\": 0}}}}, with this worker's index.")
    return config


def strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy `name` (one of Config's --strategy choices)."""
    if name == "mirrored":  # every GPU; without one, every logical CPU device (one, unless a test made more)
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        # on CPUs, sums as ordinary ops on one device: the default collective ops were paired in different
        # orders by the two replicas inside one step (a [58962] gradient all-reduce met a [9] batch-norm one)
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multi-worker":  # must come before anything else runs on TensorFlow: it starts this worker's server
        config = cluster()
        workers = [a for job in ("chief", "worker") for a in config["cluster"].get(job, [])]
        print(f"multi-worker: this is {config['task']['type']} {config['task']['index']} of TF_CONFIG's "
              f"{len(workers)} ({', '.join(workers)}); waiting until every one has started", flush=True)
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder: always, but for the workers of multi-worker after the first."""
    return strategy.extended.should_checkpoint


@contextlib.contextmanager
def scope(strategy: tf.distribute.Strategy):
    """Create variables for `strategy`: under its scope, each one ONLY_FIRST_REPLICA (see above)."""
    def creator(next_creator, **kwargs):
        kwargs["aggregation"] = tf.VariableAggregation.ONLY_FIRST_REPLICA
        return next_creator(**kwargs)

    with strategy.scope(), tf.variable_creator_scope(creator):
        yield


def replicas(strategy: tf.distribute.Strategy) -> int:
    return strategy.num_replicas_in_sync


def local_slice(*tensors):
    """This replica's slice [r B/R, (r+1) B/R) of each [B, ...] tensor (inside strategy.run); with one
    replica, the tensors themselves."""
    ctx = tf.distribute.get_replica_context()
    r, n = ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync
    if n == 1:
        return tensors
    b = tf.shape(tensors[0])[0] // n
    return tuple(t[r * b:(r + 1) * b] for t in tensors)


def all_reduce_sum(values):
    """The sum over replicas of each value (a list), inside strategy.run; with one replica, the values."""
    return cross_replica_sum(values)
