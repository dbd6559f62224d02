"""python -m lowlevel.export and evaluate --model: the exported files compute what the checkpoint computes."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import ENV, one_error
from lowlevel import export, nets, runs
from lowlevel.pipeline import Normalization

pytestmark = pytest.mark.slow  # subprocesses and trained runs: left out of -m "not slow"

FORMATS = [*export.ALL, "tflite-int8-per-tensor"]


@pytest.fixture(scope="module")
def exported(colours):
    """The colours run (conftest) exported in every format: (run, export folder, loaded run)."""
    run, folder = colours
    return run, folder, runs.load(run)


def reference(loaded, images):
    """What every export must compute: softmax(model.inference(normalization(images)))."""
    return tf.nn.softmax(loaded.model.inference(loaded.normalization(images))).numpy()


def ops(flatbuffer: bytes):
    """[(op name, [input tensor details], [output tensor details])] of a LiteRT model."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    it = Interpreter(model_content=flatbuffer,  # no XNNPACK: it would replace the ops by one DELEGATE
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    return [(op["op_name"], [tensors[i] for i in op["inputs"] if i >= 0], [tensors[i] for i in op["outputs"]])
            for op in it._get_ops_details()]


def test_every_format_is_written_with_a_manifest(exported):
    run, out, loaded = exported
    for fmt in FORMATS:
        assert export.size(out / export.FILES[fmt]) > 10_000, fmt
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["files"] == {f: export.FILES[f] for f in FORMATS}  # the second export added to the first
    assert manifest["dataset"] == "cifar10" and manifest["input_shape"] == [32, 32, 3]
    assert manifest["checkpoint"] == str(runs.latest(run)) and manifest["calibration_images"] == 60
    assert manifest["normalization"]["mean"] == loaded.normalization.values()[0]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_savedmodel_signature_and_outputs(exported):
    _, out, loaded = exported
    fn = tf.saved_model.load(str(out / "savedmodel")).signatures["serving_default"]
    spec = fn.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 32, 32, 3]
    outputs = fn.structured_outputs
    assert outputs["probabilities"].dtype == tf.float32 and outputs["probabilities"].shape.as_list() == [None, 10]
    assert outputs["classes"].dtype == tf.int64 and outputs["classes"].shape.as_list() == [None]
    images = loaded.data.test_images
    got = fn(images=tf.constant(images))
    want = reference(loaded, images)
    np.testing.assert_allclose(got["probabilities"].numpy(), want, rtol=0, atol=1e-5)  # a graph rounds otherwise
    np.testing.assert_array_equal(got["classes"].numpy(), want.argmax(-1))


def test_savedmodel_serves_in_a_process_without_lowlevel(exported, tmp_path):
    _, out, loaded = exported
    np.save(tmp_path / "x.npy", loaded.data.test_images[:5])
    code = ("import sys, numpy as np, tensorflow as tf\n"
            f"m = tf.saved_model.load({str(out / 'savedmodel')!r})\n"
            f"p = m.signatures['serving_default'](images=tf.constant(np.load({str(tmp_path / 'x.npy')!r})))\n"
            "assert not [n for n in sys.modules if n.startswith('lowlevel')]\n"
            "print(p['probabilities'].numpy().tolist())\n")
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    got = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, reference(loaded, loaded.data.test_images[:5]), atol=1e-5)
    cli = pathlib.Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run([str(cli), "show", "--dir", str(out / "savedmodel"), "--all"], capture_output=True,
                           text=True, env=env, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "dtype: DT_UINT8" in shown.stdout and "shape: (-1, 32, 32, 3)" in shown.stdout, shown.stdout


def test_litert_formats_compute_the_model(exported):
    _, out, loaded = exported
    images, labels = loaded.data.test_images, loaded.data.test_labels
    want = reference(loaded, images)
    assert np.mean(want.argmax(-1) == labels) >= 0.95 and np.median(want.max(-1)) > 0.5  # right and confident
    got = {fmt: export.Exported(out / export.FILES[fmt]).predict(images) for fmt in FORMATS[1:]}
    np.testing.assert_allclose(got["tflite-float"], want, rtol=0, atol=1e-4)
    for fmt in ("tflite-dynamic", "tflite-int8"):  # quantized: the same decisions, within int8's rounding
        assert np.mean(got[fmt].argmax(-1) == want.argmax(-1)) >= 0.95, fmt
        assert np.abs(got[fmt] - want).mean() < 0.02, fmt
    # per-tensor int8 computes probabilities too; how far its decisions are off is docs/export.md's subject
    np.testing.assert_allclose(got["tflite-int8-per-tensor"].sum(-1), 1.0, atol=0.02)


@pytest.mark.parametrize("fmt, scales", [("tflite-int8", "per channel"), ("tflite-int8-per-tensor", "one")])
def test_int8_model_is_integer_throughout(exported, fmt, scales):
    _, out, _ = exported
    table = ops((out / export.FILES[fmt]).read_bytes())
    inp = export.interpreter(out / export.FILES[fmt]).get_input_details()[0]
    assert inp["dtype"] == np.uint8 and inp["quantization"] == (1.0, 0)  # the raw pixels, no cast in the graph
    convs = [(name, ins, outs) for name, ins, outs in table if name in ("CONV_2D", "DEPTHWISE_CONV_2D",
                                                                          "FULLY_CONNECTED")]
    assert len(convs) == 28  # stem, 13 x (depthwise, pointwise), classifier
    for name, (x, w, b), (y,) in convs:
        assert (x["dtype"], w["dtype"], b["dtype"], y["dtype"]) == (np.int8, np.int8, np.int32, np.int8), name
        n = len(w["quantization_parameters"]["scales"])
        channels = w["shape"][-1] if name == "DEPTHWISE_CONV_2D" else w["shape"][0]
        assert n == (channels if scales == "per channel" else 1), (name, n)
    floats = [t["name"] for _, ins, outs in table for t in ins + outs if t["dtype"] == np.float32]
    assert [table[-1][0]] == ["DEQUANTIZE"] and set(floats) == {table[-1][2][0]["name"]}  # only the output


@pytest.mark.parametrize("fmt", FORMATS)
def test_evaluate_an_exported_model(exported, cli, fmt):
    run, out, loaded = exported
    status, checkpoint, err = cli("evaluate", out.parent, "--checkpoint", run, "--tta", "none")  # as exported
    assert status == 0, err
    status, stdout, err = cli("evaluate", out.parent, "--model", out / export.FILES[fmt])
    assert status == 0, err
    line = [ln for ln in stdout.splitlines() if "test accuracy" in ln][0]
    assert line.startswith(f"{out / export.FILES[fmt]}: test accuracy ") and "(100 images)" in line
    if fmt in ("savedmodel", "tflite-float"):  # the same function: the same predictions, the same figure
        assert line.split("test accuracy ")[1] == checkpoint.split("test accuracy ")[1].splitlines()[0]
    stem = out / f"{export.FILES[fmt].removesuffix('.tflite')}-test"
    assert (pathlib.Path(f"{stem}-confusion.csv")).is_file() and pathlib.Path(f"{stem}-per-class.csv").is_file()


def test_without_ai_edge_litert_tensorflows_interpreter_is_used_with_a_notice(exported, cli, monkeypatch):
    _, out, _ = exported
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    status, stdout, err = cli("evaluate", out.parent, "--model", out / "float32.tflite")
    assert status == 0, err
    assert stdout.splitlines()[0].startswith("note: ai-edge-litert is not installed") and "test accuracy" in stdout


def test_evaluate_model_errors_are_one_sentence(exported, cli, tmp_path):
    _, out, _ = exported
    one_error(*cli("evaluate", tmp_path, "--model", tmp_path / "none.tflite")[::2], "none.tflite: is neither")
    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer" * 10)
    one_error(*cli("evaluate", tmp_path, "--model", tmp_path / "bad.tflite")[::2], "bad.tflite: is not a LiteRT model")
    shutil.copy(out / "float32.tflite", tmp_path / "alone.tflite")  # no export.json beside it
    one_error(*cli("evaluate", tmp_path, "--model", tmp_path / "alone.tflite", "--dataset", "fashion-mnist",
                   "--data", tmp_path)[::2], "fashion-mnist")
    one_error(*cli("evaluate", tmp_path, "--checkpoint", "x", "--model", "y")[::2], "not allowed with")


def test_bench_times_the_exported_files(exported, tmp_path, capsys):
    from lowlevel import bench
    _, out, _ = exported
    shutil.copy(out / "float32.tflite", tmp_path)
    manifest = json.loads((out / "export.json").read_text())
    (tmp_path / "export.json").write_text(json.dumps({**manifest, "files": {"tflite-float": "float32.tflite"}}))
    assert bench.main(["exported", str(tmp_path), "--threads", "1,2", "--runs", "5"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["format"], r["threads"]) for r in rows] == [("tflite-float", 1), ("tflite-float", 2)]
    assert all(r["latency_ms"] > 0 and r["images_per_s"] > 0 and r["bytes"] == export.size(out / "float32.tflite")
               for r in rows)
    assert bench.main(["exported", str(tmp_path), "--threads", "0"]) == 2
    assert "--threads must be positive" in capsys.readouterr().err


def test_export_errors_are_one_sentence(straight, cli, tmp_path):
    run, _ = straight
    one_error(*cli("export", tmp_path, "--checkpoint", tmp_path / "missing")[::2], "missing")
    one_error(*cli("export", tmp_path, "--checkpoint", run, "--format", "onnx")[::2], "--format")
    for n in ("-3", "101"):  # the tiny data set has 100 training images
        one_error(*cli("export", tmp_path, "--checkpoint", run, "--calibration", n)[::2],
                  f"--calibration must be between 1 and 100 (the training images), not {n}.")
    (tmp_path / "file").write_text("")
    one_error(*cli("export", tmp_path, "--checkpoint", run, "--out", tmp_path / "file" / "sub")[::2],
              "could not be written")
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged, ignore=shutil.ignore_patterns("best", "export*", "inspect*", "tensorboard"))
    data = damaged / "ckpt-30.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    one_error(*cli("export", tmp_path, "--checkpoint", damaged, "--out", tmp_path / "o1")[::2], "is truncated")
    other = tmp_path / "other"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("best", "export*", "inspect*", "tensorboard"))
    cfg = json.loads((other / "config.json").read_text())
    cfg["alpha"] = 0.25  # config.json and checkpoint from different runs
    (other / "config.json").write_text(json.dumps(cfg))
    one_error(*cli("export", tmp_path, "--checkpoint", other, "--out", tmp_path / "o2")[::2], "cannot be restored")
    assert not (tmp_path / "o1").exists() or not any((tmp_path / "o1").iterdir())


def test_a_failed_conversion_leaves_no_file(straight, cli, tmp_path, monkeypatch):
    run, _ = straight

    def fail(self):
        raise RuntimeError("injected converter failure")
    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", fail)
    one_error(*cli("export", tmp_path, "--checkpoint", run, "--format", "tflite-int8", "--out", tmp_path / "e")[::2],
              "int8.tflite: could not be converted (injected converter failure)")
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == []


@pytest.mark.parametrize("fail_at", ["save", "rename old", "rename new"])
def test_a_failed_savedmodel_export_keeps_the_previous_one(straight, cli, tmp_path, monkeypatch, fail_at):
    """Inject a fault at each step of the swap: the folder holds the previous SavedModel, whole, and no leftover."""
    run, _ = straight
    out = tmp_path / "e"
    assert cli("export", tmp_path, "--checkpoint", run, "--format", "savedmodel", "--out", out)[0] == 0
    before = {p.relative_to(out): p.read_bytes() for p in (out / "savedmodel").rglob("*") if p.is_file()}
    if fail_at == "save":
        real = tf.saved_model.save

        def save(obj, path, **kw):
            real(obj, path, **kw)
            raise OSError(28, "No space left on device")  # after writing part of it
        monkeypatch.setattr(tf.saved_model, "save", save)
    else:
        real_rename, calls = pathlib.Path.rename, []

        def rename(self, target):
            calls.append(self)
            if len(calls) == (1 if fail_at == "rename old" else 2):
                raise OSError(28, "No space left on device")
            return real_rename(self, target)
        monkeypatch.setattr(pathlib.Path, "rename", rename)
    one_error(*cli("export", tmp_path, "--checkpoint", run, "--format", "savedmodel", "--out", out)[::2],
              "savedmodel: could not be written (No space left on device)")
    monkeypatch.undo()
    after = {p.relative_to(out): p.read_bytes() for p in (out / "savedmodel").rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "savedmodel"]


def test_calibration_images_are_seeded_distinct_training_images():
    images = np.arange(1000)[:, None, None, None] * np.ones((1, 2, 2, 1), np.int64)  # image i holds i
    a, b = export.calibration_images(images, 500), export.calibration_images(images, 500)
    np.testing.assert_array_equal(a, b)
    picked = a[:, 0, 0, 0]
    assert len(set(picked)) == 500 and list(picked) == sorted(picked)
    assert 0.45 < np.mean(picked < 500) < 0.55  # drawn from the whole set, not its start
    with pytest.raises(runs.ConfigError, match="--calibration must be between 1 and 1000"):
        export.calibration_images(images, 1001)


def test_int8_input_that_would_be_rescaled_is_refused():
    net = nets.build("fashion-separable")
    module = export.deployed(net, Normalization([0.5], [0.25]))
    dim = np.random.default_rng(0).integers(0, 200, [8, 28, 28, 1], dtype=np.uint8)  # never 255
    with pytest.raises(runs.RunError, match="do not reach 255"):
        export.to_tflite(module, "tflite-int8", dim)


SHAPES = {"alexnet": (64, 64, 3)}  # smaller than 224, as the networks allow


# every network but VGG16: its rows (3x3 convolutions, max-pools, dense 4096 and dropout) are vgg-blocks'
# and AlexNet's, and its 33.7M weights (at 32x32) would make it the slowest conversion
@pytest.mark.parametrize("name", [n for n in nets.NETS if n != "vgg16"])
def test_every_network_exports(monkeypatch, name):
    """SavedModel function and float LiteRT equal the network; int8 converts with int8 convolutions.  (The
    series shorter, tests/shorter.py: every kind of block converts the same at any depth.)"""
    from shorter import shorten

    shorten(name, monkeypatch.setattr)
    entry = nets.NETS[name]
    shape = SHAPES.get(name, entry.input_shape)
    # the width does not change the ops: the width-multiplied networks export at 0.25
    narrow = name.startswith(("mobilenet", "shufflenet", "efficientnet", "inception", "alexnet"))
    net = nets.build(name, shape, entry.num_classes, **({"alpha": 0.25} if narrow else {}))
    module = export.deployed(net, Normalization([0.5] * shape[2], [0.25] * shape[2]))
    images = np.random.default_rng(0).integers(0, 256, [4, *shape], dtype=np.uint8)
    images[0, 0, 0] = 255
    want = tf.nn.softmax(net.inference((images / 255 - 0.5) / 0.25)).numpy()
    np.testing.assert_allclose(module.serve(images)["probabilities"].numpy(), want, atol=1e-5)
    runner = export.interpreter(export.to_tflite(module, "tflite-float")).get_signature_runner("serving_default")
    np.testing.assert_allclose(runner(images=images)["probabilities"], want, atol=1e-4)
    table = ops(export.to_tflite(module, "tflite-int8", images))
    convs = [w["dtype"] for op, ins, _ in table if op in ("CONV_2D", "DEPTHWISE_CONV_2D") for w in ins[1:2]]
    assert convs and set(convs) == {np.int8}


def test_export_runs_in_float32_for_a_mixed_precision_run(tmp_path, data, cli):
    from conftest import TINY
    assert cli("train", tmp_path, "--data", data, "--run-name", "bf", "--epochs", "1", "--max-steps", "3",
               "--precision", "bfloat16", *TINY)[0] == 0
    run = tmp_path / "checkpoints" / "bf"
    assert cli("export", tmp_path, "--checkpoint", run, "--format", "tflite-float")[0] == 0
    loaded = runs.load(run, precision="float32")
    got = export.Exported(run / "export" / "float32.tflite").predict(loaded.data.test_images)
    np.testing.assert_allclose(got, reference(loaded, loaded.data.test_images), atol=1e-4)
    assert os.path.getsize(run / "export" / "float32.tflite") > 4 * 20_000  # float32 weights, not 16-bit
