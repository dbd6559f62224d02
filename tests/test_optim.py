"""Optimizers against their closed forms and against Keras on the same gradients; schedules by formula."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lowlevel import optim


def _vars():
    return [tf.Variable([[1.0, -2.0], [0.5, 3.0]], name="kernel"), tf.Variable([0.1, -0.3], name="bias")]


def _grads(step):
    rng = np.random.default_rng(step)
    return [tf.constant(rng.normal(size=(2, 2)).astype(np.float32)), tf.constant(rng.normal(size=2).astype(np.float32))]


def _assert_same_as_keras(opt, ours, keras_opt, ref, steps=5):
    """Feed the same gradients to both optimizers; the variables must agree to 1e-6."""
    for step in range(steps):
        g = _grads(step)
        opt.apply(g, ours)
        keras_opt.apply_gradients(zip(g, ref))
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_keras(nesterov):
    ours, ref = _vars(), _vars()
    opt = optim.SGD(ours, optim.Constant(0.05), momentum=0.9, nesterov=nesterov)
    keras_opt = keras.optimizers.SGD(0.05, momentum=0.9, nesterov=nesterov)
    _assert_same_as_keras(opt, ours, keras_opt, ref)
    assert int(opt.iterations.numpy()) == 5


def test_sgd_closed_form_with_weight_decay_and_a_schedule():
    """Two steps by hand: b1 = g1 + wd w0; w1 = w0 - lr0 (g1' + mu b1); then again with lr1."""
    w = tf.Variable([2.0], name="kernel")
    bias = tf.Variable([2.0], name="bias")
    opt = optim.SGD([w, bias], optim.StepDecay(0.1, [1], 0.5), momentum=0.9, nesterov=True, weight_decay=0.01)
    assert opt.decay_mask == [True, False]
    g = [tf.constant([1.0]), tf.constant([1.0])]
    opt.apply(g, [w, bias])
    opt.apply(g, [w, bias])
    w0, mu, wd = 2.0, 0.9, 0.01
    g1 = 1.0 + wd * w0
    b1 = g1
    w1 = w0 - 0.1 * (g1 + mu * b1)
    g2 = 1.0 + wd * w1
    b2 = mu * b1 + g2
    w2 = w1 - 0.05 * (g2 + mu * b2)
    np.testing.assert_allclose(w.numpy(), [w2], rtol=1e-6)
    b_bias1 = 1.0
    x1 = 2.0 - 0.1 * (1.0 + mu * b_bias1)
    x2 = x1 - 0.05 * (1.0 + mu * (mu * b_bias1 + 1.0))
    np.testing.assert_allclose(bias.numpy(), [x2], rtol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_matches_keras(weight_decay):
    ours, ref = _vars(), _vars()
    opt = optim.Adam(ours, optim.Constant(0.01), weight_decay=weight_decay, decay_mask=[True, True])
    keras_opt = (keras.optimizers.AdamW(0.01, weight_decay=weight_decay) if weight_decay
                 else keras.optimizers.Adam(0.01))
    _assert_same_as_keras(opt, ours, keras_opt, ref)


def test_adam_first_step_closed_form():
    """After one step m_hat / sqrt(v_hat) = sign(g), so each weight moves by lr (up to eps)."""
    w = tf.Variable([1.0, -1.0])
    optim.Adam([w], optim.Constant(0.1), epsilon=0.0).apply([tf.constant([3.0, -0.5])], [w])
    np.testing.assert_allclose(w.numpy(), [0.9, -0.9], atol=1e-6)


def test_warmup_cosine():
    s = optim.WarmupCosine(peak=1.0, total=110, warmup=10)
    lrs = [float(s(t)) for t in range(111)]
    np.testing.assert_allclose(lrs[:10], [(t + 1) / 10 for t in range(10)], rtol=1e-6)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5, abs=1e-6)  # half way through the cosine
    assert lrs[110] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(lrs[35], 0.5 * (1 + np.cos(np.pi * 25 / 100)), rtol=1e-5)


def test_step_decay():
    s = optim.StepDecay(0.1, [5, 8], 0.1)
    assert [round(float(s(t)), 6) for t in (0, 4, 5, 7, 8, 100)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_slots_exist_before_tracing_and_compiled_equals_eager():
    eager_vars, graph_vars = _vars(), _vars()
    eager = optim.SGD(eager_vars, optim.WarmupCosine(0.1, 10, 2), weight_decay=1e-3)
    graph = optim.SGD(graph_vars, optim.WarmupCosine(0.1, 10, 2), weight_decay=1e-3)
    assert len(graph.velocity) == 2 and len(graph.trainable_variables) == 0
    step = tf.function(graph.apply)
    for t in range(4):
        eager.apply(_grads(t), eager_vars)
        step(_grads(t), graph_vars)
    for a, b in zip(eager_vars, graph_vars):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-7)
    assert step.experimental_get_tracing_count() == 1


def test_decay_mask_rule():
    from lowlevel.nets.mobilenet import MobileNetV1
    model = MobileNetV1(alpha=0.25)
    mask = optim.decays(model.trainable_variables)
    decayed = {v.name for v, d in zip(model.trainable_variables, mask) if d}
    assert "mobilenet_v1/block_0/depthwise/kernel:0" in decayed
    assert "mobilenet_v1/classifier/kernel:0" in decayed
    assert not any("gamma" in n or "beta" in n or "bias" in n for n in decayed)
    assert len(decayed) == 1 + 2 * 13 + 1


def test_loss_scale_closed_form():
    """Finite: divide by S, grow x2 after `period` finite steps.  Overflow: report it, halve S, restart the count."""
    ls = optim.LossScale(initial=8.0, period=3)
    for step in range(3):
        grads, finite = ls.unscale([tf.constant([16.0, -4.0])])
        np.testing.assert_array_equal(grads[0].numpy(), [2.0, -0.5])
        assert bool(finite) and float(ls.scale.numpy()) == (8.0 if step < 2 else 16.0)
    assert int(ls.finite_steps.numpy()) == 0
    ls.unscale([tf.constant([1.0])])
    grads, finite = ls.unscale([tf.constant([1.0]), tf.constant([np.inf])])
    assert not bool(finite) and float(ls.scale.numpy()) == 8.0 and int(ls.finite_steps.numpy()) == 0
    small = optim.LossScale(initial=1.0)
    small.unscale([tf.constant([np.nan])])
    assert float(small.scale.numpy()) == 1.0  # never below 1


@pytest.mark.parametrize("make", [lambda v, s: optim.SGD(v, s, weight_decay=0.1),
                                  lambda v, s: optim.Adam(v, s, weight_decay=0.1)])
def test_skip_counts_the_step_and_changes_nothing(make):
    ours = _vars()
    opt = make(ours, optim.StepDecay(0.1, [1], 0.5))
    opt.apply(_grads(0), ours)
    state = ours + [v for v in opt.variables if v is not opt.iterations]  # variables and slots
    before = [v.numpy() for v in state]
    assert float(opt.skip()) == pytest.approx(0.05)  # the learning rate of step 1
    assert int(opt.iterations.numpy()) == 2 and len(state) == 2 + 2 * (1 if isinstance(opt, optim.SGD) else 2)
    for v, b in zip(state, before):
        np.testing.assert_array_equal(v.numpy(), b)
