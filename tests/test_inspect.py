"""python -m lowlevel.inspect and the taps it reads: equal to the forward pass, statistics checked by hand."""
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from conftest import TINY, one_error
from lowlevel import inspect
from lowlevel.nets.mobilenet import MobileNetV1


@pytest.mark.parametrize("standard", [False, True])
def test_taps_are_the_forward_pass(standard):
    model = MobileNetV1(alpha=0.125, standard=standard)
    x = tf.random.stateless_normal([4, 32, 32, 3], seed=[1, 2])
    logits = model(x, training=False)
    taps = model(x, training=False, taps=True)
    names = [name for name, _, _ in model.conv_layers()]
    assert list(taps) == names + ["logits"] and len(names) == (14 if standard else 27)
    np.testing.assert_array_equal(taps["logits"].numpy(), logits.numpy())
    last = model.classifier(tf.reduce_mean(taps[names[-1]], axis=[1, 2]))  # the last tap, pooled and classified
    np.testing.assert_array_equal(last.numpy(), logits.numpy())
    pre = model(x, training=False, taps="pre")
    assert list(pre)[:2] == ["stem:bn_input", "stem"]
    for name, _, bn in model.conv_layers():  # each output is relu6(batch norm(its tapped input))
        np.testing.assert_allclose(tf.nn.relu6(bn(pre[f"{name}:bn_input"])).numpy(), pre[name].numpy(), atol=1e-5)
        np.testing.assert_array_equal(pre[name].numpy(), taps[name].numpy())


def test_dead_and_clipped_channels_on_a_hand_built_layer():
    acc = inspect.Accumulator(4)
    out = np.zeros([2, 3, 3, 4], np.float32)
    out[..., 0] = 1.0  # alive
    out[0, 0, 0, 1] = 0.5  # alive on one pixel of one image only
    out[..., 2] = 0.0  # dead
    out[..., 3] = 6.0  # always clipped
    acc.add(out, np.ones_like(out))
    acc.add(out * np.array([1, 0, 1, 1], np.float32), np.ones_like(out))  # channel 1 dead in this batch: still alive
    row = acc.row()
    assert row["dead_channels"] == 1 and row["always_clipped"] == 1
    # 144 values: zeros are channel 1's 17 + 18 and channel 2's 18 + 18; sixes are channel 3's 36
    assert row["zero_fraction"] == 71 / 144 and row["clipped_fraction"] == 36 / 144
    assert inspect.dead_channels(np.array([0.0, -1.0, 1e-6])) == 2


def test_weight_range_on_a_hand_built_kernel():
    k = np.zeros([1, 1, 3, 4], np.float32)
    k[0, 0, 0] = [1.0, -2.0, 2.0, 8.0]  # channel maxima |W|: 1, 2, 2, 8 -> median 2, max 8
    assert inspect.weight_range_ratio(k) == 4.0
    d = np.zeros([3, 3, 5, 1], np.float32)
    d[1, 1, :, 0] = [1, 1, 1, 1, -10]  # depthwise: one channel 10x the median
    assert inspect.weight_range_ratio(d) == 10.0


def test_gates_and_residual_shares_on_hand_built_taps():
    blocks = inspect.Blocks()
    gate = np.array([[0.05, 0.5, 0.95, 0.5], [0.05, 0.5, 0.5, 0.5]], np.float32).reshape(2, 1, 1, 4)
    shortcut = np.zeros([2, 2, 2, 3], np.float32)
    shortcut[:, 0, 0, 0] = 1.0  # |x| = 1 for both images
    branch = np.zeros_like(shortcut)
    branch[0, 1, 1, :] = [2.0, 2.0, 1.0]  # |F(x)| = 3: share 3 / 4
    branch[1, 0, 1, 0] = 1.0  # |F(x)| = 1: share 1 / 2
    blocks.add({"blocks[1]:gate": tf.constant(gate), "blocks[2].project": tf.zeros([1]),
                "blocks[2]:shortcut": tf.constant(shortcut), "blocks[2]:branch": tf.constant(branch)})
    blocks.add({"blocks[1]:gate": tf.constant(gate[:1])})  # a second batch of one image
    table = blocks.table().set_index("block")
    gates = np.concatenate([gate, gate[:1]]).ravel()
    assert list(table.index) == ["blocks[1]", "blocks[2]"]
    np.testing.assert_allclose(table.loc["blocks[1]", ["gate_mean", "gate_std"]], [gates.mean(), gates.std()], rtol=1e-6)
    assert table.loc["blocks[1]", "gates_off"] == 3 / 12 and table.loc["blocks[1]", "gates_on"] == 2 / 12
    assert table.loc["blocks[2]", "residual_share"] == pytest.approx((3 / 4 + 1 / 2) / 2, rel=1e-12)
    assert np.isnan(table.loc["blocks[1]", "residual_share"]) and np.isnan(table.loc["blocks[2]", "gate_mean"])
    assert inspect.Blocks().table().empty  # MobileNet v1: no blocks.csv


@pytest.mark.parametrize("standard, conv, depthwise", [(False, 14, 13), (True, 14, 0)])
def test_op_counts_of_inference_match_the_architecture(standard, conv, depthwise):
    ops = inspect.op_counts(MobileNetV1(alpha=0.125, standard=standard))
    assert ops.get("Conv2D", 0) == conv and ops.get("DepthwiseConv2dNative", 0) == depthwise
    assert ops["Relu6"] == conv + depthwise and ops["MatMul"] == 1
    assert "FusedBatchNormV3" not in ops  # folded into the convolutions


@pytest.mark.slow
def test_inspect_a_run(tmp_path, straight, cli):
    status, out, err = cli("inspect", tmp_path, "--checkpoint", straight[0], "--images", "30", "--image", "2")
    assert status == 0, err
    folder = straight[0] / "inspect-30"
    table = pd.read_csv(folder / "layers.csv")
    assert len(table) == 27 and table.layer[0] == "stem" and table.shape[1] >= 17
    assert (table.dead_channels >= 0).all() and (table.weight_range_ratio >= 1).all() and (table.grad_norm > 0).all()
    assert table["shape"][0] == "32x32x8" and table["shape"][26] == "2x2x128"
    for png in ("stem_filters", "depthwise_filters", "feature_maps", "histograms", "dead_and_ranges", "batch_norms"):
        assert (folder / f"{png}.png").read_bytes()[:4] == b"\x89PNG", png
    assert "27 convolutions, 30 test images" in out and "14 Conv2D, 13 DepthwiseConv2dNative" in out
    quantized = pd.read_csv(folder / "quantization.csv")  # the columns' arithmetic: tests/test_quantize.py
    assert list(quantized.layer) == [*table.layer, "logits"]
    assert (quantized.weight_sqnr_channel_db >= quantized.weight_sqnr_tensor_db).iloc[:-1].all()
    assert (quantized.iloc[:, 1:].iloc[:-1].notna()).all().all() and "int8 logits against float: " in out


@pytest.mark.slow
def test_inspect_errors_are_one_sentence(tmp_path, straight, cli):
    one_error(*cli("inspect", tmp_path, "--checkpoint", tmp_path / "nowhere")[::2], "is neither a run folder")
    one_error(*cli("inspect", tmp_path, "--checkpoint", straight[0], "--image", "40", "--images", "30")[::2],
              "--image must be between 0 and 29")


@pytest.mark.slow
def test_graph_writes_the_training_step_and_counts_its_ops(tmp_path, straight, cli):
    status, out, err = cli("inspect", tmp_path, "--checkpoint", straight[0], "--graph")
    assert status == 0, err
    training = [line for line in out.splitlines() if line.startswith("training step")][0]
    # forward, input gradient and filter gradient of each of the 14 regular and 13 depthwise convolutions; the
    # last depthwise one, on 2x2 maps, has its filter gradient as a 14th depthwise convolution (lowlevel/gradients.py)
    for phrase in ("14 Conv2D,", "14 Conv2DBackpropFilter", "14 DepthwiseConv2dNative,",
                   "13 DepthwiseConv2dNativeBackpropInput", "12 DepthwiseConv2dNativeBackpropFilter",
                   "27 FusedBatchNormV3", "27 FusedBatchNormGradV3"):
        assert phrase in training, (phrase, training)
    plugins = []  # trace_export writes the graph as a summary for TensorBoard's graph plugin
    for path in (straight[0] / "inspect-30" / "graph").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            plugins += [(v.tag, v.metadata.plugin_data.plugin_name) for v in event.summary.value]
    assert plugins == [("train_steps", "graph_run_metadata_graph")]


@pytest.mark.slow
def test_inspect_a_standard_run_layer_by_layer(tmp_path, data, cli):
    """A mobilenet-standard run: 14 rows, no depthwise ones, the same columns as the separable run's."""
    status, out, err = cli("train", tmp_path, "--data", data, "--run-name", "std", "--model", "mobilenet-standard",
                           "--epochs", "1", *TINY)
    assert status == 0, err
    status, out, err = cli("inspect", tmp_path, "--checkpoint", tmp_path / "checkpoints" / "std", "--images", "20")
    assert status == 0, err
    table = pd.read_csv(tmp_path / "checkpoints" / "std" / "inspect-10" / "layers.csv")
    assert len(table) == 14 and list(table.layer[:2]) == ["stem", "blocks[0].conv"]
    assert set(table.op) == {"Conv2D"} and table.gamma_median.notna().all() and (table.weight_range_ratio >= 1).all()
    assert not (tmp_path / "checkpoints" / "std" / "inspect-10" / "depthwise_filters.png").exists()
    assert "14 convolutions, 20 test images" in out and "inference graph: 14 Conv2D" in out
    assert "DepthwiseConv2dNative" not in out


def test_batch_norm_skew_of_a_folded_layer_is_that_of_the_layer_unfolded():
    """A --qat run's batch-norm input is z = s x (the batch norm folded into the kernel, s = gamma /
    sqrt(moving_variance + eps)): skew(moments of z, folded=True) is skew(moments of x)."""
    from lowlevel.layers import BatchNorm

    rng = np.random.default_rng(0)
    bn = BatchNorm(6)
    bn.gamma.assign(rng.uniform(0.2, 2, 6) * rng.choice([-1, 1], 6))
    bn.moving_mean.assign(rng.normal(size=6)), bn.moving_variance.assign(rng.uniform(0.5, 2, 6))
    mean, var = rng.normal(size=6), rng.uniform(0.5, 2, 6)
    s = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    want = inspect.skew(mean, var, bn)
    assert want[0] > 0.1
    np.testing.assert_allclose(inspect.skew(mean * s, var * s * s, bn, folded=True), want, rtol=1e-5)
