"""run(argv, cwd, env, timeout): what subprocess.run(argv, capture_output=True, text=True) gives for
`python -m MODULE ARGS`, `python SCRIPT ARGS` or `python -c CODE`, in a process forked from one that
has already imported TensorFlow (multiprocessing's fork server, with lowlevel._tf preloaded): the
same process as far as lowlevel can tell, started about 3.5 s sooner (TensorFlow's import).

The fork server imports TensorFlow once per test process, under the environment the tests give
their processes (conftest.ENV), so lowlevel chooses its kernels there as it would in a new process;
a test whose environment must differ before TensorFlow starts (the kernel choice) starts a new
process itself.  Exit statuses are subprocess's: the code passed to sys.exit, 1 for an uncaught
exception (its traceback on stderr), -N when killed by signal N.
"""
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile

_context, _env = None, None


def _start(env: dict) -> multiprocessing.context.BaseContext:
    """The fork server, started once with `env` as its environment and TensorFlow imported (every
    later call must give the same env: the server's import has already read it)."""
    global _context, _env
    assert _env is None or env == _env, "warm.run: one environment per test process (conftest.ENV)"
    if _context is None:
        from multiprocessing import forkserver

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["lowlevel._tf"])
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        _context, _env = context, dict(env)
    return _context


def _child(argv: list[str], cwd: str, env: dict, out: str, err: str) -> None:
    """In the forked process: what `python ARGV...` would do, its output into the files out and err."""
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")


def run(argv: list, cwd, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """argv as for subprocess.run, argv[0] this Python (sys.executable)."""
    assert argv[0] == sys.executable, argv[0]
    args = [str(a) for a in argv[1:]]
    with tempfile.TemporaryDirectory() as folder:
        out, err = os.path.join(folder, "out"), os.path.join(folder, "err")
        for path in (out, err):
            open(path, "w").close()
        process = _start(env).Process(target=_child, args=(args, str(cwd), dict(env), out, err))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(argv, timeout)
        with open(out, errors="replace") as o, open(err, errors="replace") as e:
            return subprocess.CompletedProcess(argv, process.exitcode, o.read(), e.read())
