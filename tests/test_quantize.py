"""Quantization-aware training (lowlevel/quantize.py): fake quantization and its straight-through gradient
against their definitions, the folded batch norm against conv + batch norm, and a QAT run through
train, resume and evaluate."""
import shutil

import numpy as np
import pytest
import tensorflow as tf

from lowlevel import quantize, quantize_errors
from lowlevel.layers import BatchNorm
from lowlevel.nets.mobilenet import MobileNetV1

from conftest import assert_same_weights, one_error


def reference_fake_quant(x, lo, hi, levels=256):
    """The definition: [lo, hi] nudged so that 0 is a grid point, then x clamped and rounded to the grid."""
    scale = (hi - lo) / (levels - 1)
    zero = np.clip(np.round(-lo / scale), 0, levels - 1)  # the integer that stands for 0
    lo_n, hi_n = -zero * scale, (levels - 1 - zero) * scale
    return np.round((np.clip(x, lo_n, hi_n) - lo_n) / scale) * scale + lo_n, (lo_n, hi_n)


def test_fake_quant_rounds_to_the_nudged_grid_and_its_gradient_is_straight_through():
    rng = np.random.default_rng(0)
    for lo, hi in [(-1.3, 2.9), (0.0, 6.0), (-0.2, 0.05)]:
        x = rng.uniform(2 * lo - 0.5, 2 * hi + 0.5, 20000).astype(np.float32)
        want, (lo_n, hi_n) = reference_fake_quant(x.astype(np.float64), lo, hi)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = quantize.fake_quant(xt, tf.constant(lo), tf.constant(hi))
        grad = tape.gradient(y, xt).numpy()
        scale = (hi - lo) / 255
        np.testing.assert_allclose(y.numpy(), want, atol=1e-4 * scale + 1e-6)
        assert len(np.unique(np.round(y.numpy() / scale, 3))) <= 256
        inside = (x >= lo_n + 1e-5) & (x <= hi_n - 1e-5)
        outside = (x < lo_n - 1e-5) | (x > hi_n + 1e-5)
        assert inside.sum() > 1000 and outside.sum() > 1000
        assert np.all(grad[inside] == 1.0) and np.all(grad[outside] == 0.0)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("depthwise", [True, False])
def test_weights_round_symmetrically_to_127_steps_of_their_largest_value(per_channel, depthwise):
    """W' [k, k, C, m] (depthwise: output channel c*m + q is W[..., c, q]) or [k, k, C_in, C_out]: each
    output channel (or the whole tensor) on the grid max|W| / 127 * {-127..127}, its largest value kept."""
    rng = np.random.default_rng(1)
    shape = [3, 3, 6, 2] if depthwise else [3, 3, 4, 6]
    spread = rng.uniform(0.01, 3, 12 if depthwise else 6).reshape(shape[2:] if depthwise else [6])  # unequal ranges
    w = (rng.normal(size=shape) * spread).astype(np.float32)
    q = quantize.fake_quant_weights(tf.constant(w), per_channel, depthwise).numpy()
    channels = w.reshape(9, 12) if depthwise else w.reshape(-1, 6)
    rounded = q.reshape(9, 12) if depthwise else q.reshape(-1, 6)
    top = np.abs(channels).max(axis=0) if per_channel else np.full(channels.shape[1], np.abs(w).max())
    steps = rounded / (top / 127)
    np.testing.assert_allclose(steps, np.round(steps), atol=2e-3)
    assert np.abs(np.round(steps)).max() == 127
    assert np.all(np.abs(rounded - channels) <= top / 127 / 2 * (1 + 1e-5))  # the nearest grid point


def tiny_net(seed=0):
    tf.random.set_seed(seed)
    net = MobileNetV1(alpha=0.25)
    rng = np.random.default_rng(seed)
    for bn in [m for m in net.submodules if isinstance(m, BatchNorm)]:  # batch norms that do something
        c = bn.channels
        bn.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32) * rng.choice([-1, 1], c))
        bn.beta.assign(rng.normal(0, 0.1, c).astype(np.float32))
        bn.moving_mean.assign(rng.normal(0, 0.1, c).astype(np.float32))
        bn.moving_variance.assign(rng.uniform(0.5, 2, c).astype(np.float32))
    return net


def test_without_rounding_the_folded_training_step_is_conv_plus_batch_norm(monkeypatch):
    """With fake quantization replaced by the identity, a training call of the quantized network (every
    batch norm folded into its convolution's kernel, statistics of z = conv(x, W s) rescaled) computes
    the float network's logits, gradients and moving statistics, to float32 rounding.

    The gradients' yardstick is the float network with the unfused batch norm, equally valid and rounded
    otherwise (relu6 switches the gradient of a pre-activation within rounding of 0 or 6, and every later
    batch norm spreads that over its channel): the folded step's gradients must be as close to the fused
    float step's as that is.  (Measured: 1.1% and 1.0% of the gradient's norm.)"""
    x = tf.random.stateless_normal([16, 32, 32, 3], [0, 1])
    labels = tf.constant(np.arange(16) % 10)

    def step(model, variables):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return logits.numpy(), [g.numpy() for g in tape.gradient(loss, variables)]

    def gap(a, b):  # |a - b| / |a| over every gradient as one vector
        return np.sqrt(sum(np.sum((p - q) ** 2) for p, q in zip(a, b)) / sum(np.sum(p ** 2) for p in a))

    plain, unfused = tiny_net(), tiny_net()
    want_logits, want_grads = step(plain, plain.trainable_variables)
    for bn in [m for m in unfused.submodules if isinstance(m, BatchNorm)]:
        bn.fused = False
    yardstick = gap(want_grads, step(unfused, unfused.trainable_variables)[1])
    monkeypatch.setattr(quantize, "fake_quant", lambda x, lo, hi: x)
    monkeypatch.setattr(quantize, "fake_quant_weights",  # a step of 0: no bias rounding either
                        lambda w, per_channel, depthwise=False, steps=False: (w, tf.constant(0.0)) if steps else w)
    net = tiny_net()
    logits, grads = step(quantize.Quantized(net, "per-channel", freeze_after=10), net.trainable_variables)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4 * np.abs(want_logits).max())
    assert 0 < yardstick < 0.05
    assert gap(want_grads, grads) < 2 * yardstick, (gap(want_grads, grads), yardstick)
    bns = [m for m in net.submodules if isinstance(m, BatchNorm)]
    for a, b in zip(bns, [m for m in plain.submodules if isinstance(m, BatchNorm)], strict=True):
        np.testing.assert_allclose(a.moving_mean.numpy(), b.moving_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.moving_variance.numpy(), b.moving_variance.numpy(), rtol=1e-4, atol=1e-5)


def test_after_the_freeze_training_computes_the_int8_network_and_its_statistics_stay():
    """Once `freeze_after` training calls have run, a training call uses the moving statistics (the folded
    layer the int8 network runs): its logits are the inference logits, and no statistic moves; the
    folded inference path (`inference`) computes the same rounded network as a call."""
    x = tf.random.stateless_normal([8, 32, 32, 3], [0, 2])
    x2 = 2 * tf.random.stateless_normal([8, 32, 32, 3], [0, 3])
    net = quantize.Quantized(tiny_net(), "per-tensor", freeze_after=1)
    net(x, training=True)  # the one call with batch statistics: sets the activation ranges
    moving = [v for v in net.variables if "moving" in v.name]
    before = [v.numpy() for v in moving]
    stem = net.net.stem.quantization.input
    assert stem.hi.numpy() == pytest.approx(float(tf.reduce_max(x))) and net.steps.numpy() == 1
    trained = net(x2, training=True).numpy()
    for v, b in zip(moving, before):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.name)
    np.testing.assert_allclose(trained, net(x2).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.inference(x2).numpy(), net(x2).numpy(), rtol=1e-5, atol=1e-5)
    # the ranges are moving averages: the second batch moved the stem input's 1% of the way to its own
    m = quantize.RANGE_MOMENTUM
    assert stem.hi.numpy() == pytest.approx(m * float(tf.reduce_max(x)) + (1 - m) * float(tf.reduce_max(x2)))
    assert stem.lo.numpy() == pytest.approx(m * float(tf.reduce_min(x)) + (1 - m) * float(tf.reduce_min(x2)))


@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_biases_are_rounded_to_the_int32_grid_of_their_input_and_weights_with_a_straight_through_gradient(scheme):
    """The int8 file holds a bias as int32 on the scale s_in s_w (its layer's input step times its weights'
    step, per output channel or per tensor): the simulated network adds each bias rounded there, and the
    global pooling reads its map rounded on the classifier's input range."""
    net = quantize.Quantized(tiny_net(), scheme, freeze_after=1)
    for i in range(2):
        net(tf.random.stateless_normal([8, 32, 32, 3], [1, i]), training=True)
    net.inference(tf.random.stateless_normal([4, 32, 32, 3], [1, 9]))  # the calls record their steps
    stem, classifier = net.net.stem.quantization, net.net.classifier.quantization
    folded, shift = net.net.bn_stem.fold(net.net.stem.kernel)
    top = np.abs(folded.numpy()).reshape(-1, folded.shape[-1]).max(0)  # [C_out]
    w_step = top / 127 if scheme == "per-channel" else top.max() / 127
    want = float(stem.input.hi - stem.input.lo) / 255 * w_step
    np.testing.assert_allclose(stem._last.bias_step.numpy(), want * np.ones_like(top), rtol=1e-5)
    b = tf.Variable(shift)
    with tf.GradientTape() as tape:
        rounded = stem.bias(b)
        loss = tf.reduce_sum(rounded * np.arange(len(top), dtype=np.float32))
    n = rounded.numpy() / want
    np.testing.assert_allclose(n, np.round(n), atol=1e-3)  # on the grid ...
    assert np.all(np.abs(rounded.numpy() - shift.numpy()) <= want / 2 * (1 + 1e-5))  # ... at its nearest point
    np.testing.assert_array_equal(tape.gradient(loss, b).numpy(), np.arange(len(top)))  # straight through
    c_top = np.abs(net.net.classifier.kernel.numpy()).max()
    c_step = float(classifier.input.hi - classifier.input.lo) / 255 * c_top / 127
    np.testing.assert_allclose(float(classifier._last.bias_step), c_step, rtol=1e-5)  # per tensor in both schemes
    features = tf.random.stateless_uniform([2, 2, 2, net.net.classifier.in_features], [1, 3], 0.0, 2.0)
    np.testing.assert_array_equal(classifier.pooled(features).numpy(),  # outside training: the range stays
                                  quantize.fake_quant(features, classifier.input.lo, classifier.input.hi).numpy())


# three epochs, as config.QAT_DEFAULTS: two (one with batch statistics, one frozen) leave the tiny network
# at 87-91% of its 100 test images on some CPUs, too close to the 90% that makes the agreement mean something
QAT = ["--qat", "per-channel", "--epochs", "3", "--lr", "0.01", "--warmup-epochs", "0", "--qat-freeze-bn", "1"]


def assert_int8_file_is_the_simulated_network(cwd, cli):
    """export writes the QAT run "qat" as an int8 file from its learned ranges: integer throughout
    (uint8 pixels in at scale 1, the probabilities the one float32 tensor), predicting what the
    simulated network predicts wherever it is not a near-tie (and evaluate --agree-with says how often)."""
    from lowlevel import export, runs
    from lowlevel.exported import Exported, interpreter

    status, out, err = cli("export", cwd, "--checkpoint", "checkpoints/qat", "--format", "tflite-int8")
    assert status == 0, err
    path = cwd / "checkpoints" / "qat" / "export" / "int8.tflite"
    file = interpreter(path.read_bytes())
    details = file.get_tensor_details()
    floats = [d["index"] for d in details if d["dtype"] == np.float32]
    probabilities = [d["index"] for d in file.get_output_details() if d["dtype"] == np.float32]
    assert floats == probabilities and len(floats) == 1
    assert {d["dtype"] for d in details} == {np.uint8, np.int8, np.int32, np.int64, np.float32}
    loaded = runs.load(cwd / "checkpoints" / "qat")
    assert isinstance(loaded.normalization, quantize.IntegerNormalization)  # the pixels as the file reads them
    images = loaded.data.test_images
    simulated = export.deployed(loaded.model, loaded.normalization).serve(tf.constant(images))["probabilities"]
    simulated, int8 = simulated.numpy(), Exported(path).predict(images)
    assert np.mean(simulated.argmax(1) == loaded.data.test_labels) > 0.9  # right: the agreement means something
    top2 = np.sort(simulated, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.1  # no near-tie that a rounding may turn (measured: 2 of 100, 0.01, 0.06)
    agree = int8.argmax(1) == simulated.argmax(1)
    assert agree[clear].all() and clear.mean() > 0.8 and agree.mean() >= 0.95
    status, out, err = cli("evaluate", cwd, "--model", path, "--agree-with", "checkpoints/qat")
    assert status == 0 and "predicts the class checkpoints/qat predicts on" in out, err
    assert float(out.split(" on ")[-1].split("%")[0]) == pytest.approx(100 * agree.mean(), abs=2)


@pytest.mark.slow
def test_a_qat_run_starts_from_a_float_run_resumes_bitwise_and_evaluates_as_int8(tmp_path, colours, cli):
    """train --from-run F --qat: the network and data set are F's, the weights start as F's; continued from
    an earlier checkpoint it ends with the very weights of the uninterrupted run; evaluate measures the
    rounded network, export writes it as an int8 file (above); flags that contradict F or QAT are one
    sentence."""
    data = colours[0].parent.parent / "cifar-10-batches-py"
    common = ["--data", data, "--batch-size", "20", "--val-size", "20", "--progress", "none", "--steps-per-call",
              "3", "--no-tensorboard", "--from-run", colours[0], *QAT]
    assert cli("train", tmp_path, *common[2:], "--run-name", "qat")[0] == 0  # without --data: F's
    run = tmp_path / "checkpoints"
    shutil.copytree(run / "qat", run / "parts")
    status, out, err = cli("train", tmp_path, "--run-name", "parts", "--resume", "--from-checkpoint", "ckpt-18")
    assert status == 0 and "continuing from" in out, err  # epoch 3 again, after the batch norms were frozen
    assert_same_weights(run / "qat" / "ckpt-27", run / "parts" / "ckpt-27")
    config = (run / "qat" / "config.json").read_text()
    assert '"alpha": 1.0' in config and '"qat": "per-channel"' in config and f'"data": "{data}"' in config
    status, out, err = cli("evaluate", tmp_path, "--checkpoint", "checkpoints/qat")
    assert status == 0 and "test accuracy" in out, err
    assert_int8_file_is_the_simulated_network(tmp_path, cli)
    status, _, err = cli("train", tmp_path, *common, "--run-name", "other", "--alpha", "0.5")
    one_error(status, err, f"--from-run {colours[0]}", "--alpha 1.0")
    status, _, err = cli("train", tmp_path, *common, "--run-name", "other", "--precision", "bfloat16")
    one_error(status, err, "--qat", "--precision bfloat16")


def test_a_qat_run_fine_tunes_briefly_at_a_small_learning_rate_unless_told_otherwise():
    from lowlevel.config import QAT_DEFAULTS, Config

    cfg, explicit = Config.from_args(["--qat", "per-channel"])
    assert {k: getattr(cfg.with_defaults(explicit), k) for k in QAT_DEFAULTS} == {
        "epochs": 3, "lr": 0.005, "warmup_epochs": 0.0, "tta": "none", "ema": 0.0}  # measured as its int8 file is
    cfg, explicit = Config.from_args(["--qat", "per-tensor", "--lr", "0.01", "--epochs", "2"])
    assert (cfg.with_defaults(explicit).lr, cfg.with_defaults(explicit).epochs) == (0.01, 2)
    assert cfg.with_defaults(explicit).warmup_epochs == 0.0
    float_run = Config.from_args([])[0].with_defaults(set())
    assert (float_run.epochs, float_run.lr, float_run.warmup_epochs, float_run.tta, float_run.ema) == (
        150, 0.1, 1.0, "flip", 0.999)


def test_sqnr_of_rounding_a_uniform_signal_is_its_closed_form():
    """x uniform on [-1, 1] rounded to steps d = 2/255: noise d^2 / 12 against signal 1/3, so
    SQNR = 10 log10(4 / d^2) = 20 log10(255) = 48.13 dB."""
    x = np.random.default_rng(3).uniform(-1, 1, 1_000_000).astype(np.float32)
    rounded = quantize.fake_quant(tf.constant(x), tf.constant(-1.0), tf.constant(1.0)).numpy()
    assert quantize_errors.sqnr_db(x, rounded) == pytest.approx(20 * np.log10(255), abs=0.05)
    assert quantize_errors.sqnr_db(x, x) == float("inf")


def test_the_quantization_table_on_a_layer_whose_error_is_known():
    """A stem whose folded kernel lies on its per-channel grid (k / 127 of each channel's largest value)
    loses nothing per channel; with one channel 1000 times wider, per tensor rounds the others to a
    few steps, and the int8 network's stem output is worse per tensor than per channel.  The table
    leaves the float network as it found it."""
    net = tiny_net(1)
    bn = net.bn_stem
    bn.gamma.assign(tf.ones_like(bn.gamma)), bn.beta.assign(tf.zeros_like(bn.beta))
    bn.moving_mean.assign(tf.zeros_like(bn.gamma)), bn.moving_variance.assign(tf.fill(bn.gamma.shape, 1 - bn.epsilon))
    rng = np.random.default_rng(4)
    c = net.stem.out_channels
    widths = np.ones(c, np.float32)
    widths[0] = 1000.0
    steps = rng.integers(-127, 128, net.stem.kernel.shape).astype(np.float32)
    steps[0, 0, 0, :] = 127  # each channel reaches its largest value
    net.stem.kernel.assign(steps / 127 * widths)
    batches = [tf.random.stateless_normal([16, 32, 32, 3], [5, i]) for i in range(2)]
    rows = {r["layer"]: r for r in quantize_errors.layer_errors(net, batches)}
    stem = rows["stem"]
    assert stem["weight_sqnr_channel_db"] > 100  # float32 rounding of W s only
    assert stem["weight_sqnr_tensor_db"] < stem["weight_sqnr_channel_db"] - 30
    assert stem["output_sqnr_tensor_db"] < stem["output_sqnr_channel_db"] - 1
    assert stem["input_lo"] == pytest.approx(min(float(tf.reduce_min(b)) for b in batches))
    assert stem["input_hi"] == pytest.approx(max(float(tf.reduce_max(b)) for b in batches))
    assert len(rows) == len(net.conv_layers()) + 1 and np.isfinite(rows["logits"]["output_sqnr_channel_db"])
    assert all(m.quantization is None for m in net.submodules if hasattr(m, "quantization"))
    eager = {r["layer"]: r for r in quantize_errors.layer_errors(net, batches, compiled=False)}  # traced above: 2 batches
    assert eager.keys() == rows.keys()
    # compiled and eager convolutions differ in the last bit (1.2e-7 here), which can land a value on the
    # other side of a rounding: one step of one activation changed the int8 logits' SQNR by 0.08%
    for layer, row in rows.items():
        figures = {k: v for k, v in row.items() if k != "layer"}
        assert {k: eager[layer][k] for k in figures} == pytest.approx(figures, rel=1e-3), layer


@pytest.mark.slow
def test_an_int8_file_that_would_not_be_integer_throughout_is_refused(monkeypatch):
    """Without the range of MobileNetV3's head output (the hard-swish's result, which the pooling reads),
    the converter would leave it and the pooling float32: export says so instead (of the network built
    shorter, tests/shorter.py: the head is the same at any depth)."""
    from lowlevel import export, nets, runs
    from lowlevel.pipeline import Normalization

    from shorter import shorten

    shorten("mobilenet-v3-small", monkeypatch.setattr)
    net = quantize.Quantized(nets.build("mobilenet-v3-small", (32, 32, 3), 10, alpha=0.25), "per-channel")
    net(tf.random.stateless_normal([4, 32, 32, 3], [0, 6]), training=True)  # ranges
    net.net.quantization = None  # the fault: the network's own points (stem, head, last, features) unrounded
    module = export.deployed(net, Normalization([0.5] * 3, [0.25] * 3))
    with pytest.raises(runs.RunError, match="not integer throughout: [0-9]+ tensors would stay float32"):
        export.to_tflite(module, "tflite-int8")


@pytest.mark.slow
@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_the_friendly_network_rounds_its_depthwise_kernels_as_they_are_and_exports_integer_throughout(
        monkeypatch, scheme):
    """mobilenet-friendly's depthwise convolutions have neither batch norm nor bias: QAT rounds their kernels
    unfolded (per channel or per tensor, as the scheme says), the pointwise ones folded, and the int8 file
    from the learned ranges is integer throughout (export.to_tflite checks it).  (Built shorter,
    tests/shorter.py: every block is alike.)"""
    from lowlevel import export, nets
    from lowlevel.pipeline import Normalization

    from shorter import shorten
    from test_export import ops

    shorten("mobilenet-friendly", monkeypatch.setattr)
    net = quantize.Quantized(nets.build("mobilenet-friendly", (32, 32, 3), 10, alpha=0.25), scheme)
    block = net.blocks[3]
    kernel = block.depthwise.kernel
    kernel.assign(kernel * tf.range(1.0, kernel.shape[2] + 1)[:, None])  # channels of different widths
    x = tf.random.stateless_normal([2, 8, 8, kernel.shape[2]], [0, 7])
    _, rounded = block.depthwise.quantization(x, kernel, folded=False)
    want = quantize.fake_quant_weights(kernel, scheme == "per-channel", depthwise=True)
    np.testing.assert_array_equal(rounded.numpy(), want.numpy())
    assert np.abs(rounded.numpy() - kernel.numpy()).max() > 0  # rounded, not passed through
    for i in range(3):
        net(tf.random.stateless_normal([8, 32, 32, 3], [0, i]), training=True)  # ranges
    module = export.deployed(net, Normalization([0.5] * 3, [0.25] * 3))
    table = ops(export.to_tflite(module, "tflite-int8"))
    kinds = {op for op, _, _ in table}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D"} <= kinds
    assert {w["dtype"] for op, ins, _ in table if op in ("CONV_2D", "DEPTHWISE_CONV_2D") for w in ins[1:2]} == {np.int8}


# the int8 operations of each network's own ideas, which its file must run on int8 tensors (MobileNetV2's
# one idea, the inverted residual's ADD, is in both)
IDEAS = {"mobilenet-v3-small": {"ADD", "HARD_SWISH", "MEAN", "MUL"},
         "efficientnet-b0": {"ADD", "LOGISTIC", "MEAN", "MUL"}}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(IDEAS))
def test_the_series_learns_the_ranges_no_convolution_reads_and_exports_integer_throughout(monkeypatch, name):
    """The tensors of the int8 network that no convolution's input range covers get learned ranges
    (lightweight.Rounded's points): an inverted residual block's linear projection, shortcut and sum; a
    hard-swish's or swish's input; a squeeze-and-excitation gate's input and excitation (its gate on the
    int8 kernel's fixed range).  They round alike in training calls and in inference, and the int8 file
    from the learned ranges is integer throughout, every operation of the network's ideas on int8."""
    from lowlevel import export, nets
    from lowlevel.lightweight import Rounded, SqueezeExcite
    from lowlevel.nets.mobilenet_v2 import InvertedResidual
    from lowlevel.pipeline import Normalization

    from shorter import shorten
    from test_export import ops

    shorten(name, monkeypatch.setattr)  # every kind of block, fewer of each
    net = quantize.Quantized(nets.build(name, (32, 32, 3), 10, alpha=0.25), "per-channel")
    blocks = [m for m in net.submodules if isinstance(m, InvertedResidual)]
    assert all(("sum" in b.quantization.ranges) == b.residual for b in blocks)
    rounded = [m for m in [net.net, *net.submodules] if isinstance(m, Rounded) and m.rounding_points()]
    assert all(isinstance(m.quantization, quantize.Points) for m in rounded)
    gates = [m for m in rounded if isinstance(m, SqueezeExcite)]
    assert len(gates) == sum(b.se is not None for b in blocks) and gates
    for gate in gates:  # the gates' convolutions, with biases and no batch norm, rounded too
        assert gate.squeeze.quantization is not None and gate.excite.quantization is not None
    for i in range(3):
        net(tf.random.stateless_normal([8, 32, 32, 3], [0, i]), training=True)  # ranges
    residual = [b for b in blocks if b.residual][-1]  # its input a sum of linear projections: signed
    assert all(float(residual.quantization.ranges[r].lo) < 0 < float(residual.quantization.ranges[r].hi)
               for r in ("project", "sum"))
    # ... and already rounded by the block before it: its own input range is never used (Quantized.once)
    assert float(residual.quantization.ranges["input"].lo) == float(residual.quantization.ranges["input"].hi) == 0
    x = tf.random.stateless_normal([2, 32, 32, 3], [0, 9])
    np.testing.assert_allclose(net.inference(x).numpy(), net(x, training=False).numpy(), atol=1e-4)
    module = export.deployed(net, Normalization([0.5] * 3, [0.25] * 3))
    table = ops(export.to_tflite(module, "tflite-int8"))  # refused if a tensor stayed float32
    used = [(op, ins, outs) for op, ins, outs in table if op in IDEAS[name]]
    assert {op for op, _, _ in used} == IDEAS[name]
    operands = [d for op, ins, outs in used for d in [*(ins[:1] if op == "MEAN" else ins), *outs]]  # not MEAN's axes
    assert operands and all(d["dtype"] == np.int8 for d in operands)
    assert_each_tensor_has_one_scale(table)
    assert net.detach() is not None and all(m.quantization is None for m in rounded)


def assert_each_tensor_has_one_scale(table, convolutions: int | None = None):
    """Every convolution of an int8 file (`convolutions` of them, or more than 10) computes its int32 bias
    on the scale of its input times its weights' (the kernel's own assumption), as it does when each
    tensor of the simulated network is rounded once; the pixels' normalization is the first, one
    convolution from the uint8 input."""
    convs = [(ins, outs) for op, ins, outs in table if op in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert [op for op, _, _ in table][:2] == ["QUANTIZE", "DEPTHWISE_CONV_2D"]
    assert len(convs) == convolutions if convolutions is not None else len(convs) > 10
    for (x, w, b), _ in convs:
        scale = x["quantization_parameters"]["scales"] * w["quantization_parameters"]["scales"]  # [C_out]
        np.testing.assert_allclose(b["quantization_parameters"]["scales"], scale, rtol=1e-5, err_msg=b["name"])


def test_a_qat_run_normalizes_its_pixels_as_its_int8_file_does():
    """The int8 file's first operation is the normalization, a 1x1 depthwise convolution of the uint8
    pixels with its bias on the int32 grid.  What the simulated network's first range makes of a --qat
    run's normalized pixels (IntegerNormalization) is, on every element, that convolution computed
    exactly from the file's integers and scales (with the bias unrounded, these statistics' biases lie
    0.2-0.5 of a step off the grid and the test fails); the file's own kernel, which rescales in fixed
    point, is within a step of it everywhere and equal almost everywhere."""
    from lowlevel import export, nets

    from test_export import ops

    # the statistics of a CIFAR-10 training split: the biases' distances from the grid are 0.46, 0.22, 0.21
    norm = quantize.IntegerNormalization([0.49110833, 0.48192739, 0.44631130], [0.24518779, 0.24266694, 0.26051384])
    net = quantize.Quantized(nets.build("mobilenet", (32, 32, 3), 10, alpha=0.25), "per-channel")
    pixels = tf.cast(tf.random.stateless_uniform([64, 32, 32, 3], [4, 2], 0, 256, tf.int32), tf.uint8)
    for i in range(3):
        net(norm(pixels[16 * i:16 * i + 16]), training=True)  # the first range
    first = net.net.stem.quantization.input
    simulated = quantize.fake_quant(norm(pixels), first.lo, first.hi).numpy().astype(np.float64)
    np.testing.assert_array_equal(norm.black().numpy(), norm(tf.zeros([1, 1, 1, 3], tf.uint8)).numpy()[0, 0, 0])

    flatbuffer = export.to_tflite(export.deployed(net, norm), "tflite-int8")
    (_, _, _), (op, (_, w, b), (out,)) = ops(flatbuffer)[:2]
    assert op == "DEPTHWISE_CONV_2D"
    file = EveryTensor(flatbuffer)
    step, zero = out["quantization"]
    w_step = w["quantization_parameters"]["scales"]  # [3]
    w_int, b_int = (file.get_tensor(t["index"]).reshape(-1).astype(np.float64) for t in (w, b))
    np.testing.assert_allclose(b_int * w_step, norm.black().numpy(), rtol=1e-6)  # the same bias
    x = pixels.numpy().astype(np.float64)
    exact = (np.clip(np.round((x * w_int * w_step + b_int * w_step) / step) + zero, -128, 127) - zero) * step
    np.testing.assert_allclose(simulated, exact, atol=step / 100)
    computed = np.stack([file.tensor_of(pixels[i:i + 1].numpy(), out["index"]) for i in range(len(x))])
    off = np.abs((computed.astype(np.float64) - zero) * step - exact) / step
    assert off.max() < 1.01 and np.mean(off > 0.01) < 0.01  # measured: 0.1-0.5% a step off


class EveryTensor:
    """A LiteRT file run op by op, every tensor kept, without a delegate replacing its operations."""

    def __init__(self, flatbuffer: bytes):
        from ai_edge_litert.interpreter import Interpreter as LiteRT, OpResolverType
        self.it = LiteRT(model_content=flatbuffer, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.it.allocate_tensors()

    def get_tensor(self, index: int) -> np.ndarray:
        return self.it.get_tensor(index)

    def tensor_of(self, images: np.ndarray, index: int) -> np.ndarray:
        """Tensor `index` [...] computed from uint8 images [1, H, W, C], its batch axis dropped."""
        self.it.set_tensor(self.it.get_input_details()[0]["index"], images)
        self.it.invoke()
        return self.it.get_tensor(index)[0]


def test_a_swish_rounds_its_input_and_its_sigmoid_as_the_int8_network_does():
    """The int8 network runs a swish as LOGISTIC (its output on the fixed steps of 1/256) then MUL: under
    quantization-aware training z * sigmoid(z) is fq(z) * fq(sigmoid(fq(z)); 0, 255/256)."""
    from lowlevel import lightweight, nets

    net = quantize.Quantized(nets.build("efficientnet-b0", (32, 32, 3), 10, alpha=0.25), "per-channel")
    points = net.net.quantization
    assert points.fixed["stem.sigmoid"] == (0.0, 255 / 256) and "stem" in points.ranges
    points.ranges["stem"].lo.assign(-4.0)
    points.ranges["stem"].hi.assign(4.0)
    z = tf.random.stateless_normal([2, 4, 4, 8], [0, 2]) * 3
    got = net.net.activated("stem", lightweight.swish, z).numpy()
    zq = quantize.fake_quant(z, tf.constant(-4.0), tf.constant(4.0))
    sigmoid = quantize.fake_quant(tf.sigmoid(zq), tf.constant(0.0), tf.constant(255 / 256)).numpy()
    np.testing.assert_allclose(sigmoid * 256, np.round(sigmoid * 256), atol=1e-4)  # on the steps of 1/256
    np.testing.assert_allclose(got, zq.numpy() * sigmoid, rtol=1e-6, atol=1e-7)
    assert np.abs(got - tf.nn.silu(zq).numpy()).max() > 1e-4  # the sigmoid rounded, not passed through
    net.detach()
    np.testing.assert_array_equal(net.net.activated("stem", lightweight.swish, z).numpy(), tf.nn.silu(z).numpy())


def test_networks_whose_int8_form_qat_cannot_simulate_are_refused_in_one_sentence():
    """Inception-v2's batch norms follow their activations (they cannot fold into the convolutions); the
    Fashion-MNIST CNNs' SELU has no int8 kernel.  Networks without batch norms are simulated (below)."""
    from lowlevel import runs
    from lowlevel.config import Config, ConfigError

    cfg = Config(model="inception-v2", qat="per-tensor", dataset="flowers17", alpha=0.125)
    with pytest.raises(ConfigError, match=r"--qat: --model inception-v2: quantization-aware training folds each batch "
                                          r"norm into its convolution, and layers\[0\]'s follows the activation; "
                                          r"choose a network whose batch norms follow their convolutions"):
        runs.build_model(cfg, 17, (224, 224, 3))
    cfg = Config(model="fashion-cnn", qat="per-channel", dataset="fashion-mnist", alpha=0.25)
    with pytest.raises(ConfigError, match=r"--qat: --model fashion-cnn: LiteRT has no int8 kernel for the selu of "
                                          r"layers\[0\], so no int8 file could compute it; choose a network with ReLU"):
        runs.build_model(cfg, 10, (28, 28, 1))
    for name in ("mobilenet", "vgg-blocks", "fashion-separable"):
        shape = (28, 28, 1) if name.startswith("fashion") else (32, 32, 3)
        assert isinstance(runs.build_model(Config(model=name, qat="per-tensor", alpha=0.25), 10, shape),
                          quantize.Quantized)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg-blocks", "vgg-blocks-separable"])
def test_a_network_without_batch_norms_rounds_its_biases_and_exports_integer_throughout(name):
    """The plain networks' convolutions add a bias and have no batch norm: QAT rounds each kernel as it is
    (per output channel) and each bias on the int32 grid of its input step times its weights' step, and
    the int8 file from the learned ranges is integer throughout, each convolution's bias on that scale."""
    from lowlevel import export, nets
    from lowlevel.layers import DepthwiseConv2D
    from lowlevel.pipeline import Normalization

    from test_export import ops

    net = quantize.Quantized(nets.build(name, (32, 32, 3), 10, alpha=0.25), "per-channel")
    for i in range(3):
        net(tf.random.stateless_normal([8, 32, 32, 3], [2, i]), training=True)  # ranges
    net.inference(tf.random.stateless_normal([4, 32, 32, 3], [2, 9]))  # the calls record their steps
    biased = [conv for _, conv, _ in net.conv_layers() if getattr(conv, "bias", None) is not None]
    assert len(biased) == 6 and all(bn is None for _, _, bn in net.conv_layers())
    for conv in biased:
        q = conv.quantization
        top = np.abs(conv.kernel.numpy()).reshape(-1, conv.kernel.shape[-1]).max(0)  # [C_out]
        step = float(q.input.hi - q.input.lo) / 255 * top / 127
        np.testing.assert_allclose(q._last.bias_step.numpy(), step, rtol=1e-5)
        n = q.bias(conv.bias).numpy() / step
        np.testing.assert_allclose(n, np.round(n), atol=1e-3)  # on the grid
    depthwise = [conv for _, conv, _ in net.conv_layers() if isinstance(conv, DepthwiseConv2D)]
    assert len(depthwise) == (6 if name.endswith("separable") else 0)
    module = export.deployed(net, Normalization([0.5] * 3, [0.25] * 3))
    table = ops(export.to_tflite(module, "tflite-int8"))  # refused if a tensor stayed float32
    assert {"CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED"} <= {op for op, _, _ in table}
    operands = [d for op, ins, outs in table if op in ("CONV_2D", "MAX_POOL_2D") for d in [*ins[:2], *outs]]
    assert operands and all(d["dtype"] == np.int8 for d in operands)
    assert_each_tensor_has_one_scale(table, convolutions=7 + len(depthwise))  # the pixels' normalization too
