"""tests/warm.py, which the process-starting tests use: it gives what subprocess.run gives."""
import signal
import sys

import pytest

import warm
from conftest import ENV

pytestmark = pytest.mark.slow  # starts a fork server: left out of -m "not slow"


@pytest.mark.parametrize("code, status, out, err", [
    ("import sys, os; print(os.getcwd(), os.environ['LOWLEVEL_CIFAR10_URL'], sys.argv); sys.exit(3)", 3,
     "{cwd} http://127.0.0.1:9/none.tar.gz ['-c', 'a']\n", ""),
    ("import lowlevel; raise ValueError('no')", 1, "", "ValueError: no"),
    ("import os, signal; print('before', flush=True); os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL,
     "before\n", ""),
])
def test_a_warm_process_exits_and_prints_as_a_new_one(tmp_path, code, status, out, err):
    done = warm.run([sys.executable, "-c", code, "a"], tmp_path, ENV)
    assert done.returncode == status and done.stdout == out.format(cwd=tmp_path), done
    assert err in done.stderr and ("Traceback" in done.stderr) == (status == 1), done.stderr


def test_a_warm_module_runs_as_main_with_its_arguments(tmp_path):
    done = warm.run([sys.executable, "-m", "lowlevel.train", "--epochs", "0"], tmp_path, ENV)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr, done
