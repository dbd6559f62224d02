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

import fakecifar

TINY = ["--alpha", "0.125", "--batch-size", "8", "--val-size", "20", "--progress", "none", "--steps-per-call", "3",
        "--lr", "0.05", "--warmup-epochs", "0.5"]  # 80 training images: 10 steps per epoch


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    fakecifar.write(folder, "py2")
    return folder


# a download attempted by a test goes nowhere but this machine (port 9: discard, nothing listens)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), LOWLEVEL_CIFAR10_URL="http://127.0.0.1:9/none.tar.gz")


def train(cwd, *args, check=True, **kw):
    env = ENV
    result = subprocess.run([sys.executable, "-m", "lowlevel.train", *args], cwd=cwd, capture_output=True, text=True,
                            env=env, timeout=600, **kw)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def weights(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "model/" in k or "optimizer/" in k}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 100
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_train_writes_the_run_and_evaluate_agrees(tmp_path, data):
    out = train(tmp_path, "--data", str(data), "--run-name", "r", "--epochs", "2", *TINY).stdout
    run = tmp_path / "checkpoints" / "r"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["alpha"] == 0.125 and cfg["epochs"] == 2 and cfg["run_name"] == "r"
    history = pd.read_csv(run / "history.csv")
    assert history.epoch.tolist() == [1, 2] and history.step.tolist() == [10, 20]
    assert set(history.columns) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_s"}
    assert (run / "ckpt-20.index").exists() and list((run / "best").glob("ckpt-*.index"))
    assert (run / "learning_curves.png").stat().st_size > 10_000
    assert "epoch   2/2" in out
    reported = float(out.split("test accuracy ")[1].split("%")[0])
    ev = subprocess.run([sys.executable, "-m", "lowlevel.evaluate", "--checkpoint", str(run)], cwd=tmp_path,
                        capture_output=True, text=True, env=ENV,
                        timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    measured = float(ev.stdout.split("test accuracy ")[1].split("%")[0])
    assert measured == reported
    assert "ckpt-20: test loss" in ev.stdout and "airplane" in ev.stdout
    assert (run / "ckpt-20-test-confusion.csv").exists() and (run / "ckpt-20-test-confusion.png").exists()
    confusion = pd.read_csv(run / "ckpt-20-test-confusion.csv", index_col=0)
    assert confusion.values.sum() == 30
    best = subprocess.run([sys.executable, "-m", "lowlevel.evaluate", "--checkpoint", str(run), "--best"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=ENV)
    assert best.returncode == 0 and "best/ckpt-" in best.stdout


def test_resume_is_exact(tmp_path, data):
    """14 steps straight vs 7 steps (mid-epoch), a new process, restore, 7 more: the same bits."""
    common = ["--data", str(data), "--epochs", "2", "--max-steps", "14", *TINY]
    train(tmp_path, "--run-name", "straight", *common)
    half = train(tmp_path, "--run-name", "halves", *common[:-len(TINY)], *TINY, "--max-steps", "7")
    assert "stopped (--max-steps 7) at step 7 of 20" in half.stdout
    train(tmp_path, "--run-name", "halves", "--resume", "--max-steps", "14", "--data", str(data))
    root = tmp_path / "checkpoints"
    assert_same_weights(root / "straight" / "ckpt-14", root / "halves" / "ckpt-14")
    a, b = (pd.read_csv(root / r / "history.csv") for r in ("straight", "halves"))
    cols = ["epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]
    pd.testing.assert_frame_equal(a[cols], b[cols])  # the epoch that straddled the stop reports the same


def test_a_resumed_epoch_counts_only_the_images_this_process_trained(tmp_path, data, monkeypatch):
    """Its images/s divides the images trained since the restore by the time since the restore."""
    from lowlevel import train as tm
    from lowlevel.config import Config
    train(tmp_path, "--data", str(data), "--run-name", "p", "--epochs", "1", "--max-steps", "7", *TINY)
    monkeypatch.chdir(tmp_path)
    cfg, explicit = Config.from_args(["--data", str(data), "--run-name", "p", "--resume", "--max-steps", "10"])
    cfg, run = tm.prepare_run(cfg.check(), explicit)
    loop = tm.Loop(cfg, run, tm.load_data(cfg))
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        lr, seconds, images = loop.train_epoch(tm._Stop())
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert loop.trainer.step == 10 and int(loop.trainer.epoch_seen.numpy()) == 80
    assert images == 3 * 8  # steps 8-10 of 10, batch 8
    loop.end_epoch(lr, 2.0, images)
    assert pd.read_csv(run / "history.csv").images_per_s.tolist() == [12.0]


def _trainer(data, **kw):
    from lowlevel import cifar10, pipeline
    from lowlevel.config import Config
    from lowlevel.train import Trainer
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


def test_float16_on_a_cpu_says_bfloat16_is_the_cpus_type(tmp_path, data):
    out = train(tmp_path, "--data", str(data), "--run-name", "h", "--precision", "float16", "--max-steps", "1",
                *TINY).stdout
    assert "note: float16 is for GPUs" in out and "--precision bfloat16" in out


def test_float16_checkpoint_holds_the_loss_scale(tmp_path, data):
    trainer, batches = _trainer(data, precision="float16")
    trainer.train_steps(batches.order(0), tf.constant(1))
    trainer.loss_scale.scale.assign(512.0)
    path = trainer.checkpoint().write(str(tmp_path / "ckpt"))
    fresh, _ = _trainer(data, precision="float16")
    fresh.checkpoint().read(path).assert_consumed()
    assert float(fresh.loss_scale.scale.numpy()) == 512.0 and fresh.step == 1


def test_bfloat16_run_trains_evaluates_and_keeps_its_precision(tmp_path, data):
    out = train(tmp_path, "--data", str(data), "--run-name", "b", "--epochs", "1", "--precision", "bfloat16",
                *TINY).stdout
    run = tmp_path / "checkpoints" / "b"
    assert json.loads((run / "config.json").read_text())["precision"] == "bfloat16"
    reported = float(out.split("test accuracy ")[1].split("%")[0])
    ev = subprocess.run([sys.executable, "-m", "lowlevel.evaluate", "--checkpoint", str(run)], cwd=tmp_path,
                        capture_output=True, text=True, env=ENV, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert float(ev.stdout.split("test accuracy ")[1].split("%")[0]) == reported
    again = train(tmp_path, "--run-name", "b", "--resume", "--precision", "float32", "--epochs", "1", check=False)
    assert again.returncode == 2
    assert "the run was made with --precision bfloat16, not float32" in again.stderr


def test_sigint_saves_and_resume_completes_without_gaps(tmp_path, data):
    args = ["--data", str(data), "--run-name", "s", "--epochs", "30", *TINY]
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
    assert "--resume" in out
    stopped = len(pd.read_csv(run / "history.csv"))
    assert stopped < 30
    train(tmp_path, "--run-name", "s", "--resume", "--data", str(data))
    history = pd.read_csv(run / "history.csv")
    assert history.epoch.tolist() == list(range(1, 31))  # no gap, no duplicate


def test_sigkill_leaves_a_restorable_checkpoint(tmp_path, data):
    """Killed at whatever moment (a save included): resume from the last whole checkpoint ends on the same bits."""
    common = ["--data", str(data), "--epochs", "6", *TINY]
    train(tmp_path, "--run-name", "straight", *common)
    env = ENV
    proc = subprocess.Popen([sys.executable, "-m", "lowlevel.train", "--run-name", "killed", *common], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "checkpoints" / "killed"
    deadline = time.time() + 300
    while not list(run.glob("ckpt-20.index")):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run / "ckpt-9999_temp").mkdir(exist_ok=True)  # what a kill inside a save leaves behind
    train(tmp_path, "--run-name", "killed", "--resume", "--data", str(data))
    root = tmp_path / "checkpoints"
    assert_same_weights(root / "straight" / "ckpt-60", run / "ckpt-60")
    assert pd.read_csv(run / "history.csv").epoch.tolist() == [1, 2, 3, 4, 5, 6]


def _one_error(result, *phrases):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for p in phrases:
        assert p in lines[0]


def test_user_errors_are_one_sentence(tmp_path, data):
    _one_error(train(tmp_path, "--data", str(tmp_path / "nowhere"), check=False), "nowhere: no such folder")
    (tmp_path / "afile").write_text("x")
    _one_error(train(tmp_path, "--data", str(data), "--checkpoint-dir", str(tmp_path / "afile" / "sub"), check=False),
               "cannot write there", "--checkpoint-dir")
    _one_error(train(tmp_path, "--data", str(data), "--epochs", "0", check=False), "--epochs must be greater than 0")
    train(tmp_path, "--data", str(data), "--run-name", "x", "--epochs", "1", "--max-steps", "2", *TINY)
    _one_error(train(tmp_path, "--data", str(data), "--run-name", "x", check=False), "already holds a run",
               "--resume")
    _one_error(train(tmp_path, "--run-name", "x", "--resume", "--alpha", "0.25", check=False),
               "the run was made with --alpha 0.125, not 0.25")
    _one_error(train(tmp_path, "--run-name", "nope", "--resume", check=False), "is not a run folder")
    (tmp_path / "checkpoints" / "x" / "checkpoint").write_text("garbage {{{")
    _one_error(train(tmp_path, "--run-name", "x", "--resume", check=False), "checkpoint list is missing or unreadable")


def test_incompatible_checkpoint_is_one_sentence(tmp_path, data):
    train(tmp_path, "--data", str(data), "--run-name", "y", "--epochs", "1", "--max-steps", "2", *TINY)
    cfg_path = tmp_path / "checkpoints" / "y" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["alpha"] = 0.25  # as if config.json and the checkpoint came from different runs
    cfg_path.write_text(json.dumps(cfg))
    _one_error(train(tmp_path, "--run-name", "y", "--resume", check=False), "cannot be restored")
    env = ENV
    ev = subprocess.run([sys.executable, "-m", "lowlevel.evaluate", "--checkpoint", str(cfg_path.parent),
                         "--data", str(data)], capture_output=True, text=True, env=env, timeout=300)
    _one_error(ev, "cannot be restored")
    for target in (tmp_path / "checkpoints" / "missing", cfg_path.parent / "ckpt-77"):
        ev = subprocess.run([sys.executable, "-m", "lowlevel.evaluate", "--checkpoint", str(target)],
                            capture_output=True, text=True, env=env, timeout=300)
        _one_error(ev, str(target))


def test_nan_loss_stops_with_one_sentence(tmp_path, data):
    result = train(tmp_path, "--data", str(data), "--run-name", "n", "--epochs", "3", *TINY, "--lr", "1e30",
                   "--warmup-epochs", "0", check=False)
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    err = result.stderr.strip().splitlines()[-1]
    assert "the training loss became" in err and "last good checkpoint" in err



def test_second_sigint_stops_at_once_without_a_traceback(monkeypatch, capsys, data, tmp_path):
    from lowlevel import train as train_module
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = train_module._Stop()
        stop._handle(signal.SIGINT, None)  # the first: remembered, training goes on to a save
        assert stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)  # the second: stop now
    finally:
        for s, h in saved.items():
            signal.signal(s, h)

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_module, "fit", interrupted)
    monkeypatch.chdir(tmp_path)
    assert train_module.main(["--data", str(data), "--run-name", "k"]) == 130
    err = capsys.readouterr().err
    assert err.strip().endswith("stopped at once, without saving; --resume continues from the last checkpoint.")


def test_resume_without_a_name_picks_the_latest_run(tmp_path):
    from lowlevel.config import Config
    from lowlevel.train import RunError, find_run
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
