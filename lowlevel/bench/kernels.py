"""`python -m lowlevel.bench kernels`: the training and inference steps, Keras' training steps and the
matmul peak under each kernel set (lowlevel's default, TensorFlow's default on this CPU, Eigen,
oneDNN without AMX, oneDNN capped at AVX2, one inter-op thread), each in a fresh process, since TensorFlow reads its
kernel settings once when it starts (lowlevel/kernels.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from lowlevel.bench.speed import keras_throughput, lowlevel_throughput, mult_adds
from lowlevel.bench.timing import matmul_gflops


def tensorflow_default_onednn(flags: set[str]) -> bool:
    """Whether TensorFlow on its own turns oneDNN on for a CPU with these flags: only with AVX512_VNNI,
    AVX512_BF16, AVX_VNNI or AMX (tensorflow/core/util/port.cc, IsMKLEnabled)."""
    return bool(flags & {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8"})


def kernel_sets(flags: set[str]) -> list[tuple[str, dict]]:
    """(name, environment variables) of each kernel set `--kernels` measures on a CPU with these flags.
    Eigen is what TensorFlow runs by default on an AVX2-only CPU; oneDNN capped at AVX2 is what lowlevel
    runs there (measured only on a CPU that has more than AVX2); on a CPU with AMX, oneDNN capped below
    it is what an AVX-512 CPU without AMX runs (AMX multiplies bfloat16 and int8 matrices, not float32)."""
    tf_default = "1" if tensorflow_default_onednn(flags) else "0"
    sets = [("lowlevel's default", {}),
            (f"TensorFlow's default (TF_ENABLE_ONEDNN_OPTS={tf_default} on this CPU)",
             {"TF_ENABLE_ONEDNN_OPTS": tf_default}),
            ("Eigen (TF_ENABLE_ONEDNN_OPTS=0)", {"TF_ENABLE_ONEDNN_OPTS": "0"}),
            ("lowlevel's default, 1 inter-op thread", {"TF_NUM_INTEROP_THREADS": "1"})]
    if flags & {"avx512f", "avx_vnni"}:
        sets.insert(3, ("oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2)", {"ONEDNN_MAX_CPU_ISA": "AVX2"}))
    if flags & {"amx_tile", "amx_bf16"}:
        sets.insert(3, ("oneDNN without AMX (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16)",
                        {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}))
    return sets


def kernel_row(batch: int, alpha: float, steps: int, repeats: int, precision: str, quick: bool = False) -> dict:
    """One kernel set's figures, in this process: matmul peak, lowlevel and Keras training, inference."""
    from lowlevel import kernels

    peak = matmul_gflops(*((512, 2) if quick else (2048, 10)), repeats)
    train, infer = lowlevel_throughput(batch, alpha, steps, repeats, precision)
    keras_train, _, keras_infer = keras_throughput(batch, alpha, steps, repeats, precision)
    return {"kernels": kernels.short(), "matmul_gflops": round(peak, 1), "train_images_per_s": round(train, 1),
            "infer_images_per_s": round(infer, 1), "keras_train_images_per_s": round(keras_train, 1),
            "keras_infer_images_per_s": round(keras_infer, 1)}


def kernels_table(args) -> list[dict]:
    """kernel_row under each of kernel_sets, each in a fresh process with its environment."""
    from lowlevel import kernels

    rows = []
    for name, env in kernel_sets(kernels.cpu_flags()):
        child = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA",
                                                                  "TF_NUM_INTEROP_THREADS")}
        argv = [sys.executable, "-m", "lowlevel.bench", "kernels", "--row", "--batch-size", str(args.batch_size),
                "--alpha", str(args.alpha), "--steps", str(args.steps), "--repeats", str(args.repeats),
                "--precision", args.precision] + (["--quick"] if args.quick else [])
        out = subprocess.run(argv, env={**child, **env}, capture_output=True, text=True)
        last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        if out.returncode == 2:  # a setting these kernels refuse (bfloat16 on oneDNN below AVX-512): its sentence
            rows.append({"name": name, "env": env, "refused": last.removeprefix("error: ")})
        elif out.returncode != 0:
            raise RuntimeError(f"the kernel set {name!r} could not be timed: {last}")
        else:
            rows.append({"name": name, "env": env, **json.loads(out.stdout.strip().splitlines()[-1])})
    return rows


def run(args) -> int:
    if args.row:  # one kernel set, in the kernels this process was started with
        print(json.dumps(kernel_row(args.batch_size, args.alpha, args.steps, args.repeats, args.precision,
                                    args.quick)))
        return 0
    rows = kernels_table(args)
    flops = 6 * mult_adds(args.alpha)
    timed = [r for r in rows if "refused" not in r]
    if not timed:
        raise RuntimeError(f"no kernel set could run {args.precision}: {rows[0]['refused']}")
    ref = timed[0]["train_images_per_s"]
    print(f"MobileNet v1, alpha {args.alpha:g}, batch {args.batch_size}, 32x32, {args.precision}, {args.steps} steps "
          f"per timed call, best of {args.repeats}; each kernel set in a fresh process")
    print(f"{'kernel set':<62s} {'kernels':<28s} {'matmul':>7s} {'train':>7s} {'% peak':>6s} {'vs 1st':>6s} "
          f"{'Keras':>7s} {'ratio':>6s} {'infer':>7s} {'Keras':>7s}")
    for r in rows:
        if "refused" in r:
            print(f"{r['name']:<62s} refused: {r['refused']}")
            continue
        share = 100 * flops * r["train_images_per_s"] / (r["matmul_gflops"] * 1e9)
        print(f"{r['name']:<62s} {r['kernels']:<28s} {r['matmul_gflops']:7.1f} {r['train_images_per_s']:7.1f} "
              f"{share:6.1f} {r['train_images_per_s'] / ref:5.2f}x {r['keras_train_images_per_s']:7.1f} "
              f"{r['train_images_per_s'] / r['keras_train_images_per_s']:5.2f}x {r['infer_images_per_s']:7.1f} "
              f"{r['keras_infer_images_per_s']:7.1f}")
    print("(images/s; matmul: float32 GFLOP/s; % peak: training FLOPs against that set's matmul rate; Keras: "
          "its steps alone, on the same kernels)")
    print(json.dumps(rows))
    return 0
