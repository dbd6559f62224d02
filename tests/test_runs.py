import pytest
"""lowlevel.runs: loading a run restores what it trained with; the run folder's small tools."""
import shutil

import fakecifar
from conftest import one_error


def _other_copy(tmp_path, data):
    """The same test images as `data`, but other training images (so other statistics)."""
    other = tmp_path / "other" / "cifar-10-batches-py"
    fakecifar.write(other, "py2", seed=1)
    shutil.copy(data / "test_batch", other / "test_batch")
    return other


@pytest.mark.slow
def test_evaluation_uses_the_normalization_the_run_trained_with(tmp_path, data, straight, cli):
    """It used to recompute mean and std from whatever --data it was given: another copy of the
    data then scored the same checkpoint differently."""
    run = straight[0]
    status, here, _ = cli("evaluate", tmp_path, "--checkpoint", run / "ckpt-30", "--data", data)
    assert status == 0
    status, there, _ = cli("evaluate", tmp_path, "--checkpoint", run / "ckpt-30", "--data",
                           _other_copy(tmp_path, data))
    assert status == 0
    line = [line for line in here.splitlines() if "test loss" in line][0]
    assert line in there  # loss and accuracy to the last printed digit
    assert float(line.split("test accuracy ")[1].split("%")[0]) == float(
        straight[1].split("test accuracy ")[1].split("%")[0])  # and what training printed


@pytest.mark.slow
def test_load_gives_the_model_config_normalization_and_data(straight, data):
    from lowlevel import pipeline, runs
    loaded = runs.load(straight[0])
    assert loaded.prefix.name == "ckpt-30" and loaded.config.alpha == 0.125 and not loaded.note
    train_x, _, _, _ = pipeline.split_validation(loaded.data.train_images, loaded.data.train_labels, 20)
    expected = pipeline.Normalization.of(train_x).values()
    assert loaded.normalization.values() == expected
    x = loaded.normalization(loaded.data.test_images[:4])
    assert loaded.model.inference(x).shape == (4, 10)
    assert runs.load(straight[0], best=True).prefix.parent.name == "best"


@pytest.mark.slow
def test_a_checkpoint_from_before_the_normalization_was_saved_still_evaluates(tmp_path, straight, data, cli):
    """Its statistics are recomputed from the training images, as such runs did, with a note."""
    from lowlevel.datasets import cifar10
    from lowlevel import pipeline
    from lowlevel.config import Config
    from lowlevel.step import Trainer
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(straight[0] / "config.json", old / "config.json")
    d = cifar10.load(data)
    x, y, _, _ = pipeline.split_validation(d.train_images, d.train_labels, 20)
    cfg = Config.from_json(old / "config.json")
    trainer = Trainer(cfg, pipeline.Batches(x, y, pipeline.Normalization.placeholder(3), 8))
    trainer.checkpoint().read(str(straight[0] / "ckpt-30")).assert_existing_objects_matched()
    trainer.checkpoint(normalization=False).write(str(old / "ckpt-30"))
    status, out, err = cli("evaluate", tmp_path, "--checkpoint", old / "ckpt-30", "--data", data)
    assert status == 0, err
    assert "predates saved normalization statistics" in out
    reported = straight[1].split("test accuracy ")[1].split("%")[0]
    assert f"test accuracy {reported}%" in out


@pytest.mark.slow
def test_a_run_folder_without_config_is_one_sentence(tmp_path, straight, cli):
    bare = tmp_path / "bare"
    shutil.copytree(straight[0], bare)
    (bare / "config.json").unlink()
    one_error(*cli("evaluate", tmp_path, "--checkpoint", bare)[::2], "has no config.json")


def test_durations_and_the_progress_bar_say_how_long_is_left():
    from lowlevel.progress import Bar, Clock, duration
    assert [duration(s) for s in (0, 40.4, 61, 3600, 4 * 3600 + 5 * 60 + 29)] == \
        ["0 s", "40 s", "1 min", "1 h 00 min", "4 h 05 min"]
    clock = Clock()
    assert clock.left(0, 100) == "?"  # nothing timed yet
    clock.tick(10)  # the first call ends: the clock starts
    clock.start -= 20.0  # as if 20 s passed...
    assert clock.left(30, 130) == "1 min"  # ...over 20 steps: 1 s each, so 100 s for 100 more
    bar = Bar(3, 150, 351).line(120, 1.234, 0.5, 412.0, 42.0, "2 min", "4 h 36 min")
    assert "epoch 3/150" in bar and "120/351" in bar and "412 img/s" in bar
    assert "42 s elapsed" in bar and "2 min left in the epoch" in bar and "4 h 36 min in the run" in bar
