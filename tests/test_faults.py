"""What a run survives: a kill at any point of a save, damaged checkpoints, a second writer, a full disk."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import killpoint
import warm
from conftest import ENV, SMALL, SMALL_VALUES, STRAIGHT, one_error, run_printed, same_run

pytestmark = pytest.mark.slow  # subprocesses and trained runs: left out of -m "not slow"

HERE = Path(__file__).parent


# ---------------------------------------------------------------- SIGKILL at each point of an epoch's end

@pytest.mark.parametrize("point", killpoint.POINTS)
def test_a_kill_at_each_point_of_the_epoch_end_resumes_exactly(tmp_path, data, small, cli, point):
    """Killed at the end of epoch 2 (when the best checkpoint also improves), exactly at `point`."""
    history = pd.read_csv(small[0] / "history.csv")
    assert history.val_accuracy[1] > history.val_accuracy[0]  # epoch 2 saves a best: both saves are exercised
    # every point is reached once per epoch's end here (the best is saved at epochs 1 and 2): the second time
    killed = warm.run([sys.executable, HERE / "killpoint.py", point, "2", "--data", data, "--run-name", "k",
                       *SMALL], tmp_path, ENV)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    status, out, err = cli("train", tmp_path, "--run-name", "k", "--resume")
    assert status == 0, err
    same_run(tmp_path / "checkpoints" / "k", small[0], SMALL_VALUES)


# ---------------------------------------------------------------- damaged checkpoints

def _damage(prefix: Path, how: str) -> Path:
    data, index = Path(f"{prefix}.data-00000-of-00001"), Path(f"{prefix}.index")
    target = index if "index" in how else data
    if how.startswith("truncate"):
        os.truncate(target, 10_000 if target == data else target.stat().st_size // 2)
    elif how.startswith("empty"):
        target.write_bytes(b"")
    elif how.startswith("remove"):
        target.unlink()
    elif how == "flip data":
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
    return target


@pytest.fixture
def finished(tmp_path, small):
    """A copy of the uninterrupted run, to damage."""
    import shutil
    run = tmp_path / "checkpoints" / "d"
    shutil.copytree(small[0], run)
    return run


@pytest.mark.parametrize("how", ["truncate data", "empty data", "remove data", "flip data",
                                 "truncate index", "empty index", "remove index"])
def test_a_damaged_checkpoint_is_one_sentence_naming_the_file_and_what_is_intact(tmp_path, finished, cli, how):
    file = _damage(finished / "ckpt-30", how)
    problem = {"truncate": "is", "empty": "is empty", "remove": "is missing", "flip": "is truncated or damaged"}
    line = one_error(*cli("evaluate", tmp_path, "--checkpoint", finished)[::2], str(file),
                     problem[how.split()[0]], "ckpt-20", "are intact", "python -m lowlevel.evaluate")
    assert "ckpt-30," not in line
    if how == "truncate data":  # the command it prints runs as printed
        done = run_printed(line, tmp_path, "use one with")
        assert done.returncode == 0 and "ckpt-20: test loss" in done.stdout, done.stderr[-2000:]
    line = one_error(*cli("train", tmp_path, "--run-name", "d", "--resume")[::2], str(file.relative_to(tmp_path)),
                     "the older checkpoints ckpt-20", "are intact", "--from-checkpoint ckpt-20")
    assert "Traceback" not in line


def test_resuming_from_the_named_older_checkpoint_continues_exactly(tmp_path, finished, small, cli):
    """Damage the latest two; the printed command goes back to the best, best/ckpt-20, and recomputes the
    last epoch, bit for bit."""
    _damage(finished / "ckpt-30", "truncate data")
    _damage(finished / "ckpt-20", "remove index")
    status, _, err = cli("train", tmp_path, "--run-name", "d", "--resume")
    line = one_error(status, err, "--from-checkpoint best/ckpt-20")
    done = run_printed(line, tmp_path, "continue from the newest with:")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "continuing from" in done.stdout and "set-aside" in done.stdout
    same_run(finished, small[0], SMALL_VALUES)
    aside = list(finished.glob("set-aside-*"))
    assert len(aside) == 1 and (aside[0] / "ckpt-30.index").exists()  # the later checkpoints are kept aside
    status, out, _ = cli("evaluate", tmp_path, "--checkpoint", finished)
    assert status == 0 and "ckpt-30: test loss" in out


def test_no_intact_checkpoint_left_is_one_sentence(tmp_path, finished, cli):
    for prefix in list(finished.glob("ckpt-*.index")) + list((finished / "best").glob("ckpt-*.index")):
        _damage(Path(str(prefix).removesuffix(".index")), "empty data")
    one_error(*cli("train", tmp_path, "--run-name", "d", "--resume")[::2], "no older checkpoint of the run is intact")
    one_error(*cli("evaluate", tmp_path, "--checkpoint", finished)[::2], "no intact checkpoint left")
    one_error(*cli("inspect", tmp_path, "--checkpoint", finished)[::2], "no intact checkpoint left")


# ---------------------------------------------------------------- one writer per run

def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_stale_lock(tmp_path, data, cli):
    args = ["--data", data, "--run-name", "w", *SMALL, "--epochs", "400"]  # far longer than the test
    first = subprocess.Popen([sys.executable, "-m", "lowlevel.train", *map(str, args)], cwd=tmp_path, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "checkpoints" / "w"
    try:
        deadline = time.time() + 300
        while not (run / "learning_curves.png").exists():  # training, and epoch 1's saves all written
            assert time.time() < deadline and first.poll() is None, first.stderr.read() if first.poll() else ""
            time.sleep(0.1)
        for second in (["--run-name", "w", "--resume"], ["--data", data, "--run-name", "w", *SMALL]):
            one_error(*cli("train", tmp_path, *second)[::2], f"is being trained by another process (id {first.pid})")
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=60) == -signal.SIGKILL  # killed while training
    finally:
        if first.poll() is None:
            first.kill()
    status, out, err = cli("train", tmp_path, "--run-name", "w", "--resume", "--max-steps", "100")
    assert status == 0, err
    assert "stopped (--max-steps 100) at step 100" in out


# ---------------------------------------------------------------- a full disk

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("site", ["config.json", "history.csv", "learning_curves.png", "best", "latest"])
def test_a_failed_write_at_each_site_stops_with_one_sentence_and_the_run_resumes_exactly(
        tmp_path, data, small, cli, monkeypatch, site):
    """The write fails at the end of epoch 2 (config.json: at once) with "No space left on device"."""
    from lowlevel import files
    from lowlevel._tf import tf
    count = {"n": 0}
    fail_at = {"config.json": 1, "history.csv": 3}.get(site, 2)  # history.csv is also written when the loop starts
    atomic_write, save = files.atomic_write, tf.train.CheckpointManager.save

    def failing_write(path, write):
        if Path(path).name == site:
            count["n"] += 1
            if count["n"] == fail_at:
                def half_then_full(tmp):
                    write(tmp)  # something was written: it must not be left behind
                    raise ENOSPC
                return atomic_write(path, half_then_full)
        return atomic_write(path, write)

    def failing_save(self, *args, **kwargs):
        if (Path(self.directory).name == "best") == (site == "best") and site in ("best", "latest"):
            count["n"] += 1
            if count["n"] == fail_at:
                raise tf.errors.ResourceExhaustedError(None, None, f"{self.directory}/ckpt-20_temp/part-00000; "
                                                                   f"No space left on device [Op:SaveV2]")
        return save(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(files, "atomic_write", failing_write)
        m.setattr(tf.train.CheckpointManager, "save", failing_save)
        status, out, err = cli("train", tmp_path, "--data", data, "--run-name", "full", *SMALL)
    run = tmp_path / "checkpoints" / "full"
    path = {"best": run / "best" / "ckpt-20", "latest": run / "ckpt-20"}.get(site, run / site)
    line = one_error(status, err, f"{path.relative_to(tmp_path)}: could not be written (No space left on device)")
    assert not list(run.glob(".*.tmp")) and not list(run.glob("*_temp"))  # no debris
    if site == "config.json":
        assert "run the command again" in line
        status, _, err = cli("train", tmp_path, "--data", data, "--run-name", "full", *SMALL)
    else:
        last = "ckpt-20" if site == "learning_curves.png" else "ckpt-10"  # the plot comes after epoch 2's save
        assert f"its last checkpoint, {last}, is intact" in line
        done = run_printed(line, tmp_path, "continue with:")
        status, err = done.returncode, done.stderr
    assert status == 0, err
    same_run(run, small[0], SMALL_VALUES)


def test_a_really_full_disk(tmp_path, data, straight, cli):
    """On a size-limited tmpfs (mounted when the test may: as root with mount rights; skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2100k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        # a checkpoint of the tiny model with its moving average is 0.8 MB: ckpt-10 and best/ckpt-10 fit (with
        # the curves, 1.66 MB), epoch 2's do not
        status, out, err = cli("train", tmp_path, "--data", data, "--checkpoint-dir", disk, "--run-name", "f",
                               *STRAIGHT)
        line = one_error(status, err, "could not be written (No space left on device)", "is intact",
                         "continue with:")
        run = disk / "f"
        assert not list(run.rglob("*_temp")) and not list(run.rglob(".*.tmp"))
        from lowlevel import runs
        runs.verify(runs.latest(run))  # the previous checkpoint is whole
        assert pd.read_csv(run / "history.csv").epoch.max() <= 2
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)  # space freed
        done = run_printed(line, tmp_path, "continue with:")
        assert done.returncode == 0, done.stderr[-2000:]
        same_run(run, straight[0])
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
