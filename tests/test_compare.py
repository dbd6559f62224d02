"""python -m lowlevel.compare on tiny data: the runs, the table, the plot, and skipping finished runs."""
import pytest
import pandas as pd

from conftest import one_error

pytestmark = pytest.mark.slow  # subprocesses and trained runs: left out of -m "not slow"

TINY = ["--epochs", "1", "--batch-size", "8", "--val-size", "20", "--progress", "none", "--no-tensorboard",
        "--steps-per-call", "5", "--lr", "0.01"]


def test_compare_trains_measures_and_resumes(tmp_path, data, cli, monkeypatch):
    """(MobileNet built shorter, tests/shorter.py: what compare does with a run does not depend on depth.)"""
    from shorter import shorten

    shorten("mobilenet-standard", monkeypatch.setattr)
    args = ["--data", data, "--models", "vgg-blocks-separable@0.125,mobilenet-standard@0.125", *TINY]
    status, out, err = cli("compare", tmp_path, *args)
    assert status == 0, err
    table = pd.read_csv(tmp_path / "checkpoints" / "compare.csv")
    assert list(table.name) == ["vgg-blocks-separable-0.125", "mobilenet-standard-0.125"]
    assert list(table.columns) == ["name", "model", "alpha", "parameters", "mult_adds", "train_images_per_s",
                                   "inference_images_per_s", "test_accuracy", "wall_time_s", "epochs",
                                   "int8_accuracy", "int8_bytes"]
    assert table.int8_accuracy.isna().all() and "int8 acc" not in out  # not asked for
    assert (table.parameters > 0).all() and (table.inference_images_per_s > 0).all() and (table.epochs == 1).all()
    assert table.test_accuracy.between(0, 1).all()
    assert (tmp_path / "checkpoints" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "checkpoints" / "compare-vgg-blocks-separable-0.125" / "ckpt-10.index").is_file()
    assert "vgg-blocks-separable-0.125" in out and "test acc" in out
    for name in table.name:  # runs trained otherwise, under other names, are found by --prefix
        (tmp_path / "checkpoints" / f"compare-{name}").rename(tmp_path / "checkpoints" / f"mine-{name}")
    status, out, err = cli("compare", tmp_path, *args, "--prefix", "mine", "--int8")  # nothing is trained again
    assert status == 0 and "epoch   1/1" not in out and "int8 acc" in out, out
    again = pd.read_csv(tmp_path / "checkpoints" / "compare.csv")
    pd.testing.assert_series_equal(again.test_accuracy, table.test_accuracy)
    assert again.int8_accuracy.between(0, 1).all() and (again.int8_bytes > 1000).all()
    int8 = tmp_path / "checkpoints" / "mine-mobilenet-standard-0.125" / "export" / "int8.tflite"
    assert again.int8_bytes[1] == int8.stat().st_size


def test_compare_errors_are_one_sentence(tmp_path, data, cli):
    one_error(*cli("compare", tmp_path, "--data", data, "--models", "resnet")[::2], "unknown model 'resnet'")
    one_error(*cli("compare", tmp_path, "--data", data, "--models", "mobilenet@x")[::2], "has width 'x'")
    one_error(*cli("compare", tmp_path, "--data", data, "--dataset", "mnist")[::2], "--dataset must be cifar10")
