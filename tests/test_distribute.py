"""tf.distribute on 2 logical CPU devices: cross-replica batch norm computes what one device computes."""
import json
import subprocess
import sys
import textwrap

from conftest import ENV

TWO_DEVICES = """
import json, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
"""


def in_two_devices(code: str) -> dict:
    """Run `code` after TWO_DEVICES in a new process (logical devices must be set before TensorFlow
    starts); it prints one JSON object, returned."""
    result = subprocess.run([sys.executable, "-c", TWO_DEVICES + textwrap.dedent(code)], capture_output=True,
                            text=True, env=ENV, timeout=300)
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
