"""Whatever the run folder holds, every command validates the files it uses: good, or one sentence
naming the file, what is wrong and the way out (exit 2); nothing the user made is deleted."""
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fakecifar
from conftest import ENV, one_error, run_here, run_printed
from lowlevel import errors, history, runs

pytestmark = pytest.mark.slow  # most cases damage a copy of a trained run


@pytest.fixture
def finished(tmp_path, straight):
    """A copy of the 3-epoch tiny run (ckpt-10, -20, -30, best/), in tmp_path/checkpoints/straight."""
    run = tmp_path / "checkpoints" / "straight"
    shutil.copytree(straight[0], run)
    return run


# ---------------------------------------------------------------- 1. the checkpoint lists

def test_a_truncated_state_file_is_refused_and_the_printed_command_continues(finished, data, straight):
    state = finished / "checkpoint"
    state.write_bytes(state.read_bytes()[:100])  # head -c 100: the first line whole, a later one cut
    rows = finished.joinpath("history.csv").read_text()
    out = run_here("train", finished.parent.parent, "--run-name", "straight", "--resume", check=False)
    line = one_error(out.returncode, out.stderr, "checkpoint: the list of checkpoints cannot be read",
                     "ckpt-30", "--from-checkpoint ckpt-30")
    assert finished.joinpath("history.csv").read_text() == rows  # nothing rewritten, nothing started
    again = run_printed(line, finished.parent.parent, "continue from the newest with:")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "test accuracy" in again.stdout  # ckpt-30 is the end of the run: it only tests
    assert runs.latest(finished).name == "ckpt-30"  # the list written again from the files on disk
    kept = list(finished.glob("set-aside-*/checkpoint"))
    assert len(kept) == 1 and len(kept[0].read_bytes()) == 100  # the damaged file moved, not deleted
    for prefix in ("ckpt-10", "ckpt-20", "ckpt-30"):
        runs.verify(finished / prefix)


@pytest.mark.parametrize("module", ["evaluate", "export", "inspect"])
def test_a_damaged_state_file_names_the_intact_checkpoints(finished, cli, module):
    (finished / "checkpoint").write_text("model_checkpoint_path: \"ckpt-30\"\nall_model_check")
    status, _, err = cli(module, finished.parent.parent, "--checkpoint", finished)
    one_error(status, err, "list of checkpoints cannot be read", "the intact ones are ckpt-30",
              f"--checkpoint {finished / 'ckpt-30'}")


def test_a_missing_state_file_beside_checkpoints_is_refused(finished, cli):
    (finished / "best" / "checkpoint").unlink()
    status, _, err = cli("evaluate", finished.parent.parent, "--checkpoint", finished, "--best")
    one_error(status, err, "best/checkpoint: the list of checkpoints is missing")


# ---------------------------------------------------------------- 2. one export at a time

def test_a_second_export_into_a_folder_is_refused(finished, cli):
    folder = finished / "export"
    folder.mkdir(exist_ok=True)
    (folder / "float32.tflite").unlink(missing_ok=True)
    held = runs.lock(folder, "exported into by", finished / ".export.lock")
    try:
        status, _, err = cli("export", finished.parent.parent, "--checkpoint", finished, "--format", "tflite-float")
    finally:
        held.close()
    one_error(status, err, "export: is being exported into by another process", f"id {os.getpid()}")
    assert not (folder / "float32.tflite").exists()


def test_every_whole_file_write_has_its_own_temporary_name(tmp_path, monkeypatch):
    names = []
    monkeypatch.setattr(os, "replace", lambda src, dst: names.append(Path(src).name))
    for _ in range(2):
        runs.write_text(tmp_path / "a.txt", "x")
    assert len(set(names)) == 2 and all(n.startswith(".a.txt.") for n in names)


# ---------------------------------------------------------------- 3. another data set

def test_resume_with_another_data_set_is_refused(tmp_path, data, cli):
    cwd = tmp_path
    assert cli("train", cwd, "--data", data, "--run-name", "r", *__import__("conftest").SMALL, "--epochs", "2",
               "--max-steps", "10")[0] == 0
    other = tmp_path / "other" / "cifar-10-batches-py"
    fakecifar.write(other, "py2", per_batch=24, seed=1)  # other images, another count
    history_before = (cwd / "checkpoints" / "r" / "history.csv").read_text()
    status, _, err = cli("train", cwd, "--run-name", "r", "--resume", "--data", other)
    one_error(status, err, f"--data {other}: holds other images than the run was trained on",
              "give --data the data set the run was made with")
    assert (cwd / "checkpoints" / "r" / "history.csv").read_text() == history_before
    status, out, _ = cli("train", cwd, "--run-name", "r", "--resume", "--data", data)  # the same data: fine
    assert status == 0 and "epoch   2/2" in out


# ---------------------------------------------------------------- 4. a damaged history.csv

GOOD = ("epoch,step,train_loss,train_accuracy,val_loss,val_accuracy,lr,images_per_s,elapsed_s,kernels\n"
        "1,10,2.3,0.1,2.2,0.15,0.05,100.0,3.0,oneDNN:avx2:2x2\n"
        "2,20,2.1,0.2,2.0,0.25,0.04,110.0,6.0,oneDNN:avx2:2x2\n")
DAMAGES = {
    "a truncated row": (GOOD + "3,30,2.0,0.3", "line 4 has 4 fields, not 10", 2),
    "a duplicate epoch": (GOOD + GOOD.splitlines()[2] + "\n", "line 4 repeats or goes back to epoch 2", 2),
    "an extra field": (GOOD + "3,30,2.0,0.3,1.9,0.3,0.03,100.0,9.0,x,extra\n", "line 4 has 11 fields", 2),
    "random bytes": (bytes(range(256)) * 4, "is not text", 0),
    "an empty file": ("", "is empty", 0),
    "missing columns": ("epoch,step,train_loss\n1,10,2.3\n", "line 1 lacks the columns", 0),
    "a word for a number": (GOOD.replace("2,20,2.1", "2,20,abc"), "line 3 has train_loss 'abc', not a number", 1),
}


def _write(path, content):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.mark.parametrize("case", DAMAGES)
def test_history_damage_is_named_with_the_good_rows_before_it(tmp_path, case):
    content, problem, good = DAMAGES[case]
    _write(tmp_path / "history.csv", content)
    with pytest.raises(history.DamagedHistory) as e:
        history.read(tmp_path / "history.csv")
    assert problem in str(e.value) and len(e.value.rows) == good
    _write(tmp_path / "history.csv", GOOD.replace(",kernels", "").replace(",oneDNN:avx2:2x2", ""))
    assert [r["epoch"] for r in history.read(tmp_path / "history.csv")] == [1, 2]  # an older run's file is good


@pytest.mark.parametrize("case", DAMAGES)
def test_plots_names_a_damaged_history_in_one_sentence(finished, cli, case):
    _write(finished / "history.csv", DAMAGES[case][0])
    status, _, err = cli("plots", finished.parent.parent, finished)
    one_error(status, err, f"history.csv: {DAMAGES[case][1]}")


def test_resume_sets_a_damaged_history_aside_and_keeps_its_good_rows(tmp_path, data, small, cli):
    from conftest import SMALL, SMALL_VALUES, same_run
    cwd = tmp_path
    args = ["--data", data, "--run-name", "h", *SMALL]
    assert cli("train", cwd, *args, "--max-steps", "20")[0] == 0
    path = cwd / "checkpoints" / "h" / "history.csv"
    damaged = path.read_text() + "3,30,2.0"  # a truncated third row
    path.write_text(damaged)
    status, out, err = cli("train", cwd, "--run-name", "h", "--resume")
    assert status == 0 and "note: " in out and "line 4 has 3 fields" in out and "its 2 good rows" in out, err
    assert [p.read_text() for p in (cwd / "checkpoints" / "h").glob("set-aside-*/history.csv")] == [damaged]
    assert [r["epoch"] for r in history.read(path)] == [1, 2, 3]
    same_run(cwd / "checkpoints" / "h", small[0], SMALL_VALUES)


# ---------------------------------------------------------------- 5. one sentence, never a traceback

def test_a_name_over_255_bytes_is_one_sentence(tmp_path, data, cli):
    long = "x" * 300
    status, _, err = cli("train", tmp_path, "--data", data, "--run-name", long)
    one_error(status, err, "--run-name has a name of 300 bytes", "at most 255")
    status, _, err = cli("train", tmp_path, "--data", tmp_path / long, "--run-name", "r")
    one_error(status, err, "--data has a name of 300 bytes")
    status, _, err = cli("evaluate", tmp_path, "--checkpoint", tmp_path / long / "ckpt-1")
    one_error(status, err, "file name too long")
    status, _, err = cli("data", tmp_path, "check", tmp_path / long)
    one_error(status, err, "file name too long")


@pytest.mark.parametrize("module", ["evaluate", "export"])
def test_a_non_finite_number_in_config_json_names_the_file(finished, cli, module):
    cfg = finished / "config.json"
    cfg.write_text(cfg.read_text().replace('"alpha": 0.125', '"alpha": 1e999'))
    status, _, err = cli(module, finished.parent.parent, "--checkpoint", finished)
    line = one_error(status, err, f"{cfg}: alpha must be a finite number, not inf")
    assert "--alpha" not in line  # no flag the user never gave


def test_a_malformed_export_json_is_one_sentence(finished, cli):
    status, _, err = cli("export", finished.parent.parent, "--checkpoint", finished, "--format", "tflite-float")
    assert status == 0 and err == ""  # and the converter's own lines stay off stderr
    manifest = finished / "export" / "export.json"
    for text in ("[1, 2]", '{"files": {"tflite-float": 3}}', '{"split_seed": "zero"}', "{"):
        manifest.write_text(text)
        status, _, err = cli("evaluate", finished.parent.parent, "--model", finished / "export" / "float32.tflite")
        one_error(status, err, "export.json: ")


def test_a_download_address_that_is_not_one(tmp_path, cli):
    status, _, err = cli("data", tmp_path, "download", "--dir", tmp_path / "d", "--url", "not a url")
    one_error(status, err, "--url 'not a url': is not an address")


def test_a_cifar_file_larger_than_any_real_one_is_not_read(tmp_path, cli):
    folder = tmp_path / "cifar-10-batches-py"
    fakecifar.write(folder, "py2")
    os.truncate(folder / "data_batch_3", 5 * 2**30)  # 5 GiB, sparse: never read into memory
    status, _, err = cli("data", tmp_path, "check", folder)
    one_error(status, err, "data_batch_3: is 5,368,709,120 bytes, more than any CIFAR-10 batch file")


@pytest.mark.parametrize("flags, phrase", [(["--alpha", "inf"], "--alpha must be a finite number above 0"),
                                           (["--input-size", "0"], "--input-size must be at least 1, not 0"),
                                           (["--classes", "0"], "--classes must be at least 1, not 0")])
def test_summary_refuses_impossible_sizes(tmp_path, cli, flags, phrase):
    status, _, err = cli("summary", tmp_path, *flags)
    one_error(status, err, phrase)


# ---------------------------------------------------------------- 6. messages that say what happened

def test_write_errors_are_advised_by_their_cause():
    def advice(number):
        return errors.advice(errors.WriteError("f", OSError(number, os.strerror(number))))
    assert "free some space" in advice(errno.ENOSPC)
    assert "writable" in advice(errno.EACCES) and "writable" in advice(errno.EROFS)
    for number in (errno.EEXIST, errno.ENOTDIR):
        assert "a file stands where a folder is needed" in advice(number) and "space" not in advice(number)


def test_an_export_into_a_file_says_so(finished, cli):
    (finished / "a-file").write_text("not a folder")
    status, _, err = cli("export", finished.parent.parent, "--checkpoint", finished, "--format", "tflite-float",
                         "--out", finished / "a-file")
    one_error(status, err, "a file stands where a folder is needed")


def test_a_long_error_is_cut_at_a_word():
    text = errors.first_line(ValueError("failed to " * 40))
    assert text.endswith("failed to ...") and len(text) <= 204
    assert errors.first_line(ValueError("one\n  two")) == "one two"


def test_evaluate_on_a_best_folder_evaluates_the_best(finished, cli):
    status, out, _ = cli("evaluate", finished.parent.parent, "--checkpoint", finished / "best")
    assert status == 0 and "best/ckpt-" in out


def test_compare_after_a_refused_flag_says_only_trains_sentence(tmp_path, data, cli):
    status, _, err = cli("compare", tmp_path, "--data", data, "--models", "mobilenet@0.125", "--epochs", "1",
                         "--lr", "-1")
    line = one_error(status, err, "--lr must be greater than 0")
    assert "again" not in line


@pytest.mark.parametrize("flags, phrase", [(["--images", "0"], "--images must be at least 1, not 0"),
                                           (["--image", "40"], "--image must be between 0 and 29"),
                                           (["--block", "99"], "--block must be between 0 and 12")])
def test_inspect_refuses_what_it_cannot_show(finished, cli, flags, phrase):
    status, _, err = cli("inspect", finished.parent.parent, "--checkpoint", finished, *flags)
    one_error(status, err, phrase)


def test_evaluate_fails_on_an_unwritable_folder_before_any_work(finished, cli, monkeypatch):
    from lowlevel import evaluate
    touch = Path.touch

    def refuse(self, *a, **k):
        if self.name.startswith(".write-probe-"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return touch(self, *a, **k)
    monkeypatch.setattr(Path, "touch", refuse)
    monkeypatch.setattr(evaluate, "kernels", None)  # the first thing after the check: never reached
    status, _, err = cli("evaluate", finished.parent.parent, "--checkpoint", finished)
    one_error(status, err, "could not be written (Read-only file system)", "writable")


def test_the_first_estimate_is_on_a_line_of_its_own_under_the_progress_bar(tmp_path, data):
    from conftest import TINY
    args = [a for a in TINY if a not in ("--progress", "none")]
    out = subprocess.run([sys.executable, "-m", "lowlevel.train", "--data", str(data), "--run-name", "b",
                          "--epochs", "2", *args, "--progress", "bar"], cwd=tmp_path, env=ENV, timeout=600,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert out.returncode == 0, out.stdout[-2000:]
    assert "\nspeed: " in out.stdout and "img/s  " in out.stdout
