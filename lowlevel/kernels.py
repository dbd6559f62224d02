"""Which kernels TensorFlow runs here: oneDNN or Eigen, oneDNN's instruction set, the threads.

    >>> from lowlevel import kernels
    >>> kernels.line()
    "kernels: oneDNN (avx512_core_bf16), 2 intra-op and 2 inter-op threads (lowlevel's default; ...)"

oneDNN (TensorFlow's `_Mkl*` kernels) or Eigen: TensorFlow's own answer
(`IsMklEnabled`, which reads `TF_ENABLE_ONEDNN_OPTS` and the CPU).  lowlevel
turns oneDNN on before TensorFlow starts unless the environment says otherwise
(lowlevel/_tf.py).

oneDNN's instruction set is the best one the CPU has (its flags in /proc/cpuinfo),
capped by `ONEDNN_MAX_CPU_ISA` when that is set (e.g. `ONEDNN_MAX_CPU_ISA=AVX2` makes
an AVX-512 CPU run oneDNN's AVX2 code).  The names are oneDNN's, from the oldest to
the newest; `ONEDNN_VERBOSE=1` prints oneDNN's own view (tests/test_kernels.py checks
they agree).

Threads: TensorFlow's intra-op pool (the threads one kernel uses, oneDNN's included) and
inter-op pool (kernels run side by side): set by `tf.config.threading`, else by
`TF_NUM_INTRAOP_THREADS` / `TF_NUM_INTEROP_THREADS`, else one per CPU this process may
use.  On 2 cores the defaults measured best (docs/performance.md, "Kernels").
"""
from __future__ import annotations

import os
from pathlib import Path

from lowlevel._tf import ONEDNN_SETTING, tf

_AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
# oneDNN's instruction sets (ONEDNN_MAX_CPU_ISA's values, lower-cased), oldest first, with the
# /proc/cpuinfo flags each needs
ISAS = [
    ("sse41", {"sse4_1"}),
    ("avx", {"avx"}),
    ("avx2", {"avx2", "fma"}),
    ("avx2_vnni", {"avx2", "fma", "avx_vnni"}),
    ("avx512_core", _AVX512),
    ("avx512_core_vnni", _AVX512 | {"avx512_vnni"}),
    ("avx512_core_bf16", _AVX512 | {"avx512_vnni", "avx512_bf16"}),
    ("avx512_core_amx", _AVX512 | {"avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}),
]


# oneDNN's bfloat16 convolutions need AVX-512 (emulated on avx512_core, native from avx512_core_bf16); below
# it oneDNN cannot create them, while Eigen has bfloat16 kernels on every CPU
BFLOAT16_ISAS = ("avx512_core", "avx512_core_vnni", "avx512_core_bf16", "avx512_core_amx")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (the first `flags` line of /proc/cpuinfo); empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def onednn_isa(flags: set[str], limit: str | None = None) -> str:
    """The newest instruction set of ISAS whose flags the CPU has, capped by `limit` (an
    ONEDNN_MAX_CPU_ISA value; ALL or None: no cap); "unknown" without flags."""
    have = [name for name, needs in ISAS if needs <= flags]
    if not have:
        return "unknown"
    names = [name for name, _ in ISAS]
    limit = (limit or "all").lower()
    if limit in names:
        have = [name for name in have if names.index(name) <= names.index(limit)] or have[:1]
    return have[-1]


def threads() -> tuple[int, int]:
    """(intra-op, inter-op) threads TensorFlow uses: set, from the environment, or one per usable CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1

    def pool(configured: int, variable: str) -> int:
        if configured > 0:
            return configured
        try:
            return int(os.environ.get(variable, "0")) or cpus
        except ValueError:
            return cpus

    return (pool(tf.config.threading.get_intra_op_parallelism_threads(), "TF_NUM_INTRAOP_THREADS"),
            pool(tf.config.threading.get_inter_op_parallelism_threads(), "TF_NUM_INTEROP_THREADS"))


def onednn_on() -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def describe() -> dict:
    """The kernels as a dict, for JSON: library, isa, intra_op, inter_op threads, and who chose."""
    intra, inter = threads()
    on = onednn_on()
    chosen = "lowlevel" if ONEDNN_SETTING is None else f"TF_ENABLE_ONEDNN_OPTS={ONEDNN_SETTING}"
    return {"library": "oneDNN" if on else "Eigen",
            "isa": onednn_isa(cpu_flags(), os.environ.get("ONEDNN_MAX_CPU_ISA")) if on else "",
            "intra_op": intra, "inter_op": inter, "chosen_by": chosen}


def bfloat16_problem(d: dict | None = None) -> str:
    """Why these kernels cannot run a bfloat16 network, in a clause ("" if they can)."""
    d = d or describe()
    if d["library"] == "oneDNN" and d["isa"] not in BFLOAT16_ISAS:
        return f"oneDNN on this CPU ({d['isa']}) has no bfloat16 convolutions"
    return ""


def short(d: dict | None = None) -> str:
    """One word for a table or history.csv: oneDNN:avx512_core_bf16:2x2 or Eigen:2x2."""
    d = d or describe()
    return ":".join([d["library"], *([d["isa"]] if d["isa"] else []), f"{d['intra_op']}x{d['inter_op']}"])


def line(d: dict | None = None) -> str:
    """The line train, evaluate and bench print first."""
    d = d or describe()
    lib = f"oneDNN ({d['isa']})" if d["library"] == "oneDNN" else "Eigen"
    if d["chosen_by"] == "lowlevel":
        why = ("lowlevel's default; TF_ENABLE_ONEDNN_OPTS=0 for TensorFlow's Eigen kernels"
               if d["library"] == "oneDNN" else "TensorFlow's default on this CPU")
    else:
        why = f"{d['chosen_by']} in the environment"
    return f"kernels: {lib}, {d['intra_op']} intra-op and {d['inter_op']} inter-op threads ({why})"
