"""A property of the whole run folder (hypothesis): damage any one file of a finished run in any
way, then run each command that reads a run.  Each must exit 0 with the undamaged run's result,
or 2 with one sentence; never 1, never a traceback; and no intact checkpoint and no history row
that was there may be lost.

CI runs a few examples (derandomized); LOWLEVEL_RUNFOLDER_EXAMPLES=N runs N random ones.
"""
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SMALL, run_here
from lowlevel import history, runs

pytestmark = pytest.mark.slow  # subprocesses and trained runs: left out of -m "not slow"

EXAMPLES = int(os.environ.get("LOWLEVEL_RUNFOLDER_EXAMPLES", "0"))
MUTATIONS = ("truncate", "flip bytes", "delete", "another run's", "empty", "append garbage", "make it a folder")
COMMANDS = {
    "train": lambda run: ["--checkpoint-dir", run.parent, "--run-name", run.name, "--resume"],
    "evaluate": lambda run: ["--checkpoint", run],
    "inspect": lambda run: ["--checkpoint", run, "--images", "30"],
    "export": lambda run: ["--checkpoint", run, "--format", "tflite-float"],
    "plots": lambda run: [run],
}


@pytest.fixture(scope="module")
def other(tmp_path_factory, data):
    """Another finished run of the same shape (seed 1): its files stand in for the first run's."""
    cwd = tmp_path_factory.mktemp("other")
    run_here("train", cwd, "--data", data, "--run-name", "o", *SMALL, "--seed", "1")
    return cwd / "checkpoints" / "o"


@pytest.fixture(scope="module")
def expected(tmp_path_factory, small, cli_module):
    """What each command prints that must not change: its result on the undamaged run."""
    run = tmp_path_factory.mktemp("undamaged") / "checkpoints" / "small"
    shutil.copytree(small[0], run)
    return {name: result(cli_module(name, run.parent.parent, *args(run))) for name, args in COMMANDS.items()}


@pytest.fixture(scope="module")
def cli_module():
    """lowlevel.<module>.main in this process, with stdout and stderr captured (module-scoped cli)."""
    def call(module, cwd, *args):
        done = run_here(module, cwd, *args, check=False)
        return done.returncode, done.stdout, done.stderr
    return call


def result(outcome):
    """The figures a successful command reports (test accuracies, files written), for comparison."""
    status, out, _ = outcome
    return status, re.findall(r"test accuracy [\d.]+%", out)


def mutate(path: Path, how: str, other_run: Path, run: Path, data: bytes) -> None:
    if how == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif how == "flip bytes":
        path.write_bytes(bytes(b ^ 0xFF if i % 7 == 3 else b for i, b in enumerate(data)) or b"\xff")
    elif how == "delete":
        path.unlink()
    elif how == "another run's":
        twin = other_run / path.relative_to(run)
        twin = twin if twin.is_file() else sorted(p for p in other_run.rglob(f"*{path.suffix}") if p.is_file())[0]
        shutil.copyfile(twin, path)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "append garbage":
        path.write_bytes(data + b"\x00garbage\xff\n,,,\n")
    else:
        path.unlink()
        path.mkdir()


def snapshot(run: Path) -> dict:
    """Bytes of every intact checkpoint's files, and the history rows, as they are before a command."""
    files = {}
    for prefix in runs.intact(run):
        for f in prefix.parent.glob(f"{prefix.name}.*"):
            files[f.name] = f.read_bytes()
    try:
        rows = [r["epoch"] for r in history.read(run / "history.csv")] if (run / "history.csv").is_file() else []
        raw = None
    except history.DamagedHistory:
        rows, raw = [], (run / "history.csv").read_bytes()
    return {"checkpoints": files, "rows": rows, "raw_history": raw}


def still_there(run: Path, before: dict) -> None:
    every = {}
    for f in run.rglob("*"):
        if f.is_file():
            every.setdefault(f.name, []).append(f.read_bytes())
    for name, data in before["checkpoints"].items():
        assert data in every.get(name, []), f"the intact checkpoint file {name} was lost"
    now = [r["epoch"] for r in history.read(run / "history.csv")] if (run / "history.csv").is_file() else []
    assert set(before["rows"]) <= set(now), f"history rows lost: {before['rows']} -> {now}"
    if before["raw_history"] is not None:
        assert before["raw_history"] in every.get("history.csv", []), "the damaged history.csv was deleted"


@settings(max_examples=EXAMPLES or 3, derandomize=not EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(pick=st.integers(0, 10**6), how=st.sampled_from(MUTATIONS))
def test_any_damage_to_any_file_of_a_run(tmp_path_factory, small, other, expected, cli_module, pick, how):
    run = tmp_path_factory.mktemp("damaged") / "checkpoints" / "small"
    shutil.copytree(small[0], run)
    files = sorted(p for p in run.rglob("*") if p.is_file())
    path = files[pick % len(files)]
    mutate(path, how, other, run, path.read_bytes())
    print(f"{how}: {path.relative_to(run)}")
    for name, args in COMMANDS.items():
        before = snapshot(run)
        status, out, err = outcome = cli_module(name, run.parent.parent, *args(run))
        assert "Traceback" not in err and status in (0, 2), (name, status, err[-2000:])
        if status == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        else:
            assert result(outcome) == expected[name], (name, out[-1500:])
        still_there(run, before)
