"""The recipe's tricks: the weights' moving average, test-time augmentation (flip, flip-shift), weight
decay by kind of parameter, the one-cycle schedule, CutMix (its batches: tests/test_pipeline.py, its loss:
tests/test_train.py); each against a closed form or a hand computation, and EMA and CutMix through a stopped
and resumed run."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lowlevel import ema, optim, pipeline, step
from lowlevel.config import Config
from lowlevel.nets.mobilenet import MobileNetV1

from conftest import SMALL, SMALL_VALUES, STRAIGHT, one_error, same_run, weights


class Pair(tf.Module):
    def __init__(self, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.a = tf.Variable(rng.normal(size=[3, 2]).astype(np.float32))
        self.b = tf.Variable(rng.normal(size=[4]).astype(np.float32), trainable=False)  # a moving statistic


def test_ema_against_its_closed_form():
    """After updates t = 0..T-1 with weights w_t, the shadow is the weighted sum
    prod_t d_t * w_init + sum_t (1 - d_t) prod_{u > t} d_u * w_t, with d_t = min(decay, (1 + t) / (10 + t))."""
    model, decay, steps = Pair(0), 0.9, 120
    w_init = [v.numpy() for v in model.variables]
    average = ema.Average(model, decay, lambda: Pair(1))
    for s, w in zip(average.model.variables, w_init):
        np.testing.assert_array_equal(s.numpy(), w)  # starts as the model
    rng = np.random.default_rng(2)
    seen = []
    for t in range(steps):
        for v in model.variables:
            v.assign(rng.normal(size=v.shape).astype(np.float32))
        seen.append([v.numpy().astype(np.float64) for v in model.variables])
        average.update(model, tf.constant(t, tf.int64))
    d = np.minimum(decay, (1.0 + np.arange(steps)) / (10.0 + np.arange(steps)))
    assert d[0] == pytest.approx(0.1) and d[-1] == pytest.approx(0.9)  # the warm-up, then the decay
    after = np.array([np.prod(d[t + 1:]) for t in range(steps)])  # prod_{u > t} d_u
    for i, s in enumerate(average.model.variables):
        expected = np.prod(d) * w_init[i] + sum((1 - d[t]) * after[t] * seen[t][i] for t in range(steps))
        np.testing.assert_allclose(s.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert {v.ref() for v in average.variables} == {v.ref() for v in average.model.variables}  # shadows only


def _trainer(**config):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 40)
    cfg = Config(alpha=0.125, batch_size=8, cutout=0, **config)
    batches = pipeline.Batches(images, labels, pipeline.Normalization.of(images), 8, seed=0)
    return step.Trainer(cfg, batches), batches.order(0)


def test_the_training_step_averages_every_variable_after_its_update():
    """Through the compiled step: the shadow after n steps is the recursion over the weights each step left,
    the batch norms' moving statistics included."""
    t, order = _trainer(ema=0.8)
    assert len(t.average.model.variables) == len(t.model.variables)
    shadow = [v.numpy().astype(np.float64) for v in t.model.variables]
    for k in range(5):
        t.train_steps(order, tf.constant(1))
        d = min(0.8, (1 + k) / (10 + k))
        shadow = [d * s + (1 - d) * v.numpy() for s, v in zip(shadow, t.model.variables)]
    moving = [i for i, v in enumerate(t.model.variables) if "moving_mean" in v.name]
    assert moving and not np.allclose(t.model.variables[moving[0]].numpy(), 0)  # the statistics moved
    for s, v in zip(shadow, t.average.model.variables):
        np.testing.assert_allclose(v.numpy(), s, rtol=1e-4, atol=1e-6, err_msg=v.name)
    assert t.evaluated is t.average.model
    plain, averaged = _trainer(ema=0.0)[0], _trainer(ema=0.8)[0]
    assert plain.average is None and plain.evaluated is plain.model
    for a, b in zip(plain.model.variables, averaged.model.variables):  # --ema leaves the initial weights alone
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_flip_tta_against_a_hand_computation():
    """log p = log((softmax(f(x)) + softmax(f(mirror x))) / 2), mirror reversing the width; the loss is -log p_y."""
    model = MobileNetV1(alpha=0.125)
    rng = np.random.default_rng(3)
    images, labels = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 12)
    norm = pipeline.Normalization.of(images)
    x = norm(tf.constant(images)).numpy()  # (x / 255 - mean) / std
    softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
    logits = model(tf.constant(x), training=False).numpy()
    mirrored = model(tf.constant(x[:, :, ::-1, :].copy()), training=False).numpy()
    p = (softmax(logits.astype(np.float64)) + softmax(mirrored.astype(np.float64))) / 2
    assert not np.allclose(logits, mirrored, atol=1e-3)  # the mirror image is another input
    got = step.log_probabilities(model, tf.constant(x), "flip").numpy()
    np.testing.assert_allclose(np.exp(got), p, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(step.log_probabilities(model, tf.constant(x)).numpy(),
                               np.log(softmax(logits.astype(np.float64))), rtol=1e-4, atol=1e-5)
    evaluate = step.evaluator(model, norm, "flip", batch_size=5)
    loss, accuracy, preds = evaluate(images, labels)  # batches of 5, 5, 2
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(12), labels])), rel=1e-4)
    np.testing.assert_array_equal(preds, p.argmax(1))
    assert accuracy == pytest.approx(np.mean(p.argmax(1) == labels))
    _, _, some = evaluate(images[3:10], labels[3:10])  # another number of images: the same graph
    np.testing.assert_array_equal(some, preds[3:10])
    assert evaluate.compiled.experimental_get_tracing_count() == 1


def test_flip_shift_tta_against_a_hand_computation():
    """p = the mean softmax over 10 views: the image and its mirror, each also moved one pixel up, down,
    left and right with black moved in (the uint8 zero padding of training's crops), then normalized."""
    model = MobileNetV1(alpha=0.125)
    rng = np.random.default_rng(4)
    images, labels = rng.integers(1, 256, (7, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 7)
    norm = pipeline.Normalization.of(images)
    padded = np.pad(images, [(0, 0), (1, 1), (1, 1), (0, 0)])  # black all round, in uint8
    views = []
    for im in (padded, padded[:, :, ::-1]):  # the mirror of the padded image is the padded mirror
        views += [im[:, 1:33, 1:33], im[:, 0:32, 1:33], im[:, 2:34, 1:33], im[:, 1:33, 0:32], im[:, 1:33, 2:34]]
    assert sum(np.array_equal(v, images) for v in views) == 1 and not (views[1][:, 0] > 0).any()  # row 0 moved in
    probs = []
    for v in views:
        z = model(norm(tf.constant(np.ascontiguousarray(v))), training=False).numpy().astype(np.float64)
        probs.append(np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    p = np.mean(probs, axis=0)
    flip = np.mean([probs[0], probs[5]], axis=0)
    assert np.abs(p - flip).max() > 1e-3  # the moved views change the answer
    evaluate = step.evaluator(model, norm, "flip-shift", batch_size=4)
    loss, accuracy, preds = evaluate(images, labels)  # batches of 4, 3
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(7), labels])), rel=1e-4)
    np.testing.assert_array_equal(preds, p.argmax(1))
    np.testing.assert_array_equal(norm.black().numpy(), norm(tf.zeros([1, 1, 1, 3], tf.uint8)).numpy()[0, 0, 0])
    got = step.log_probabilities(model, norm(tf.constant(images)), "flip-shift", norm.black())
    np.testing.assert_allclose(np.exp(got.numpy()), p, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="give fill"):  # without the moved-in value it cannot move the images
        step.log_probabilities(model, norm(tf.constant(images)), "flip-shift")


def test_weight_decay_groups_by_kind_of_parameter():
    model = MobileNetV1(alpha=0.25)
    kinds = {k: sorted(v.name.removesuffix(":0") for v in vs) for k, vs in optim.kinds(model).items()}
    assert kinds["conv"] == ["mobilenet_v1/stem/kernel"]
    assert kinds["dense"] == ["mobilenet_v1/classifier/kernel"]
    assert kinds["bias"] == ["mobilenet_v1/classifier/bias"]
    assert kinds["depthwise"] == sorted(f"mobilenet_v1/block_{i}/depthwise/kernel" for i in range(13))
    assert len(kinds["pointwise"]) == 13 and all("pointwise" in n for n in kinds["pointwise"])
    assert len(kinds["norm"]) == 2 * 27 and all(n.endswith(("gamma", "beta")) for n in kinds["norm"])
    assert sum(map(len, kinds.values())) == len(model.trainable_variables)  # each parameter in one kind
    mask = optim.decay_mask(model, ["conv", "pointwise", "dense"])
    decayed = {v.name.removesuffix(":0") for v, d in zip(model.trainable_variables, mask) if d}
    assert decayed == set(kinds["conv"] + kinds["pointwise"] + kinds["dense"])
    every_kernel = optim.decay_mask(model, ["conv", "pointwise", "depthwise", "dense"])
    assert every_kernel == optim.decays(model.trainable_variables)  # the default: every kernel, as before


def test_the_decay_on_flag_reaches_the_optimizer_and_is_checked():
    t, _ = _trainer(decay_on="conv,dense")
    decayed = [v.name for v, d in zip(t.model.trainable_variables, t.optimizer.decay_mask) if d]
    assert sorted(decayed) == ["mobilenet_v1/classifier/kernel:0", "mobilenet_v1/stem/kernel:0"]
    assert not any(_trainer(decay_on="")[0].optimizer.decay_mask)
    with pytest.raises(Exception, match="'depthwize', not a kind of parameter"):
        Config(decay_on="conv,depthwize").check()


def test_no_decay_gates_exempts_exactly_the_squeeze_and_excitation_kernels():
    """--no-decay-gates: the gates' squeeze and excite kernels (1 x 1, of kind pointwise) leave the decayed
    set and nothing else does; the default keeps them in it; a network without gates is unchanged."""
    t, _ = _trainer(model="mobilenet-v3-small", decay_gates=False)
    every, _ = _trainer(model="mobilenet-v3-small")
    names = [v.name for v in t.model.trainable_variables]
    masks = zip(names, t.optimizer.decay_mask, every.optimizer.decay_mask, strict=True)
    exempt = {n for n, a, b in masks if b and not a}
    gates = {v.name for v in optim.gate_kernels(t.model)}
    assert exempt == gates and len(gates) == 2 * 9  # MobileNetV3-Small: 9 gated blocks
    assert all(n.endswith(("squeeze/kernel:0", "excite/kernel:0")) for n in gates)
    assert not any(a and not b for a, b in zip(t.optimizer.decay_mask, every.optimizer.decay_mask))
    plain = MobileNetV1(alpha=0.25)
    kernels = ["conv", "pointwise", "depthwise", "dense"]
    assert optim.decay_mask(plain, kernels, gates=False) == optim.decay_mask(plain, kernels)


def test_one_cycle_schedule_closed_form():
    s = optim.WarmupLinear(0.4, total=100, warmup=20)
    lr = [float(s(t)) for t in range(101)]
    assert lr[0] == pytest.approx(0.02) and lr[19] == pytest.approx(0.4)
    assert lr[20] == pytest.approx(0.4) and lr[60] == pytest.approx(0.2) and lr[100] == 0.0
    assert all(a >= b for a, b in zip(lr[20:], lr[21:]))


@pytest.mark.slow
def test_a_run_with_ema_resumes_bitwise_and_evaluates_either_weights(tmp_path, data, cli, small, monkeypatch):
    """--ema: the shadow is checkpointed and continues exactly after a stop; validation, the best checkpoint,
    the test and evaluate use it, `evaluate --weights trained` the trained weights; --tta flip likewise.
    (MobileNet built shorter, tests/shorter.py: the average treats every variable alike at any depth.)"""
    from shorter import shorten

    shorten("mobilenet", monkeypatch.setattr)
    flags = ["--data", data, *STRAIGHT, "--ema", "0.9", "--tta", "flip"]
    status, out, err = cli("train", tmp_path, *flags, "--run-name", "s")
    assert status == 0, err
    status, stopped, err = cli("train", tmp_path, *flags, "--run-name", "r", "--max-steps", "13")
    assert status == 0 and "stopped (--max-steps 13)" in stopped, err
    assert cli("train", tmp_path, "--run-name", "r", "--resume")[0] == 0
    runs = tmp_path / "checkpoints"
    same_run(runs / "r", runs / "s")
    assert any(k.startswith("averaged/") for k in weights(runs / "r" / "ckpt-30"))  # compared by same_run
    assert "validation and test measure: averaged weights (--ema 0.9), flip TTA" in out
    reported = float(out.split("test accuracy ")[1].split("%")[0])
    status, out, _ = cli("evaluate", tmp_path, "--checkpoint", runs / "s")
    assert status == 0 and "averaged weights, flip TTA: test loss" in out
    assert float(out.split("test accuracy ")[1].split("%")[0]) == reported
    history = pd.read_csv(runs / "s" / "history.csv")  # the last row: epoch 3, ckpt-30, the run's weights and TTA
    status, val, err = cli("evaluate", tmp_path, "--checkpoint", runs / "s", "--validation")
    assert status == 0, err
    assert f"averaged weights, flip TTA: validation loss {history.val_loss.iloc[-1]:.4f}, validation accuracy " \
           f"{100 * history.val_accuracy.iloc[-1]:.2f}% (20 images)" in val
    assert not list((runs / "s").glob("ckpt-30-validation*"))  # measured, not written
    shutil.copytree(runs / "s", runs / "all")
    config = json.loads((runs / "all" / "config.json").read_text())
    (runs / "all" / "config.json").write_text(json.dumps({**config, "val_size": 0}))
    one_error(*cli("evaluate", tmp_path, "--checkpoint", runs / "all", "--validation")[::2],
              "all: was trained with --val-size 0, so it holds no validation images", "leave out --validation")
    one_error(*cli("evaluate", tmp_path, "--model", runs / "all", "--validation")[::2], "give --checkpoint")
    status, trained, _ = cli("evaluate", tmp_path, "--checkpoint", runs / "s", "--weights", "trained", "--tta", "none")
    assert status == 0 and "ckpt-30: test loss" in trained
    assert trained.split("test loss ")[1].split(",")[0] != out.split("test loss ")[1].split(",")[0]
    one_error(*cli("evaluate", tmp_path, "--checkpoint", small[0], "--weights", "averaged")[::2],  # --ema 0
              "trained with --ema 0", "leave out --weights averaged")
    config = json.loads((runs / "s" / "config.json").read_text())
    assert config["ema"] == 0.9 and config["tta"] == "flip"


@pytest.mark.slow
def test_a_cutmix_run_resumes_bitwise_and_trains_other_weights(tmp_path, data, cli, small):
    """--cutmix 1: every batch mixed, keyed by (seed, step), with the alternating flip, keyed by (seed, image,
    epoch); stopped mid-epoch and resumed, the run ends as the uninterrupted one; its weights are not those of
    the same run without either (`small`)."""
    flags = ["--data", data, *SMALL, "--cutmix", "1", "--flip", "alternate"]
    assert cli("train", tmp_path, *flags, "--run-name", "s")[0] == 0
    status, out, err = cli("train", tmp_path, *flags, "--run-name", "r", "--max-steps", "13")
    assert status == 0 and "stopped (--max-steps 13)" in out, err
    assert cli("train", tmp_path, "--run-name", "r", "--resume")[0] == 0
    runs = tmp_path / "checkpoints"
    same_run(runs / "r", runs / "s", SMALL_VALUES)
    mixed, plain = weights(runs / "s" / "ckpt-30"), weights(small[0] / "ckpt-30")
    assert [k for k in mixed if k.startswith("model/") and not np.array_equal(mixed[k], plain[k])]
    config = json.loads((runs / "s" / "config.json").read_text())
    assert config["cutmix"] == 1.0 and config["flip"] == "alternate"
    one_error(*cli("train", tmp_path, *flags, "--run-name", "x", "--cutmix", "1.5")[::2],
              "--cutmix is a probability and must be in [0, 1], not 1.5")
    one_error(*cli("train", tmp_path, *flags, "--run-name", "x", "--flip", "sideways")[::2],
              "--flip", "sideways")
