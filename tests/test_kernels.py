"""lowlevel.kernels and the kernel choice of lowlevel/_tf.py: oneDNN on by default on x86, the user's
environment first, and the instruction set named as oneDNN itself names it."""
import json
import platform
import subprocess
import sys

import pytest

from lowlevel import kernels
from lowlevel.bench import kernels as bench

from conftest import ENV

X86 = platform.machine().lower() in ("x86_64", "amd64")
AVX512_BF16 = "flags\t: fpu sse4_1 avx avx2 fma avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16\n"


def describe(**env):
    """kernels.describe() in a fresh process whose environment has `env` (None: the variable removed)."""
    child = {k: v for k, v in ENV.items() if k not in env}
    child.update({k: v for k, v in env.items() if v is not None})
    code = ("import json, tensorflow as tf; from lowlevel import kernels; "
            "tf.nn.conv2d(tf.ones([1, 4, 4, 2]), tf.ones([1, 1, 2, 2]), 1, 'SAME'); "
            "print(json.dumps(kernels.describe())); print(kernels.line())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()  # oneDNN's verbose lines go to stdout too
    d = json.loads(next(line for line in lines if line.startswith("{")))
    return d, next(line for line in lines if line.startswith("kernels: ")), out.stdout + out.stderr


def test_cpu_flags_are_read_from_the_first_flags_line():
    assert kernels.cpu_flags("processor\t: 0\n" + AVX512_BF16 + "flags\t: other\n") >= {"avx2", "avx512_bf16"}
    assert kernels.cpu_flags("processor\t: 0\n") == set()


@pytest.mark.parametrize("flags, limit, isa", [
    ({"sse4_1", "avx", "avx2", "fma"}, None, "avx2"),
    ({"sse4_1", "avx", "avx2", "fma", "avx_vnni"}, None, "avx2_vnni"),
    (kernels.cpu_flags(AVX512_BF16), None, "avx512_core_bf16"),
    (kernels.cpu_flags(AVX512_BF16), "ALL", "avx512_core_bf16"),
    (kernels.cpu_flags(AVX512_BF16), "AVX2", "avx2"),
    (kernels.cpu_flags(AVX512_BF16), "avx512_core", "avx512_core"),
    ({"sse4_1", "avx", "avx2", "fma"}, "AVX512_CORE", "avx2"),  # a cap above the CPU changes nothing
    (set(), None, "unknown"),
])
def test_the_instruction_set_is_the_newest_the_cpu_has_capped_by_the_environment(flags, limit, isa):
    assert kernels.onednn_isa(flags, limit) == isa


def test_tensorflows_own_rule_turns_onednn_on_only_for_vnni_bf16_or_amx():
    assert not bench.tensorflow_default_onednn({"avx2", "fma", "avx512f"})
    assert bench.tensorflow_default_onednn({"avx2", "avx_vnni"})
    assert bench.tensorflow_default_onednn(kernels.cpu_flags(AVX512_BF16))
    names = [name for name, _ in bench.kernel_sets({"avx2", "fma"})]
    assert "TensorFlow's default (TF_ENABLE_ONEDNN_OPTS=0 on this CPU)" in names
    assert not any("AVX2)" in n for n in names)  # an AVX2-only CPU: capping at AVX2 changes nothing
    assert any("ONEDNN_MAX_CPU_ISA=AVX2" in n for n, _ in bench.kernel_sets(kernels.cpu_flags(AVX512_BF16)))
    assert not any("AMX" in n for n, _ in bench.kernel_sets(kernels.cpu_flags(AVX512_BF16)))
    amx_flags = kernels.cpu_flags(AVX512_BF16) | {"amx_tile", "amx_bf16", "amx_int8"}
    without = dict(bench.kernel_sets(amx_flags))["oneDNN without AMX (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16)"]
    assert kernels.onednn_isa(amx_flags) == "avx512_core_amx"
    assert kernels.onednn_isa(amx_flags, without["ONEDNN_MAX_CPU_ISA"]) == "avx512_core_bf16"  # a CPU without AMX


@pytest.mark.slow
@pytest.mark.skipif(not X86, reason="lowlevel turns oneDNN on only on x86 CPUs")
def test_onednn_is_on_by_default_and_the_users_setting_wins():
    d, line, _ = describe(TF_ENABLE_ONEDNN_OPTS=None)
    assert d["library"] == "oneDNN" and d["chosen_by"] == "lowlevel"
    assert line.startswith(f"kernels: oneDNN ({d['isa']}), ") and "lowlevel's default" in line
    d, line, _ = describe(TF_ENABLE_ONEDNN_OPTS="0")
    assert d["library"] == "Eigen" and d["isa"] == "" and "TF_ENABLE_ONEDNN_OPTS=0 in the environment" in line
    d, _, _ = describe(TF_ENABLE_ONEDNN_OPTS="1", TF_NUM_INTEROP_THREADS="1")
    assert d["library"] == "oneDNN" and d["chosen_by"] == "TF_ENABLE_ONEDNN_OPTS=1" and d["inter_op"] == 1


# oneDNN's own names (ONEDNN_VERBOSE=1, "isa:" line) for lowlevel's
VERBOSE = {"avx2": "Intel AVX2", "avx2_vnni": "Intel AVX2 with Intel DL Boost",
           "avx512_core": "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions",
           "avx512_core_vnni": "Intel AVX-512 with Intel DL Boost",
           "avx512_core_bf16": "Intel AVX-512 with Intel DL Boost and bfloat16 support",
           "avx512_core_amx": "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with "
                              "bfloat16 and 8-bit integer support"}


@pytest.mark.slow
@pytest.mark.skipif(not X86 or "avx2" not in kernels.cpu_flags(), reason="needs an x86 CPU with AVX2")
@pytest.mark.parametrize("limit", [None, "AVX2"])
def test_the_named_instruction_set_is_the_one_onednn_reports(limit):
    d, _, err = describe(TF_ENABLE_ONEDNN_OPTS=None, ONEDNN_VERBOSE="1", ONEDNN_MAX_CPU_ISA=limit,
                         LOWLEVEL_TF_VERBOSE="1")
    reported = [line.split("isa:", 1)[1].strip() for line in err.splitlines() if ",info,cpu,isa:" in line]
    assert reported, err[-2000:]
    if d["isa"] in VERBOSE:
        assert reported[0] == VERBOSE[d["isa"]], (d, reported)
    if limit:
        assert d["isa"] == "avx2" and reported[0] == "Intel AVX2"


def test_bfloat16_needs_onednn_at_avx512_or_eigen():
    """oneDNN creates bfloat16 convolutions from avx512_core on (measured: under ONEDNN_MAX_CPU_ISA=AVX2
    or AVX2_VNNI TensorFlow aborts the first one); Eigen has them everywhere."""
    def problem(library, isa):
        return kernels.bfloat16_problem({"library": library, "isa": isa, "intra_op": 2, "inter_op": 2})

    assert problem("oneDNN", "avx2") == "oneDNN on this CPU (avx2) has no bfloat16 convolutions"
    assert problem("oneDNN", "avx2_vnni") and problem("oneDNN", "avx")
    assert not problem("oneDNN", "avx512_core") and not problem("oneDNN", "avx512_core_amx")
    assert not problem("Eigen", "")


@pytest.mark.slow
@pytest.mark.skipif(not X86 or not {"avx512f", "avx512bw"} <= kernels.cpu_flags(), reason="needs AVX-512 to train "
                    "the bfloat16 run that an AVX2 CPU's kernels then refuse")
def test_on_avx2_kernels_bfloat16_training_is_one_sentence_and_a_bfloat16_run_evaluates_in_float32(tmp_path, data,
                                                                                                   cli):
    from conftest import TINY, one_error

    assert cli("train", tmp_path, "--data", data, "--run-name", "bf", "--epochs", "1", "--max-steps", "3",
               "--precision", "bfloat16", *TINY)[0] == 0
    avx2 = dict(ENV, ONEDNN_MAX_CPU_ISA="AVX2")  # what oneDNN runs on an AVX2 CPU
    trained = subprocess.run([sys.executable, "-m", "lowlevel.train", "--data", str(data), "--run-name", "bf2",
                              "--epochs", "1", "--precision", "bfloat16", *TINY], cwd=tmp_path, env=avx2,
                             capture_output=True, text=True, timeout=600)
    one_error(trained.returncode, trained.stderr, "--precision bfloat16: oneDNN on this CPU (avx2) has no bfloat16 "
              "convolutions; train in float32", "TF_ENABLE_ONEDNN_OPTS=0, have bfloat16 but train about 12x slower")
    assert not (tmp_path / "checkpoints" / "bf2").exists()  # refused before its first step: the name is free
    evaluated = subprocess.run([sys.executable, "-m", "lowlevel.evaluate", "--checkpoint", "checkpoints/bf"],
                               cwd=tmp_path, env=avx2, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "was trained in bfloat16, measured here in float32: oneDNN on this CPU (avx2)" in evaluated.stdout
    assert "test accuracy" in evaluated.stdout
