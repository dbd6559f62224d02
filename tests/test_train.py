"""python -m lowlevel.train end to end on tiny data: files written, exact resume, signals, errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lowlevel import datasets

from conftest import ENV, SMALL, STRAIGHT, TINY, one_error, run_here, run_printed, same_run


def train(cwd, *args, check=True):
    return run_here("train", cwd, *args, check=check)


@pytest.mark.slow
def test_a_run_writes_its_folder_and_the_printed_evaluate_command_agrees(straight):
    run, out = straight
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["alpha"] == 0.125 and cfg["epochs"] == 3 and "max_steps" not in cfg and "run_name" not in cfg
    history = pd.read_csv(run / "history.csv")
    assert history.epoch.tolist() == [1, 2, 3] and history.step.tolist() == [10, 20, 30]
    assert set(history.columns) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_s"}
    assert (run / "ckpt-30.index").exists() and list((run / "best").glob("ckpt-*.index"))
    assert (run / "learning_curves.png").stat().st_size > 10_000
    assert "epoch   3/3" in out and "speed: " in out and " left" in out
    assert out.splitlines()[1].startswith("kernels: ")  # the kernels, among the first lines
    assert history.kernels.str.contains(":").all()  # and per epoch, e.g. oneDNN:avx2:2x2
    reported = float(out.split("test accuracy ")[1].split("%")[0])
    ev = run_printed(out.strip().splitlines()[-1], run.parent.parent, "evaluate with:", process=True)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert float(ev.stdout.split("test accuracy ")[1].split("%")[0]) == reported
    # the run's weights and --tta: by default averaged and flip
    assert "ckpt-30: averaged weights, flip TTA: test loss" in ev.stdout and "airplane" in ev.stdout
    assert (run / "ckpt-30-test-confusion.csv").exists() and (run / "ckpt-30-test-confusion.png").exists()
    assert pd.read_csv(run / "ckpt-30-test-confusion.csv", index_col=0).values.sum() == 30
    best = run_here("evaluate", run.parent.parent, "--checkpoint", run, "--best")
    assert "best/ckpt-" in best.stdout


@pytest.mark.slow
def test_the_printed_continue_command_trains_to_the_end(tmp_path, data, straight):
    """--max-steps limits one command: the command printed after it, run as printed, trains to the end
    (it used to stop again at once, --max-steps having been saved with the run), exactly."""
    out = train(tmp_path, "--data", data, "--run-name", "r", *STRAIGHT, "--max-steps", "13").stdout
    assert "stopped (--max-steps 13) at step 13 of 30" in out
    done = run_printed(out.strip().splitlines()[-1], tmp_path, "continue with:")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch   3/3" in done.stdout and "test accuracy" in done.stdout
    same_run(tmp_path / "checkpoints" / "r", straight[0])  # the epoch that straddled the stop included


@pytest.mark.slow
def test_a_resumed_epoch_counts_only_the_images_this_process_trained(tmp_path, data, monkeypatch):
    """Its images/s divides the images trained since the restore by the time since the restore."""
    from lowlevel import loop as lp, runs
    from lowlevel.config import Config
    train(tmp_path, "--data", str(data), "--run-name", "p", "--epochs", "1", "--max-steps", "7", *TINY)
    monkeypatch.chdir(tmp_path)
    cfg, explicit = Config.from_args(["--data", str(data), "--run-name", "p", "--resume", "--max-steps", "10"])
    cfg, run = runs.run_config(cfg.check(), explicit)
    loop = lp.Loop(cfg, run, datasets.load(cfg.dataset, cfg.data, cfg.split_seed))
    stop = lp.Signals()
    try:
        lr, seconds, images = loop.train_epoch(stop)
    finally:
        stop.restore()
    assert loop.trainer.step == 10 and int(loop.trainer.epoch_seen.numpy()) == 80
    assert images == 3 * 8  # steps 8-10 of 10, batch 8
    loop.end_epoch(lr, 2.0, images)
    assert pd.read_csv(run / "history.csv").images_per_s.tolist() == [12.0]


def _trainer(data, **kw):
    from lowlevel.datasets import cifar10
    from lowlevel import pipeline
    from lowlevel.config import Config
    from lowlevel.step import Trainer
    d = cifar10.load(data)
    cfg = Config(alpha=0.125, batch_size=8, epochs=2, **kw)
    batches = pipeline.Batches(d.train_images, d.train_labels, pipeline.Normalization.of(d.train_images), 8)
    return Trainer(cfg, batches), batches


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16"])
def test_train_step_traces_once(data, precision):
    trainer, batches = _trainer(data, precision=precision)
    for epoch, n in [(0, 3), (0, 5), (1, 2), (1, 1)]:
        trainer.train_steps(batches.order(epoch), tf.constant(n))
    assert trainer.step == 11
    assert trainer.train_steps.experimental_get_tracing_count() == 1
    assert all(np.isfinite(v.numpy()).all() for v in trainer.model.variables)


def test_float16_step_skips_an_overflowed_update(data):
    """Scaled gradients that overflow: no variable or slot changes, the step still counts, the scale halves."""
    trainer, batches = _trainer(data, precision="float16")
    order = batches.order(0)
    trainer.train_steps(order, tf.constant(1))
    state = list(trainer.model.variables) + trainer.optimizer.velocity
    before = {v.ref(): v.numpy() for v in state if v.trainable or "velocity" in v.name}
    trainer.loss_scale.scale.assign(3e38)  # the scaled loss overflows float32
    trainer.train_steps(order, tf.constant(1))
    assert trainer.step == 2 and float(trainer.loss_scale.scale.numpy()) == pytest.approx(1.5e38)
    for v in state:
        if v.ref() in before:
            np.testing.assert_array_equal(v.numpy(), before[v.ref()], err_msg=v.name)
    trainer.loss_scale.scale.assign(2.0 ** 8)
    trainer.train_steps(order, tf.constant(1))
    assert float(trainer.loss_scale.scale.numpy()) == 2.0 ** 8  # finite: kept, and applied
    kernel = trainer.model.blocks[0].pointwise.kernel
    assert not np.array_equal(kernel.numpy(), before[kernel.ref()])


@pytest.mark.slow
def test_float16_on_a_cpu_says_bfloat16_is_the_cpus_type(tmp_path, data):
    out = train(tmp_path, "--data", str(data), "--run-name", "h", "--precision", "float16", "--max-steps", "1",
                *TINY).stdout
    assert "note: float16 is for GPUs" in out and "--precision bfloat16" in out


@pytest.mark.slow
def test_float16_checkpoint_holds_the_loss_scale(tmp_path, data):
    trainer, batches = _trainer(data, precision="float16")
    trainer.train_steps(batches.order(0), tf.constant(1))
    trainer.loss_scale.scale.assign(512.0)
    path = trainer.checkpoint().write(str(tmp_path / "ckpt"))
    fresh, _ = _trainer(data, precision="float16")
    fresh.checkpoint().read(path).assert_consumed()
    assert float(fresh.loss_scale.scale.numpy()) == 512.0 and fresh.step == 1


@pytest.mark.slow
def test_bfloat16_run_trains_evaluates_and_keeps_its_precision(tmp_path, data):
    out = train(tmp_path, "--data", str(data), "--run-name", "b", "--epochs", "1", "--precision", "bfloat16",
                *TINY).stdout
    run = tmp_path / "checkpoints" / "b"
    assert json.loads((run / "config.json").read_text())["precision"] == "bfloat16"
    reported = float(out.split("test accuracy ")[1].split("%")[0])
    ev = run_here("evaluate", tmp_path, "--checkpoint", run, check=False)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert float(ev.stdout.split("test accuracy ")[1].split("%")[0]) == reported
    again = train(tmp_path, "--run-name", "b", "--resume", "--precision", "float32", "--epochs", "1", check=False)
    assert again.returncode == 2
    assert "the run was made with --precision bfloat16, not float32" in again.stderr


@pytest.mark.slow
def test_sigint_saves_and_resume_completes_without_gaps(tmp_path, data):
    args = ["--data", str(data), "--run-name", "s", *SMALL, "--epochs", "12"]  # conftest.SMALL: a small network
    env = ENV
    proc = subprocess.Popen([sys.executable, "-m", "lowlevel.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "checkpoints" / "s"
    deadline = time.time() + 300
    while not (run / "history.csv").exists() or len(pd.read_csv(run / "history.csv")) < 2:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "SIGINT: saving a checkpoint" in err and "Traceback" not in err
    stopped = len(pd.read_csv(run / "history.csv"))
    assert stopped < 12 and (run / "learning_curves.png").stat().st_size > 10_000  # drawn at every epoch's end
    done = run_printed(out.strip().splitlines()[-1], tmp_path, "continue with:")  # as printed
    assert done.returncode == 0, done.stderr[-2000:]
    history = pd.read_csv(run / "history.csv")
    assert history.epoch.tolist() == list(range(1, 13))  # no gap, no duplicate


@pytest.mark.slow
def test_incompatible_checkpoint_is_one_sentence(tmp_path, data, cli):
    train(tmp_path, "--data", str(data), "--run-name", "y", "--epochs", "1", "--max-steps", "2", *TINY)
    cfg_path = tmp_path / "checkpoints" / "y" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["alpha"] = 0.25  # as if config.json and the checkpoint came from different runs
    cfg_path.write_text(json.dumps(cfg))
    one_error(*cli("train", tmp_path, "--run-name", "y", "--resume")[::2], "cannot be restored")
    one_error(*cli("evaluate", tmp_path, "--checkpoint", cfg_path.parent, "--data", data)[::2], "cannot be restored")
    for target in (tmp_path / "checkpoints" / "missing", cfg_path.parent / "ckpt-77"):
        one_error(*cli("evaluate", tmp_path, "--checkpoint", target)[::2], str(target))


@pytest.mark.slow
def test_nan_loss_stops_with_one_sentence(tmp_path, data):
    result = train(tmp_path, "--data", str(data), "--run-name", "n", "--epochs", "3", *TINY, "--lr", "1e30",
                   "--warmup-epochs", "0", check=False)
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    err = result.stderr.strip().splitlines()[-1]
    assert "the training loss became" in err and "last good checkpoint" in err


@pytest.mark.slow
def test_a_parameter_that_is_not_finite_is_never_saved(tmp_path, data, monkeypatch):
    """The loss guard sees the loss computed before the update; an update that blows up the
    weights at an epoch's last step must still not become "the last good checkpoint"."""
    from lowlevel import loop as lp, runs
    from lowlevel.config import Config
    monkeypatch.chdir(tmp_path)
    cfg, explicit = Config.from_args(["--data", str(data), "--run-name", "f", *STRAIGHT])
    cfg, run = runs.run_config(cfg.check(), explicit)
    with runs.open_run(cfg, run):
        loop = lp.Loop(cfg, run, datasets.load(cfg.dataset, cfg.data, cfg.split_seed))
        stop = lp.Signals()
        try:
            loop.end_epoch(*loop.train_epoch(stop))
            assert loop.manager.latest_checkpoint.endswith("ckpt-10")
            loop.train_epoch(stop)
            for v in (loop.trainer.model.blocks[2].pointwise.kernel, loop.trainer.optimizer.velocity[5],
                      loop.trainer.model.bn_stem.moving_variance):
                before = v.numpy()
                v.assign(tf.tensor_scatter_nd_update(v, [[0] * len(v.shape)], [float("inf")]))
                with pytest.raises(FloatingPointError, match="became NaN or infinite by step 20, so it was not "
                                                             "saved and the last good checkpoint .*ckpt-10"):
                    loop.end_epoch(0.1, 1.0, 80)
                with pytest.raises(FloatingPointError):
                    loop.save()
                v.assign(before)
        finally:
            stop.restore()
    assert sorted(p.name for p in run.glob("ckpt-*.index")) == ["ckpt-10.index"]
    assert pd.read_csv(run / "history.csv").epoch.tolist() == [1]


@pytest.mark.parametrize("flags, phrases", [
    (["--epochs", "0"], ["--epochs must be greater than 0"]),
    (["--batch-size", "0"], ["--batch-size must be greater than 0"]),
    (["--batch-size", "-8"], ["--batch-size must be greater than 0"]),
    (["--batch-size", "81"], ["--batch-size 81 is larger than the 80 training images"]),
    (["--lr", "nan"], ["--lr must be a finite number"]),
    (["--lr", "inf"], ["--lr must be a finite number"]),
    (["--lr", "0"], ["--lr must be greater than 0"]),
    (["--lr", "-0.1"], ["--lr must be greater than 0"]),
    (["--val-size", "100"], ["--val-size 100 leaves no training image"]),
    (["--cutout", "33"], ["--cutout 33 is larger than the 32-pixel image"]),
    (["--alpha", "0"], ["--alpha must be greater than 0"]),
    (["--precision", "float8"], ["--precision must be float32, bfloat16 or float16"]),
    (["--strategy", "tpu"], ["--strategy must be default, mirrored or multi-worker, not 'tpu'"]),
    (["--strategy", "mirrored", "--precision", "float16"], ["--precision float16", "use float32 or bfloat16"]),
    (["--run-name", "a/b"], ["--run-name 'a/b' must be a plain folder name"]),
    (["--run-name", ".."], ["--run-name '..' must be a plain folder name"]),
    (["--checkpoint-dir", "afile"], ["--checkpoint-dir afile: is a file"]),
    (["--epochs", "two"], ["argument --epochs: invalid int value: 'two'", "--help"]),
    (["--colour", "red"], ["unrecognized arguments: --colour red"]),
    (["--data", "nowhere"], ["nowhere: no such folder"]),
])
def test_bad_values_are_one_sentence_before_any_work(tmp_path, data, cli, flags, phrases):
    (tmp_path / "afile").write_text("x")
    args = ["--data", data, "--run-name", "bad", *TINY, *flags]
    status, _, err = cli("train", tmp_path, *args)
    one_error(status, err, *phrases)
    assert not (tmp_path / "checkpoints").exists()  # nothing made: the same command, corrected, just works


def test_a_run_folder_that_cannot_be_created_is_one_sentence(tmp_path, data, cli):
    (tmp_path / "afile").write_text("x")
    one_error(*cli("train", tmp_path, "--data", data, "--checkpoint-dir", tmp_path / "afile" / "sub", *TINY)[::2],
              "cannot be created", "--checkpoint-dir")


@pytest.mark.slow
def test_an_existing_run_and_a_resume_that_would_change_it_are_refused(tmp_path, data, cli):
    train(tmp_path, "--data", str(data), "--run-name", "x", "--epochs", "1", "--max-steps", "2", *TINY)
    one_error(*cli("train", tmp_path, "--data", data, "--run-name", "x")[::2], "already holds a run", "--resume")
    one_error(*cli("train", tmp_path, "--run-name", "x", "--resume", "--alpha", "0.25")[::2],
              "the run was made with --alpha 0.125, not 0.25")
    one_error(*cli("train", tmp_path, "--run-name", "nope", "--resume")[::2], "is not a run folder")
    (tmp_path / "checkpoints" / "x" / "checkpoint").write_text("garbage {{{")
    one_error(*cli("train", tmp_path, "--run-name", "x", "--resume")[::2],
              "the list of checkpoints cannot be read", "--from-checkpoint ckpt-2")


def test_label_smoothed_cross_entropy_is_keras_categorical_crossentropy():
    """With one label per image, and with CutMix's two in proportion (share)."""
    import keras
    from lowlevel.step import cross_entropy
    logits = tf.random.stateless_normal([64, 10], seed=[3, 4]) * 3
    labels = tf.random.stateless_uniform([64], seed=[5, 6], maxval=10, dtype=tf.int32)
    for s in (0.0, 0.1, 0.3):
        ref = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=s)(tf.one_hot(labels, 10), logits)
        np.testing.assert_allclose(float(cross_entropy(logits, labels, s)), float(ref), rtol=1e-6)
    partner = tf.random.stateless_uniform([64], seed=[7, 8], maxval=10, dtype=tf.int32)  # CutMix's targets
    for s, share in ((0.0, 0.7), (0.1, 0.25), (0.1, 1.0)):
        mixed = share * tf.one_hot(labels, 10) + (1 - share) * tf.one_hot(partner, 10)
        ref = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=s)(mixed, logits)
        got = cross_entropy(logits, labels, s, partner, tf.constant(share))
        np.testing.assert_allclose(float(got), float(ref), rtol=1e-6)
        both = share * cross_entropy(logits, labels, s) + (1 - share) * cross_entropy(logits, partner, s)
        np.testing.assert_allclose(float(got), float(both), rtol=1e-6)  # linear in the target


def test_second_sigint_stops_at_once_without_a_traceback(monkeypatch, capsys, data, tmp_path):
    from lowlevel import loop, train as train_module
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = loop.Signals()
        stop._handle(signal.SIGINT, None)  # the first: remembered, training goes on to a save
        assert stop.caught == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)  # the second: stop now
    finally:
        for s, h in saved.items():
            signal.signal(s, h)

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(loop, "run", interrupted)
    monkeypatch.chdir(tmp_path)
    assert train_module.main(["--data", str(data), "--run-name", "k", *TINY]) == 130
    err = capsys.readouterr().err
    assert err.strip().endswith("stopped at once, without saving; --resume continues from the last checkpoint.")


def test_resume_without_a_name_picks_the_latest_run(tmp_path):
    from lowlevel.config import Config
    from lowlevel.runs import RunError, find_run
    root = tmp_path / "checkpoints"
    with pytest.raises(RunError, match="holds no run to resume; give --run-name"):
        find_run(Config(checkpoint_dir=str(root), resume=True))
    for i, name in enumerate(["old", "new"]):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}")
        os.utime(root / name / "config.json", (1_000_000 + i, 1_000_000 + i))
    assert find_run(Config(checkpoint_dir=str(root), resume=True)).name == "new"
    assert find_run(Config(checkpoint_dir=str(root), run_name="old", resume=True)).name == "old"
    assert find_run(Config(checkpoint_dir=str(root))).name.startswith("run-")  # a new run gets a fresh name
