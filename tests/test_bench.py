"""The benchmark's smoke run: it runs both sides and ends in the JSON line scripts read."""
import json
import os
import re
import subprocess
import sys

import pytest

from lowlevel import bench
from lowlevel.bench import kernels as bench_kernels, speed

import warm
from conftest import ENV, run_here

pytestmark = pytest.mark.slow  # subprocesses and trained runs: left out of -m "not slow"


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_quick_benchmark_prints_the_json_last(tmp_path, precision):
    result = run_here("bench", tmp_path, "--quick", "--precision", precision, check=False)  # in this process
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["precision"] == precision
    assert (last.get("matmul_gflops_bfloat16", 0) > 0) == (precision == "bfloat16")
    for key in ("train_images_per_s", "keras_train_images_per_s", "train_speedup_vs_keras", "infer_images_per_s",
                "keras_infer_images_per_s", "infer_speedup_vs_keras", "matmul_gflops", "train_flops_per_image",
                "keras_fit_images_per_s", "train_speedup_vs_keras_fit",
                "compute_fraction", "pipeline_images_per_s"):
        assert key in last and last[key] > 0, key
    # the ratios come from the unrounded throughputs; the printed throughputs are rounded to 0.1
    for ours, ref, ratio in [("train_images_per_s", "keras_train_images_per_s", "train_speedup_vs_keras"),
                             ("train_images_per_s", "keras_fit_images_per_s", "train_speedup_vs_keras_fit"),
                             ("infer_images_per_s", "keras_infer_images_per_s", "infer_speedup_vs_keras")]:
        assert last[ratio] == pytest.approx(last[ours] / last[ref], rel=0.01)
    assert "training images/s" in result.stdout
    assert result.stdout.startswith("kernels: ") and last["kernels"]["library"] in ("oneDNN", "Eigen")


def test_keras_reference_is_the_same_network():
    from lowlevel.nets.mobilenet import MobileNetV1
    for alpha in (1.0, 0.25):
        ours = sum(int(v.shape.num_elements()) for v in MobileNetV1(alpha=alpha).variables)
        assert speed.keras_model(alpha).count_params() == ours


def test_the_timed_step_has_no_moving_average_unless_asked():
    """The Keras reference trains without one, and the published figures were timed so; the default run has one.
    The augmentation asked for is the batches' (docs/recipe.md times CutMix so)."""
    from lowlevel.bench import timing
    plain, _, batches = timing.trainer(8, 0.125, 1)
    assert plain.average is None and batches.cutmix == 0.0
    averaged, _, batches = timing.trainer(8, 0.125, 1, ema=0.999, cutout=4, cutmix=0.5)
    assert averaged.average is not None and (batches.cutout, batches.cutmix) == (4, 0.5)


def test_flops_per_image_matches_the_notes():
    """CIFAR default: 46.35M multiply-adds forward -> about 278 MFLOP per training image."""
    from lowlevel import costs
    from lowlevel.nets.mobilenet import MobileNetV1
    assert abs(6 * costs.totals(costs.rows(MobileNetV1())).madds - 278e6) / 278e6 < 0.01


def test_profile_by_op_type():
    result = warm.run([sys.executable, "-m", "lowlevel.bench", "profile", "--quick"], ".", ENV)  # it turns eager off
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    ops = [line.split()[0] for line in lines[1:-1]]
    assert "Conv2DBackpropFilter" in ops and "DepthwiseConv2dNative" in ops and "FusedBatchNormV3" in ops
    # one kernel at a time: the kernels' times add up to no more than the step's wall time
    kernels_ms, wall_ms = (float(w) for w in re.findall(r"([\d.]+) ms", lines[-1]))
    assert 0 < kernels_ms <= wall_ms


def test_summaries_benchmark_times_training_with_and_without_them(capsys, monkeypatch):
    """--summaries: images/s with TensorBoard summaries off and on; the end-of-epoch summaries really run
    (an Events.epoch that fails fails the benchmark)."""
    from lowlevel import events
    assert bench.main(["summaries", "--quick"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    off, on = last["train_images_per_s_summaries_off"], last["train_images_per_s_summaries_on"]
    assert off > 0 and on > 0 and last["summaries_cost"] == pytest.approx(1 - on / off, abs=1e-3)

    def broken(*args, **kwargs):
        raise RuntimeError("epoch summaries ran")
    monkeypatch.setattr(events.Events, "epoch", broken)
    with pytest.raises(RuntimeError, match="epoch summaries ran"):
        bench.main(["summaries", "--quick"])


def test_strategy_benchmark_times_one_device_against_two_replicas():
    result = warm.run([sys.executable, "-m", "lowlevel.bench", "strategy", "--quick"], ".", ENV)  # 2 logical CPUs
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["replicas"] == 2
    assert last["gradient_floats"] == 215642  # MobileNet alpha 0.25's trainable parameters
    for key in ("default_images_per_s", "mirrored_images_per_s", "mirrored_no_sync_bn_images_per_s",
                "gradient_all_reduce_ms"):
        assert last[key] > 0, key


def test_one_kernel_row_and_the_kernels_table(monkeypatch, capsys):
    """kernels --row (what kernels runs in each fresh process) prints one JSON row; kernels lays the rows
    out one per kernel set, ratios against the first and against Keras on the same kernels."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TF_ENABLE_ONEDNN_OPTS="0")
    result = subprocess.run([sys.executable, "-m", "lowlevel.bench", "kernels", "--row", "--quick"], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["kernels"].startswith("Eigen:")  # the environment it was given
    for key in ("matmul_gflops", "train_images_per_s", "infer_images_per_s", "keras_train_images_per_s"):
        assert row[key] > 0, key
    fake = [{"name": name, "env": e, **row, "train_images_per_s": 100.0 * (i + 1)}
            for i, (name, e) in enumerate(bench_kernels.kernel_sets({"avx2", "fma", "avx512f"}))]
    fake[-1] = {"name": fake[-1]["name"], "env": fake[-1]["env"], "refused": "--precision bfloat16: no kernels."}
    monkeypatch.setattr(bench_kernels, "kernels_table", lambda args: fake)
    assert bench.main(["kernels", "--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines[2:2 + len(fake)]] == [r["name"] for r in fake]
    assert " 2.00x " in lines[3] and json.loads(lines[-1]) == fake
    assert lines[1 + len(fake)].endswith(" refused: --precision bfloat16: no kernels.")  # a row the kernels refuse


def test_networks_benchmark_prints_a_row_per_network(capsys):
    assert bench.main(["networks", "--quick", "--models", "mobilenet-v3-small,mobilenet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    last = json.loads(lines[-1])
    assert [r["model"] for r in last["networks"]] == ["mobilenet-v3-small", "mobilenet"]
    assert last["networks"][1]["mult_adds"] == 3_331_072  # MobileNet v1 at alpha 0.25 (lowlevel.summary)
    for r in last["networks"]:
        assert r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0 and 0 < r["compute_fraction"] < 1
        assert r["compute_fraction"] == pytest.approx(6 * r["mult_adds"] * r["train_images_per_s"]
                                                      / (last["matmul_gflops"] * 1e9), abs=1e-3)  # rounded
    assert [line.split()[0] for line in lines[3:5]] == ["mobilenet-v3-small", "mobilenet"]


def test_networks_benchmark_names_what_it_cannot_measure(capsys):
    assert bench.main(["networks", "--models", "mobilenet,alexnet"]) == 2
    assert capsys.readouterr().err.startswith("error: --models mobilenet,alexnet: name networks of 32x32 images")


def test_a_kernel_set_that_refuses_the_precision_is_a_row_saying_why(monkeypatch):
    """A kernel set whose process exits with a one-sentence error (status 2: bfloat16 on oneDNN below AVX-512)
    is a row holding that sentence; any other failure stops the table."""
    import argparse
    import subprocess as sp

    outcomes = iter([sp.CompletedProcess([], 0, stdout='{"kernels": "oneDNN:avx2:2x2"}\n', stderr=""),
                     sp.CompletedProcess([], 2, stdout="", stderr="error: --precision bfloat16: none here.\n")])
    monkeypatch.setattr(bench_kernels, "kernel_sets", lambda flags: [("a", {}), ("b", {"X": "1"})])
    monkeypatch.setattr(bench_kernels.subprocess, "run", lambda *a, **k: next(outcomes))
    args = argparse.Namespace(batch_size=8, alpha=0.25, steps=2, repeats=1, precision="bfloat16", quick=True)
    rows = bench_kernels.kernels_table(args)
    assert rows == [{"name": "a", "env": {}, "kernels": "oneDNN:avx2:2x2"},
                    {"name": "b", "env": {"X": "1"}, "refused": "--precision bfloat16: none here."}]
    monkeypatch.setattr(bench_kernels.subprocess, "run", lambda *a, **k: sp.CompletedProcess([], 1, "", "boom\n"))
    with pytest.raises(RuntimeError, match="the kernel set 'a' could not be timed: boom"):
        bench_kernels.kernels_table(args)
