import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import fakecifar  # noqa: E402


@pytest.fixture(params=fakecifar.ENCODINGS)
def cifar_any_encoding(tmp_path, request):
    """(folder, raw) for a tiny CIFAR-10 in each encoding a reader must accept."""
    folder = tmp_path / "cifar-10-batches-py"
    return folder, fakecifar.write(folder, request.param)


@pytest.fixture
def cifar_dir(tmp_path):
    """(folder, raw) for a tiny CIFAR-10 in the official encoding."""
    folder = tmp_path / "cifar-10-batches-py"
    return folder, fakecifar.write(folder, "py2")


# ---------------------------------------------------------------- training runs on tiny data

import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

# alpha 0.125, 80 training images in 10 steps of 8 per epoch, 20 held out
TINY = ["--alpha", "0.125", "--batch-size", "8", "--val-size", "20", "--progress", "none", "--steps-per-call", "3",
        "--lr", "0.05", "--warmup-epochs", "0.5", "--no-tensorboard"]  # test_events.py writes event files
# a download attempted by a test goes nowhere but this machine (port 9: discard, nothing listens)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), LOWLEVEL_CIFAR10_URL="http://127.0.0.1:9/none.tar.gz")


def run_module(module, cwd, *args, check=True, timeout=600):
    """python -m lowlevel.<module> ARGS in cwd, in a process of its own (warm.run: forked with TensorFlow
    already imported)."""
    import warm
    result = warm.run([sys.executable, "-m", f"lowlevel.{module}", *args], cwd, ENV, timeout)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def run_here(module, cwd, *args, check=True):
    """lowlevel.<module>.main(ARGS) in cwd, in this process (no TensorFlow start-up), its output captured:
    what run_module returns (returncode, stdout, stderr), for tests that need no process of their own."""
    import contextlib
    import importlib
    import io
    import types

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = importlib.import_module(f"lowlevel.{module}").main([str(a) for a in args])
            except SystemExit as e:  # argparse's errors and --help
                status = e.code
    finally:
        os.chdir(here)
    result = types.SimpleNamespace(returncode=status, stdout=out.getvalue(), stderr=err.getvalue())
    if check:
        assert status == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def run_printed(line, cwd, marker, process=False):
    """Run the command a lowlevel command printed after `marker`, exactly as printed: its words as the shell
    splits them, `python -m lowlevel.<module> ARGS`, given to that module's main in this process (run_here),
    or with process=True run as a new process (`python` being this one)."""
    assert marker in line, line
    words = shlex.split(line.split(marker, 1)[1].strip())
    assert words[:2] == ["python", "-m"] and words[2].startswith("lowlevel."), words
    if process:
        return subprocess.run([sys.executable, *words[1:]], cwd=cwd, capture_output=True, text=True, env=ENV,
                              timeout=600)
    return run_here(words[2].removeprefix("lowlevel."), cwd, *words[3:], check=False)


def weights(prefix):
    """Every model and optimizer value of a checkpoint, by key."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(str(prefix))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(("model/", "optimizer/", "normalization/", "best_val", "averaged/"))}


def randomize_batch_norms(keras_model, rng):
    """Give every Keras BatchNormalization layer non-trivial parameters and statistics (before copying them)."""
    import keras
    for layer in keras_model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 2.0, c)])


def keras_copier(keras_model):
    """(copy, bn): copy(module, name) puts the Keras layer `name`'s kernel (and bias) into a lowlevel
    convolution or dense layer; bn(module, name) a Keras BatchNormalization's four vectors into a BatchNorm."""
    def copy(module, name):
        ours = [v for v in (getattr(module, "kernel", None), getattr(module, "bias", None)) if v is not None]
        for var, value in zip(ours, keras_model.get_layer(name).get_weights(), strict=True):
            var.assign(value.reshape(var.shape))

    def bn(module, name):
        for var, value in zip((module.gamma, module.beta, module.moving_mean, module.moving_variance),
                              keras_model.get_layer(name).get_weights(), strict=True):
            var.assign(value)
    return copy, bn


def assert_same_weights(a, b, at_least=100):
    """Checkpoints a and b hold the same values, bit for bit, under the same keys (at least `at_least`:
    the tiny MobileNet's variables and momenta; SMALL_VALUES for SMALL's runs)."""
    import numpy as np
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and len(wa) >= at_least
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def made_once(tmp_path_factory, name: str, make):
    """The folder `name`, filled by make(folder) once per test session and shared by the xdist workers:
    their temporary folders share a parent, and a file lock lets one worker make it while the others
    wait.  A test treats it as read-only, or copies it (one worker's writes would race another's)."""
    from filelock import FileLock

    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: its own folder
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent  # this session's, shared by its workers
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """A tiny CIFAR-10 folder (100 training, 30 test images)."""
    return made_once(tmp_path_factory, "cifar", lambda f: fakecifar.write(f / "cifar-10-batches-py", "py2")
                     ) / "cifar-10-batches-py"


@pytest.fixture(scope="session")
def colours(tmp_path_factory):
    """A tiny run trained on images whose colour tells their class (so it is right and confident, and an
    int8 file's agreement with it means something), exported in every format: (run, export folder).
    At full width: narrower ones learn the colours in 15 epochs for some seeds only (width 0.25: test
    accuracy 60-100% over seeds 0-2, width 1: 99-100% over seeds 0-3).  At a peak rate of 0.05: 100% in
    each of nine runs (seeds 0-1 with 1 and 2 intra-op threads, seeds 2-3 with 1, oneDNN capped at AVX2
    with seed 0, Eigen with seeds 0-1), where 0.1 ended two of six runs (seeds 0-1, 1 or 2 threads, with
    and without Cutout) at 90%, under the 95% test_export.py asks of it.
    Made once for all workers (made_once): copy it to change it."""
    from lowlevel import export

    def make(cwd):
        fakecifar.write(cwd / "cifar-10-batches-py", per_batch=40, n_test=100, learnable=True)
        run_module("train", cwd, "--data", cwd / "cifar-10-batches-py", "--run-name", "colours", "--epochs", "15",
                   "--alpha", "1.0", "--batch-size", "20", "--val-size", "20", "--lr", "0.05", "--warmup-epochs",
                   "0.5", "--bn-momentum", "0.9", "--progress", "none", "--steps-per-call", "3", "--no-tensorboard")
        for fmt in ("all", "tflite-int8-per-tensor"):
            assert export.main(["--checkpoint", str(cwd / "checkpoints" / "colours"), "--format", fmt, "--out",
                                str(cwd / "export"), "--calibration", "60"]) == 0

    cwd = made_once(tmp_path_factory, "exported", make)
    return cwd / "checkpoints" / "colours", cwd / "export"


STRAIGHT = ["--epochs", "3", *TINY]
# the same run of a small network (vgg-blocks-separable at width 0.125: six separable convolutions, no batch
# norm; 44 checkpointed values), about a third of the tiny MobileNet's time, for the tests of what a run
# folder survives, which do not depend on the network (the loop has no path of its own for any network).
# Its validation accuracy without TTA or a moving average rises at epoch 2 (0%, 5%, 5%), so the best checkpoint
# is saved at epochs 1 and 2 (with flip TTA, or with the average, it is 5% from epoch 1 on).  STRAIGHT's runs
# have both, the defaults.
SMALL = [*STRAIGHT, "--model", "vgg-blocks-separable", "--lr", "0.01", "--tta", "none", "--ema", "0"]
SMALL_VALUES = 44


def _uninterrupted(tmp_path_factory, data, name, args):
    """(run folder, what train printed) of `train ARGS` never interrupted, made once for all workers."""
    def make(cwd):
        out = run_module("train", cwd, "--data", data, "--run-name", name, *args).stdout
        (cwd / "train-output.txt").write_text(out)

    cwd = made_once(tmp_path_factory, name, make)
    return cwd / "checkpoints" / name, (cwd / "train-output.txt").read_text()


@pytest.fixture(scope="session")
def straight(tmp_path_factory, data):
    """A 3-epoch tiny run that was never interrupted, what every stopped and resumed run must equal:
    (its folder, what train printed).  Shared by the workers: copy it to change it."""
    return _uninterrupted(tmp_path_factory, data, "straight", STRAIGHT)


@pytest.fixture(scope="session")
def small(tmp_path_factory, data):
    """SMALL's run never interrupted, as `straight` is STRAIGHT's."""
    return _uninterrupted(tmp_path_factory, data, "small", SMALL)


def same_run(run, straight_run, at_least=100):
    """`run` ended exactly as the uninterrupted run: final and best checkpoints bitwise (at least `at_least`
    values: SMALL_VALUES for SMALL's runs), history row for row."""
    import pandas as pd
    assert_same_weights(straight_run / "ckpt-30", run / "ckpt-30", at_least)
    best = sorted(p.name for p in (straight_run / "best").glob("ckpt-*.index"))
    assert sorted(p.name for p in (run / "best").glob("ckpt-*.index")) == best
    assert_same_weights(straight_run / "best" / best[0].removesuffix(".index"),
                        run / "best" / best[0].removesuffix(".index"), at_least)
    cols = ["epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]
    pd.testing.assert_frame_equal(pd.read_csv(straight_run / "history.csv")[cols], pd.read_csv(run / "history.csv")[cols])


@pytest.fixture
def cli(monkeypatch, capsys):
    """cli("train", cwd, *args) -> (exit status, stdout, stderr) of lowlevel.<module>.main, in this process
    (no TensorFlow start-up: a few seconds less than a new process)."""
    import importlib

    def call(module, cwd, *args):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            status = importlib.import_module(f"lowlevel.{module}").main([str(a) for a in args])
        except SystemExit as e:  # argparse's errors and --help
            status = e.code
        out, err = capsys.readouterr()
        return status, out, err
    return call


def one_error(status, err, *phrases):
    """The command failed with status 2 and one line on stderr, `error: ...`, holding every phrase."""
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (status, err)
    assert "Traceback" not in err
    for p in phrases:
        assert p in lines[0], (p, lines[0])
    return lines[0]
