import pytest
"""TensorBoard event files: written by a short run, read back with their tags; none with --no-tensorboard."""
import collections

import tensorflow as tf

from conftest import TINY


def _tags(folder):
    found = collections.defaultdict(list)
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found[value.tag].append((event.step, value.metadata.plugin_data.plugin_name))
    return found


@pytest.mark.slow
def test_a_run_writes_the_scalars_and_histograms_and_none_without_tensorboard(tmp_path, data, straight, cli):
    args = [a for a in TINY if a != "--no-tensorboard"]
    status, out, err = cli("train", tmp_path, "--data", data, "--run-name", "tb", "--epochs", "2", *args)
    assert status == 0, err
    tags = _tags(tmp_path / "checkpoints" / "tb" / "tensorboard")
    assert [step for step, _ in tags["train/loss"]] == [3, 6, 9, 10, 13, 16, 19, 20]  # after every call
    assert len(tags["train/lr"]) == 8
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_s"):
        assert [step for step, _ in tags[f"epoch/{key}"]] == [10, 20], key
    layers = ["stem", "blocks[0].depthwise", "blocks[0].pointwise", "blocks[12].pointwise"]
    for layer in layers:
        assert [s for s, _ in tags[f"grad_norm/{layer}"]] == [10, 20] and tags[f"grad_norm/{layer}"][0][1] == "scalars"
        for what in ("kernel", "gamma", "beta", "moving_mean", "moving_variance"):
            assert tags[f"{what}/{layer}"][0] == (10, "histograms"), (what, layer)
    assert len([t for t in tags if t.startswith("grad_norm/")]) == 27 and "kernel/classifier" in tags
    assert not (straight[0] / "tensorboard").exists()  # the tests' runs use --no-tensorboard


def test_a_histogram_is_in_tensorboards_format(tmp_path):
    """TensorBoard's histogram dashboard reads a [buckets, 3] tensor of (left, right, count)."""
    from lowlevel.events import BUCKETS, histogram
    values = tf.random.stateless_normal([3, 3, 3, 8], seed=[1, 2])
    with tf.summary.create_file_writer(str(tmp_path)).as_default():
        histogram("kernel/stem", values, 7)
        histogram("constant", tf.ones([5]), 7)
    tensors = {}
    for path in tmp_path.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tensors[value.tag] = tf.make_ndarray(value.tensor)
    h = tensors["kernel/stem"]
    assert h.shape == (BUCKETS, 3) and h[:, 2].sum() == 216  # every value counted once
    assert h[0, 0] == values.numpy().min() and abs(h[-1, 1] - values.numpy().max()) < 1e-6
    assert (h[1:, 0] == h[:-1, 1]).all()  # contiguous buckets
    assert tensors["constant"][:, 2].sum() == 5


@pytest.mark.slow
def test_a_failed_event_write_stops_the_run_with_one_sentence(tmp_path, data, cli, monkeypatch):
    """A full disk under tensorboard/: one sentence naming the folder, and the run continues once fixed."""
    from conftest import one_error, run_printed
    from lowlevel import events
    calls = {"n": 0}
    scalar = events.scalar

    def failing(tag, value, step):
        calls["n"] += 1
        if calls["n"] == 12:  # among epoch 1's end-of-epoch events, after ckpt-10 was saved
            raise tf.errors.ResourceExhaustedError(None, None, "events.out.tfevents; No space left on device")
        return scalar(tag, value, step)

    args = [a for a in TINY if a != "--no-tensorboard"]
    monkeypatch.setattr(events, "scalar", failing)
    status, _, err = cli("train", tmp_path, "--data", data, "--run-name", "tbfull", "--epochs", "2", *args)
    line = one_error(status, err, "checkpoints/tbfull/tensorboard: could not be written (No space left on device)",
                     "its last checkpoint, ckpt-10, is intact")
    monkeypatch.setattr(events, "scalar", scalar)
    done = run_printed(line, tmp_path, "continue with:")
    assert done.returncode == 0, done.stderr[-2000:]
