"""tf.distribute on 2 logical CPU devices: cross-replica batch norm computes what one device computes."""
import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ENV, assert_same_weights, one_error
import shorter


pytestmark = pytest.mark.slow  # subprocesses and trained runs: left out of -m "not slow"

TWO_DEVICES = """
import json, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
"""


def in_two_devices(code: str) -> dict:
    """Run `code` after TWO_DEVICES in a process of its own (logical devices must be set before
    TensorFlow's runtime starts; warm.run: TensorFlow imported, its runtime not started); it prints one
    JSON object, returned."""
    import warm
    result = warm.run([sys.executable, "-c", TWO_DEVICES + textwrap.dedent(code)], ".", ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sync_batch_norm_equals_one_batch_norm_on_the_whole_batch():
    out = in_two_devices("""
        from lowlevel.layers import BatchNorm
        x = tf.random.stateless_normal([8, 4, 4, 3], seed=[1, 2]) * 3.0 + 2.0  # mean 2, std 3
        up = tf.random.stateless_normal([8, 4, 4, 3], seed=[3, 4])  # the gradient arriving from above

        def forward_backward(bn, x, up):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = bn(x, training=True)
                loss = tf.reduce_sum(y * up)
            return (y, *tape.gradient(loss, [x, bn.gamma, bn.beta]))

        results = {}
        for fused in (False, True):
            one = BatchNorm(3, momentum=0.5, fused=fused)
            results[f"one_fused{fused}"] = [v.numpy() for v in forward_backward(one, x, up)] + [
                one.moving_mean.numpy(), one.moving_variance.numpy()]
        for sync in (True, False):
            with strategy.scope():
                bn = BatchNorm(3, momentum=0.5)
            bn.sync = sync
            half = lambda t: strategy.experimental_distribute_values_from_function(
                lambda ctx: t[4 * ctx.replica_id_in_sync_group: 4 * ctx.replica_id_in_sync_group + 4])
            y, gx, gg, gb = strategy.run(tf.function(lambda a, b: forward_backward(bn, a, b)), args=(half(x), half(up)))
            local = strategy.experimental_local_results
            results[f"sync{sync}"] = [np.concatenate([t.numpy() for t in local(y)]),
                                      np.concatenate([t.numpy() for t in local(gx)]),
                                      sum(t.numpy() for t in local(gg)), sum(t.numpy() for t in local(gb)),
                                      bn.moving_mean.numpy(), bn.moving_variance.numpy()]
        print(json.dumps({k: [a.tolist() for a in v] for k, v in results.items()}))
    """)
    import numpy as np
    names = ["output", "d/dx", "d/dgamma", "d/dbeta", "moving_mean", "moving_variance"]
    ref = [np.array(a) for a in out["one_fusedFalse"]]
    for got, want, name in zip(map(np.array, out["one_fusedTrue"]), ref, names):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"fused {name}")
    for got, want, name in zip(map(np.array, out["syncTrue"]), ref, names):  # float32 reduction order only
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"sync {name}")
    unsynced = [np.array(a) for a in out["syncFalse"]]
    assert np.abs(unsynced[0] - ref[0]).max() > 0.01  # each half normalized by its own statistics: different
    assert np.abs(unsynced[4] - ref[4]).max() > 0.01


def test_dropout_on_each_replica_is_its_slice_of_the_global_batch_mask():
    out = in_two_devices("""
        from lowlevel.layers import dropout
        x = tf.random.stateless_normal([8, 5], seed=[1, 2])
        key = tf.constant([7, 9], tf.int64)
        one = dropout(x, 0.4, True, key)
        halves = strategy.experimental_distribute_values_from_function(
            lambda ctx: x[4 * ctx.replica_id_in_sync_group:][:4])
        two = strategy.run(tf.function(lambda h: dropout(h, 0.4, True, key)), args=(halves,))
        two = tf.concat(strategy.experimental_local_results(two), 0)
        dropped = float(tf.reduce_mean(tf.cast(one == 0, tf.float32)))
        print(json.dumps({"equal": bool(tf.reduce_all(one == two)), "dropped": dropped}))
    """)
    assert out["equal"] and 0 < out["dropped"] < 1, out


ONE_STEP = """
import dataclasses
from lowlevel import distribute, pipeline, step as train
from lowlevel.config import Config
from lowlevel.layers import BatchNorm
rng = np.random.default_rng(0)
x = rng.integers(0, 256, [80, 32, 32, 3], dtype=np.uint8)
y = rng.integers(0, 10, 80).astype(np.int32)
norm = pipeline.Normalization.of(x)

def update(strategy, fused=True, sync=True, model="mobilenet"):
    \"\"\"Every variable's change in one training step of global batch 16 (alpha 0.125).\"\"\"
    cfg, _ = Config.from_args(["--model", model, "--alpha", "0.125", "--batch-size", "16", "--lr", "0.01",
                               "--warmup-epochs", "0"])
    t = train.Trainer(dataclasses.replace(cfg, sync_bn=sync),  # --no-sync-bn
                      pipeline.Batches(x, y, norm, 16, 0, augment=True, cutout=16),
                      strategy=distribute.strategy(strategy))
    for m in t.model.submodules:
        if isinstance(m, BatchNorm):
            m.fused = fused
    before = [v.numpy() for v in t.model.variables]
    t.train_steps(pipeline.epoch_order(80, 0, 0), tf.constant(1))
    return [v.numpy() - b for v, b in zip(t.model.variables, before)]

def gap(a, b):  # |a - b| / |a| over every variable's change as one vector
    return float(np.sqrt(sum(np.sum((p - q) ** 2) for p, q in zip(a, b)) / sum(np.sum(p ** 2) for p in a)))
"""


# the series' new pieces across replicas: ShuffleNetV2's channel split and shuffle, EfficientNet-B0's
# residual sums, squeeze-and-excitation gates and drop-path masks (MobileNetV2's and V3's blocks are its
# block without drop-path; their activations, hard-swish among them, act on each value alone)
PIECES = ["shufflenet-v2", "efficientnet-b0"]


def test_a_mirrored_step_equals_a_one_device_step_up_to_summation_order():
    """One step of global batch 16 as 2 x 8 with sync batch norm against one device at batch 16.

    Bitwise equality cannot hold (the statistics are summed in another order), and relu6 makes
    rounding matter: a pre-activation within rounding of 0 or 6 switches its gradient, and every
    later batch norm spreads that over its channel.  The yardstick is a second, equally valid
    one-device computation that differs only in summation order, the unfused batch norm: the
    mirrored step's update must be as close to the one-device update as that one is, and
    without sync batch norm it is far from it.  (Measured on its 6 blocks, tests/shorter.py: 0.26% and 0.16% of
    the update's norm, without sync 18.7%; the whole network of 13 amplifies rounding: 2.8%, 2.8% and
    138%.  Over several steps even the two one-device runs come to differ by tens of percent, so one
    step is compared.)"""
    out = in_two_devices(ONE_STEP + shorter.code("mobilenet") + textwrap.dedent("""
        one = update("default")
        print(json.dumps({"unfused": gap(one, update("default", fused=False)), "mirrored": gap(one, update("mirrored")),
                          "unsynced": gap(one, update("mirrored", sync=False))}))
    """))
    assert 0 < out["unfused"] < 0.1, out  # the yardstick: small, and not vacuous
    assert out["mirrored"] < 2 * out["unfused"], out
    assert out["unsynced"] > 10 * out["unfused"], out


@pytest.mark.parametrize("model", PIECES)
def test_the_series_pieces_keep_a_mirrored_step_as_close_as_summation_order(model):
    """The same step for the lightweight series: their new pieces (squeeze-and-excitation, channel split
    and shuffle, residual sums, drop-path masks sliced from the global batch's) must not part the two
    devices further than summation order does.  Measured on tests/shorter.py's networks: 0.0004%
    (EfficientNet-B0) and 0.02% (ShuffleNetV2) of the update's norm (the whole networks, where depth
    amplifies rounding: 0.0003% and 1.1%); EfficientNet-B0 with every replica taking the first slice of the
    drop-path masks, as if each drew its own: 3.7% (the whole network: 9.7%).  So the bound is 0.5%."""
    out = in_two_devices(ONE_STEP + shorter.code(model) + textwrap.dedent(f"""
        print(json.dumps({{"gap": gap(update("default", model={model!r}), update("mirrored", model={model!r}))}}))
    """))
    assert out["gap"] < 0.005, out


MIRRORED = ["--epochs", "2", "--batch-size", "16", "--steps-per-call", "2"]  # with TINY: 5 steps per epoch


def shorter_train(*args) -> list:
    """The arguments of `python -m lowlevel.train ARGS` for subprocess or warm.run, MobileNet built as
    tests/shorter.py builds it (its runs below are all of that network: what they check does not depend on depth)."""
    code = shorter.code("mobilenet") + ("import runpy, sys\nsys.argv[0] = 'lowlevel.train'\n"
                                          "runpy.run_module('lowlevel.train', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code, *map(str, args)]


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory, data):
    """Runs of `train --strategy mirrored` on 2 logical CPUs, in one process: "seven", 7 steps straight;
    "parts", stopped at step 3 and resumed to 7; "mixed", 5 steps on one device, then 2 on two; MobileNet
    as tests/shorter.py builds it.  Made once for all workers (conftest.made_once): copy a run to change it."""
    from conftest import TINY, made_once

    def make(cwd):
        args = ["--data", str(data), *TINY, *MIRRORED]
        statuses = in_two_devices(shorter.code("mobilenet") + textwrap.dedent(f"""
            import os
            os.chdir({str(cwd)!r})
            from lowlevel import train
            print(json.dumps([
                train.main({[*args, "--run-name", "seven", "--strategy", "mirrored", "--max-steps", "7"]!r}),
                train.main({[*args, "--run-name", "parts", "--strategy", "mirrored", "--max-steps", "3"]!r}),
                train.main(["--run-name", "parts", "--resume", "--strategy", "mirrored", "--max-steps", "7"]),
                train.main({[*args, "--run-name", "mixed", "--max-steps", "5"]!r}),
                train.main(["--run-name", "mixed", "--resume", "--strategy", "mirrored", "--max-steps", "7"])]))
        """))
        assert statuses == [0, 0, 0, 0, 0]

    return made_once(tmp_path_factory, "mirrored", make) / "checkpoints"


def test_a_mirrored_run_resumes_bitwise_and_its_checkpoints_load_on_one_device(tmp_path, mirrored, cli,
                                                                              monkeypatch):
    """python -m lowlevel.train --strategy mirrored on 2 logical CPUs: stopped and resumed it ends with
    the very weights of the uninterrupted 2-replica run; its checkpoint evaluates on one device and
    resumes there; a one-device checkpoint resumes on two."""
    import shutil

    shorter.shorten("mobilenet", monkeypatch.setattr)  # as the runs were built, in this process

    assert_same_weights(mirrored / "seven" / "ckpt-7", mirrored / "parts" / "ckpt-7")
    assert (mirrored / "mixed" / "ckpt-7.index").is_file()  # 1 replica, then 2
    shutil.copytree(mirrored, tmp_path / "checkpoints")
    status, out, err = cli("evaluate", tmp_path, "--checkpoint", "checkpoints/seven")  # this process: one device
    assert status == 0 and "test accuracy" in out, err
    assert cli("train", tmp_path, "--run-name", "mixed", "--resume", "--max-steps", "8")[0] == 0  # then 1 again
    assert (tmp_path / "checkpoints" / "mixed" / "ckpt-8.index").is_file()


def test_an_indivisible_batch_is_one_sentence(tmp_path, data):
    out = in_two_devices(f"""
        import contextlib, io, os
        os.chdir({str(tmp_path)!r})
        from lowlevel import train
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = train.main(["--data", {str(data)!r}, "--run-name", "odd", "--strategy", "mirrored",
                                 "--batch-size", "15", "--val-size", "20", "--progress", "none"])
        print(json.dumps([status, err.getvalue()]))
    """)
    assert out == [2, "error: --batch-size 15 does not divide among the 2 replicas of --strategy mirrored; give a "
                      "multiple of 2.\n"]


@pytest.mark.parametrize("tf_config, phrase", [
    (None, "--strategy multi-worker needs the TF_CONFIG environment variable"),
    ("{not json", "is not a cluster: give JSON such as"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}', "with this worker's index"),
    ('{"cluster": {"ps": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}', "is not a cluster"),
])
def test_multi_worker_without_a_good_tf_config_is_one_sentence(tmp_path, data, cli, monkeypatch, tf_config, phrase):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    one_error(*cli("train", tmp_path, "--data", data, "--run-name", "mw", "--strategy", "multi-worker")[::2], phrase)
    assert not (tmp_path / "checkpoints").exists()


def test_multi_worker_needs_a_run_name(tmp_path, data, cli):
    one_error(*cli("train", tmp_path, "--data", data, "--strategy", "multi-worker")[::2],
              "--strategy multi-worker needs --run-name, the same on every worker")


# ---------------------------------------------------------------- several processes: multi-worker

def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(cwd, args, n: int = 2) -> list[subprocess.Popen]:
    """n processes of `python -m lowlevel.train ARGS --strategy multi-worker` (shorter_train) on 127.0.0.1,
    each with its TF_CONFIG, and TMPDIR inside cwd (where the other workers' temporary run folders go)."""
    ports, tmp = free_ports(n), Path(cwd) / "tmp"
    tmp.mkdir()
    procs = []
    for i in range(n):
        config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": i}}
        env = dict(ENV, TF_CONFIG=json.dumps(config), TMPDIR=str(tmp))
        procs.append(subprocess.Popen(shorter_train(*args, "--strategy", "multi-worker"), cwd=cwd, env=env,
                                      text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


@pytest.fixture
def workers():
    """start(cwd, args) -> the processes; whatever happens, every one is ended when the test ends."""
    started = []

    def start(cwd, args, n=2):
        started.extend(start_workers(cwd, args, n))
        return started[-n:]
    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate()


def test_two_worker_processes_train_what_two_devices_train_and_only_the_chief_writes(tmp_path, data, workers,
                                                                                        mirrored):
    from conftest import TINY

    args = ["--data", data, *TINY, *MIRRORED, "--max-steps", "7"]
    procs = workers(tmp_path, [*args, "--run-name", "mw"])
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "multi-worker: this is worker 1 of TF_CONFIG's 2 (127.0.0.1:" in outs[1][0]
    run, two = tmp_path / "checkpoints" / "mw", mirrored / "seven"
    assert not list((tmp_path / "tmp").glob("lowlevel-worker-*"))  # the other worker's temporary run folder
    # the same run as 2 replicas in one process, 2 logical devices: the very same weights (a sum of two
    # float32 values does not depend on which is added to which)
    assert_same_weights(run / "ckpt-7", two / "ckpt-7")
    written = sorted(p.name for p in run.rglob("*"))
    assert written == sorted(p.name for p in two.rglob("*"))  # what one process writes
    # timings and kernels aside
    timeless = [(row.split(",")[:-3]) for row in (run / "history.csv").read_text().splitlines()]
    assert timeless == [(row.split(",")[:-3]) for row in (two / "history.csv").read_text().splitlines()]


def test_a_killed_worker_makes_the_other_stop_with_one_sentence(tmp_path, data, workers, killed=0):
    """SIGKILL the chief (worker 0, also TensorFlow's coordination leader) of two workers once it has
    saved epoch 1: the other exits within a bounded time with one sentence (not a hang, not a
    traceback) and removes its temporary folder, and the chief's checkpoint continues in one process
    (a checkpoint of 2 replicas resumed by 1).  (Killing worker 1 instead stops the chief the same
    way; that case is left out to keep the suite short.)"""
    import warm
    from conftest import TINY

    procs = workers(tmp_path, ["--data", data, "--epochs", "200", *TINY, "--batch-size", "16", "--run-name", "mw"])
    run = tmp_path / "checkpoints" / "mw"
    deadline = time.monotonic() + 240
    while not (run / "learning_curves.png").exists():  # drawn after epoch 1's saves and their lists: all written
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.2)
    procs[killed].kill()
    other = procs[1 - killed]
    start = time.monotonic()
    out, err = other.communicate(timeout=120)
    waited = time.monotonic() - start
    assert other.returncode == 1, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: another worker of the TF_CONFIG cluster stopped answering"), err
    assert "start every worker again with: python -m lowlevel.train" in last and "Traceback" not in err
    assert waited < 60, waited
    assert not list((tmp_path / "tmp").glob("lowlevel-worker-*"))  # (the killed one leaves AutoGraph's files)
    resumed = warm.run(shorter_train("--run-name", "mw", "--resume", "--max-steps", "12"), tmp_path, ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run / "ckpt-12.index").is_file()
