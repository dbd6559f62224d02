"""TensorFlow, imported once for the whole package, without its start-up noise.

On import and on first finding its devices, TensorFlow's C++ core writes lines
such as "oneDNN custom operations are on" and, with no GPU, "failed call to
cuInit" straight to file descriptor 2, before its logging is configured, so
TF_CPP_MIN_LOG_LEVEL cannot stop them.  They would bury the one-sentence errors
of lowlevel's commands, so this module does both steps with descriptor 2
pointed at a temporary file, and writes that file back to stderr if they fail.
LOWLEVEL_TF_VERBOSE=1 leaves TensorFlow's output alone; otherwise TensorFlow's
Python logger shows errors only.

The kernels are chosen here too, before TensorFlow reads its environment: on an
x86 CPU lowlevel turns oneDNN on (`TF_ENABLE_ONEDNN_OPTS=1`) unless the
environment already says otherwise.  TensorFlow itself turns oneDNN on only on
CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (tensorflow/core/util/port.cc)
and runs Eigen's kernels elsewhere, such as on AVX2 laptops, where oneDNN trains
this project's MobileNet about 3x as fast (docs/performance.md, "Kernels").
`lowlevel.kernels` says which kernels run.
"""
import contextlib
import os
import platform
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's later INFO and WARNING lines

# The user's own setting, or None when lowlevel chose (read by lowlevel.kernels).
ONEDNN_SETTING = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
if ONEDNN_SETTING is None and platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86"):
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"



@contextlib.contextmanager
def quiet_stderr():
    """Run the block with file descriptor 2 pointed at a temporary file, which is written back to
    stderr only if the block raises (TensorFlow's C++ core and its converters print there directly).
    LOWLEVEL_TF_VERBOSE=1 leaves stderr alone."""
    if os.environ.get("LOWLEVEL_TF_VERBOSE") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            log.seek(0)
            os.write(saved, log.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


with quiet_stderr():
    import tensorflow as tf

    tf.config.list_physical_devices()
if os.environ.get("LOWLEVEL_TF_VERBOSE") != "1":
    # TensorFlow's Python warnings (e.g. about a partly restored checkpoint, which lowlevel
    # reports itself in one sentence)
    tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "quiet_stderr"]
