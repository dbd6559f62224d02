"""Every network of lowlevel.nets against a Keras model written from the same description: parameter
counts, the summary's costs, outputs with copied weights, and one real training step."""
import keras
import pandas as pd
import numpy as np
import pytest
import tensorflow as tf

from lowlevel import costs, nets
from lowlevel.config import Config

KL = keras.layers


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


# ---------------------------------------------------------------- the Keras models, from the issue's text

def keras_fashion(separable_from, act):
    layers = [keras.Input((28, 28, 1))]
    for i, c in enumerate((32, 32, 64, 64, 128, 128)):
        conv = KL.SeparableConv2D if i >= separable_from else KL.Conv2D
        layers.append(conv(c, 3, padding="same", activation=act))
        if i % 2:
            layers.append(KL.MaxPooling2D(2))
    return keras.Sequential(layers + [KL.Flatten(), KL.Dense(128, activation=act), KL.Dense(10)])


def keras_vgg_blocks(separable):
    conv = KL.SeparableConv2D if separable else KL.Conv2D
    layers = [keras.Input((32, 32, 3))]
    for filters in (64, 128, 256):
        layers += [conv(filters, 3, padding="same", activation="relu"),
                   conv(filters, 3, padding="same", activation="relu"), KL.MaxPooling2D(2)]
    return keras.Sequential(layers + [KL.Flatten(), KL.Dense(10)])


def keras_alexnet():
    return keras.Sequential([
        keras.Input((224, 224, 3)),
        KL.Conv2D(96, 11, strides=4, padding="same", activation="relu"),
        KL.Conv2D(256, 5, padding="same", activation="relu"), KL.MaxPooling2D(2),
        KL.Conv2D(384, 3, padding="same", activation="relu"), KL.MaxPooling2D(2),
        KL.Conv2D(384, 3, padding="same", activation="relu"),
        KL.Conv2D(256, 3, padding="same", activation="relu"), KL.MaxPooling2D(2),
        KL.Flatten(), KL.Dense(4096, activation="relu"), KL.Dropout(0.5),
        KL.Dense(4096, activation="relu"), KL.Dropout(0.5), KL.Dense(17)])


def keras_vgg16():
    layers = [keras.Input((224, 224, 3))]
    for filters, n in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        layers += [KL.Conv2D(filters, 3, padding="same", activation="relu") for _ in range(n)]
        layers.append(KL.MaxPooling2D(2))
    return keras.Sequential(layers + [KL.Flatten(), KL.Dense(4096, activation="relu"), KL.Dropout(0.5),
                                      KL.Dense(4096, activation="relu"), KL.Dropout(0.5), KL.Dense(17)])


def keras_inception_v2():
    """BN-Inception, Ioffe and Szegedy 2015 Table 1; each convolution conv + bias + ReLU, then batch norm."""
    def conv(x, filters, k=1, s=1):
        return KL.BatchNormalization()(KL.Conv2D(filters, k, strides=s, padding="same", activation="relu")(x))

    def module(x, ones, red3, three, red_d, double, pool, proj, s=1):
        branches = [conv(x, ones)] if ones else []
        branches.append(conv(conv(x, red3), three, 3, s))
        branches.append(conv(conv(conv(x, red_d), double, 3), double, 3, s))
        p = (KL.AveragePooling2D if pool == "avg" else KL.MaxPooling2D)(3, strides=s, padding="same")(x)
        branches.append(conv(p, proj) if proj else p)
        return KL.Concatenate()(branches)

    inp = keras.Input((224, 224, 3))
    x = KL.MaxPooling2D(3, strides=2, padding="same")(conv(inp, 64, 7, 2))
    x = KL.MaxPooling2D(3, strides=2, padding="same")(conv(conv(x, 64), 192, 3))
    for row in [(64, 64, 64, 64, 96, "avg", 32), (64, 64, 96, 64, 96, "avg", 64), (0, 128, 160, 64, 96, "max", 0, 2),
                (224, 64, 96, 96, 128, "avg", 128), (192, 96, 128, 96, 128, "avg", 128),
                (160, 128, 160, 128, 160, "avg", 128), (96, 128, 192, 160, 192, "avg", 128),
                (0, 128, 192, 192, 256, "max", 0, 2), (352, 192, 320, 160, 224, "avg", 128),
                (352, 192, 320, 192, 224, "max", 128)]:
        x = module(x, *row)
    x = KL.Dense(17)(KL.Flatten()(KL.AveragePooling2D(7)(x)))
    return keras.Model(inp, x)


KERAS = {
    "fashion-cnn": lambda: keras_fashion(6, "selu"),
    "fashion-cnn-separable": lambda: keras_fashion(1, "selu"),
    "fashion-separable": lambda: keras_fashion(0, "relu"),
    "vgg-blocks": lambda: keras_vgg_blocks(False),
    "vgg-blocks-separable": lambda: keras_vgg_blocks(True),
    "alexnet": keras_alexnet,
    "vgg16": keras_vgg16,
    "inception-v2": keras_inception_v2,
}
STATED = {"fashion-cnn": 435_306, "fashion-cnn-separable": 184_234, "fashion-separable": 183_987}  # the issue's


@pytest.mark.parametrize("name", list(KERAS))
def test_parameter_counts_equal_keras(name):
    ref, ours = KERAS[name](), nets.build(name)
    trainable = _count(ours.trainable_variables)
    assert trainable == _count(ref.trainable_weights)
    assert trainable + _count(ours.non_trainable_variables) == ref.count_params()
    if name in STATED:
        assert trainable == STATED[name]
    t = costs.totals(costs.rows(ours))  # the summary counts from shapes: the same totals
    assert (t.params, t.moving) == (trainable, _count(ours.non_trainable_variables))
    assert tuple(ref.output_shape[1:]) == (ours.num_classes,) and tuple(ref.input_shape[1:]) == ours.input_shape


def test_vgg_blocks_counts_are_about_the_issues():
    assert abs(_count(nets.build("vgg-blocks").trainable_variables) - 1.2e6) < 0.02e6
    assert abs(_count(nets.build("vgg-blocks-separable").trainable_variables) - 0.17e6) < 0.01e6


def _copy_into(ours, ref):
    """Keras' weights, layer by layer, into our modules in layer_table order (kernel, then bias)."""
    ref_weights = [w for layer in ref.layers for w in layer.get_weights()]
    ours_vars = []
    for _, layer, _ in ours.layer_table():
        if not isinstance(layer, str):
            ours_vars += [layer.kernel] + ([layer.bias] if getattr(layer, "bias", None) is not None else [])
    assert [tuple(v.shape) for v in ours_vars] == [w.shape for w in ref_weights]
    for v, w in zip(ours_vars, ref_weights):
        v.assign(w)


@pytest.mark.parametrize("name", ["fashion-cnn", "fashion-cnn-separable", "fashion-separable", "vgg-blocks-separable"])
def test_outputs_equal_keras_with_the_same_weights(name):
    ref, ours = KERAS[name](), nets.build(name)
    _copy_into(ours, ref)
    x = tf.random.stateless_normal([3, *ours.input_shape], seed=[1, 2])
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.inference(x).numpy(), ref(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(nets.NETS))
def test_summary_shapes_are_the_forward_pass_shapes(name):
    """Every convolution's tapped output has the shape the summary counted (at a small width)."""
    net = nets.build(name, alpha=0.125)
    taps = net(tf.zeros([1, *net.input_shape]), training=False, taps=True)
    shapes = {r.name: r.shape for r in costs.rows(net)}
    assert [n for n, _, _ in net.conv_layers()] == [n for n in taps if n != "logits"]
    for n, _, _ in net.conv_layers():
        assert tuple(taps[n].shape[1:]) == shapes[n], n
    assert tuple(taps["logits"].shape) == (1, net.num_classes)


# the lightweight series after MobileNet v1: each through every command (below), the rest one compiled step
THROUGH_EVERY_COMMAND = nets.SERIES[1:]


@pytest.mark.parametrize("name", [n for n in nets.NETS if n not in THROUGH_EVERY_COMMAND])  # those: below
def test_one_training_step_on_two_images(monkeypatch, name):
    """The real compiled training step of lowlevel.train, on two images: the loss is finite and every kernel
    moves (no weight decay, so only by its gradient); the deep ones shorter (tests/shorter.py).  (Most of
    the lightweight series: in test_the_lightweight_series_through_every_command, through train itself.)"""
    from lowlevel import pipeline
    from lowlevel.step import Trainer
    from shorter import shorten

    shorten(name, monkeypatch.setattr)

    entry = nets.NETS[name]
    cfg = Config(model=name, dataset=entry.dataset, batch_size=2, val_size=0, alpha=0.25, augment=False, cutout=0,
                 warmup_epochs=0.0, epochs=1, weight_decay=0.0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, *entry.input_shape), dtype=np.uint8)
    batches = pipeline.Batches(images, np.array([0, 1]), pipeline.Normalization.of(images), 2)
    trainer = Trainer(cfg, batches, entry.num_classes)
    before = [v.numpy() for v in trainer.model.trainable_variables]
    trainer.train_steps(batches.order(0), tf.constant(1))
    assert np.isfinite(float(trainer.epoch_loss.numpy())) and int(trainer.epoch_seen.numpy()) == 2
    after = trainer.model.trainable_variables
    still = [v.name for b, v in zip(before, after) if "kernel" in v.name and np.array_equal(b, v.numpy())]
    assert not still


def test_checkpoint_keys_follow_attribute_paths(tmp_path):
    net = nets.build("fashion-cnn-separable", alpha=0.25)
    prefix = tf.train.Checkpoint(model=net).write(str(tmp_path / "c"))
    keys = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    assert "model/layers/1/conv/depthwise/kernel/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "model/layers/1/conv/pointwise/bias/.ATTRIBUTES/VARIABLE_VALUE" in keys
    restored = nets.build("fashion-cnn-separable", alpha=0.25)
    tf.train.Checkpoint(model=restored).read(prefix).assert_existing_objects_matched()
    x = tf.random.stateless_normal([2, 28, 28, 1], seed=[3, 4])
    np.testing.assert_array_equal(restored(x).numpy(), net(x).numpy())


def test_inception_moving_statistics_restore(tmp_path):
    """A saved-and-restored network with batch norms gives the same outputs, moving statistics included."""
    net = nets.build("inception-v2", num_classes=5, alpha=0.125)
    x = tf.random.stateless_normal([2, 224, 224, 3], seed=[5, 6])
    net(x, training=True)  # moves the moving statistics off their initial values
    prefix = tf.train.Checkpoint(model=net).write(str(tmp_path / "c"))
    restored = nets.build("inception-v2", num_classes=5, alpha=0.125)
    tf.train.Checkpoint(model=restored).read(prefix).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored(x).numpy(), net(x).numpy())


@pytest.mark.parametrize("call, message", [
    (lambda: nets.build("resnet"), "unknown model 'resnet'; the models are mobilenet, "),
    (lambda: nets.build("alexnet", (28, 28, 1), 10), "28x28 images are too small for this network"),
    (lambda: nets.build("fashion-cnn", alpha=0.0), "alpha .* must be greater than 0"),
    (lambda: nets.build("vgg16", dropout=1.0), "dropout must be in"),
])
def test_bad_builds_are_one_sentence(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_dropout_rows_take_the_networks_rate_unless_overridden():
    def rates(net):
        return [u.row.rate for u in net.layers if type(getattr(u, "row", None)).__name__ == "Dropout"]
    assert rates(nets.build("alexnet", (64, 64, 3), alpha=0.0625)) == [0.5, 0.5]
    assert rates(nets.build("alexnet", (64, 64, 3), alpha=0.0625, dropout=0.2)) == [0.2, 0.2]


@pytest.mark.slow
def test_another_network_trains_resumes_evaluates_and_inspects_like_mobilenet(tmp_path, data, cli):
    """python -m lowlevel.train --model vgg-blocks-separable: the same loop, checkpoints, resume and evaluation."""
    from conftest import TINY, weights

    args = ["--data", data, "--model", "vgg-blocks-separable", "--epochs", "2", *TINY, "--lr", "0.01"]
    status, out, err = cli("train", tmp_path, "--run-name", "whole", *args)
    assert status == 0, err
    status, out, err = cli("train", tmp_path, "--run-name", "parts", *args, "--max-steps", "13")
    assert status == 0 and "continue with" in out, err
    status, out, err = cli("train", tmp_path, "--run-name", "parts", "--resume")
    assert status == 0, err
    runs = tmp_path / "checkpoints"
    whole, parts = weights(runs / "whole" / "ckpt-20"), weights(runs / "parts" / "ckpt-20")
    assert whole.keys() == parts.keys() and len(whole) > 40  # 19 variables, their momenta, the rest
    for k in whole:
        np.testing.assert_array_equal(whole[k], parts[k], err_msg=k)
    saved = (runs / "whole" / "config.json").read_text()
    assert '"model": "vgg-blocks-separable"' in saved and '"dataset": "cifar10"' in saved
    status, out, err = cli("evaluate", tmp_path, "--checkpoint", runs / "whole")
    assert status == 0 and "test accuracy" in out, err
    status, out, err = cli("inspect", tmp_path, "--checkpoint", runs / "whole", "--images", "20")
    assert status == 0, err
    table = pd.read_csv(runs / "whole" / "inspect-20" / "layers.csv")
    assert list(table.layer[:3]) == ["layers[0].depthwise", "layers[0].pointwise", "layers[1].depthwise"]
    assert len(table) == 12 and table.gamma_median.isna().all() and (table.grad_norm > 0).all()


def test_model_and_dataset_flags_are_checked_in_one_sentence(tmp_path, data, cli):
    from conftest import one_error

    one_error(*cli("train", tmp_path, "--data", data, "--model", "resnet")[::2], "--model must be mobilenet, ")
    one_error(*cli("train", tmp_path, "--data", data, "--dataset", "mnist")[::2], "--dataset must be cifar10, ")
    one_error(*cli("train", tmp_path, "--data", data, "--model", "inception-v2", "--dataset", "cifar10", "--epochs", "1",
                   "--batch-size", "8", "--val-size", "20", "--run-name", "big")[::2],
              "--model inception-v2 on --dataset cifar10: 32x32 images are too small")
    assert not (tmp_path / "checkpoints" / "big").exists()  # refused before its first step: the name stays free


@pytest.mark.slow
@pytest.mark.parametrize("name", THROUGH_EVERY_COMMAND)
def test_the_lightweight_series_through_every_command(tmp_path, data, cli, monkeypatch, name):
    """Each new network, shorter (tests/shorter.py), through the same loop as MobileNet v1 (tiny width, 2
    epochs of 5 steps): train, in which every kernel moves (no weight decay, so only by its gradient);
    continued from epoch 1's checkpoint (`--resume --from-checkpoint ckpt-5`, on a copy of the run) it ends
    with the very weights of the uninterrupted run; evaluate; inspect (a row per convolution with a batch
    norm).  (A resume in the middle
    of an epoch: MobileNet v1's tests, the same loop; export: every network in tests/test_export.py; the
    weights' moving average and TTA, which no network changes: tests/test_recipe.py.)"""
    import shutil

    from conftest import TINY, assert_same_weights, weights
    from shorter import shorten

    shorten(name, monkeypatch.setattr)
    args = ["--data", data, "--model", name, "--epochs", "2", *TINY, "--batch-size", "16", "--weight-decay", "0",
            "--tta", "none", "--ema", "0"]
    assert cli("train", tmp_path, "--run-name", "whole", *args)[0] == 0
    runs = tmp_path / "checkpoints"
    shutil.copytree(runs / "whole", runs / "parts")
    status, out, err = cli("train", tmp_path, "--run-name", "parts", "--resume", "--from-checkpoint", "ckpt-5")
    assert status == 0 and "continuing from" in out, err
    assert_same_weights(runs / "whole" / "ckpt-10", runs / "parts" / "ckpt-10")
    early, late = weights(runs / "whole" / "ckpt-5"), weights(runs / "whole" / "ckpt-10")
    kernels = [k for k in early if k.startswith("model/") and k.endswith("kernel/.ATTRIBUTES/VARIABLE_VALUE")]
    assert len(kernels) > 20 and not [k for k in kernels if np.array_equal(early[k], late[k])]
    status, out, err = cli("evaluate", tmp_path, "--checkpoint", runs / "whole")
    assert status == 0 and "test accuracy" in out, err
    status, out, err = cli("inspect", tmp_path, "--checkpoint", runs / "whole", "--images", "20")
    assert status == 0, err
    table = pd.read_csv(runs / "whole" / "inspect-10" / "layers.csv")
    names = [n for n, _, _ in nets.build(name, alpha=0.125).conv_layers()]
    assert list(table.layer) == names and names[0] == "stem" and names[-1] == "head"
    assert table.gamma_median.notna().all()
    inside = pd.read_csv(runs / "whole" / "inspect-10" / "blocks.csv")  # every one of them has residual blocks
    assert inside.residual_share.between(0, 1, inclusive="neither").sum() >= 3, inside
    gated = name.startswith(("mobilenet-v3", "efficientnet"))  # squeeze-and-excitation
    assert inside.gate_mean.between(0, 1, inclusive="neither").any() == gated and ("squeeze-and-excitation gates" in out) == gated
