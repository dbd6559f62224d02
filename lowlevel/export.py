"""`python -m lowlevel.export`: a trained run as the files people deploy, SavedModel and LiteRT.

    python -m lowlevel.export --checkpoint checkpoints/RUN [--best] [--format all] [--out DIR]

writes into DIR (default checkpoints/RUN/export/):

  savedmodel/           a TensorFlow SavedModel; signature `serving_default`:
                        images uint8 [B, H, W, C] -> probabilities float32 [B, K], classes int64 [B]
  float32.tflite        LiteRT (TFLite) flatbuffer, float32, the same signature
  dynamic.tflite        dynamic-range quantization: int8 weights, float32 activations
  int8.tflite           full integer: int8 weights (per output channel) and activations, calibrated on
                        --calibration training images (a --qat run: the ranges and weight scales it
                        learned, no calibration); uint8 input = the raw pixels (scale 1, zero
                        point 0), so every format takes the same images
  int8-per-tensor.tflite  (--format tflite-int8-per-tensor, not in `all`) the same with one scale per
                        weight tensor: the naive quantization, for comparison
  export.json           what was exported: run, checkpoint, network, data set, label names

Every format computes  softmax(net.inference((x / 255 - mean) / std))  with the run's own
normalization statistics and each batch norm folded into its convolution (W' = W gamma / sigma,
b' = beta - mu gamma / sigma), in float32 whatever precision the run trained in.  Serve the
SavedModel without lowlevel:

    saved_model_cli show --dir checkpoints/RUN/export/savedmodel --all
    python -c "import tensorflow as tf; m = tf.saved_model.load('.../savedmodel'); \\
               print(m.signatures['serving_default'](images=tf.zeros([1, 32, 32, 3], tf.uint8)))"

`python -m lowlevel.evaluate --model PATH` measures any of them on the test images.  Each file is
written whole or not at all: a failed conversion leaves no file behind.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from lowlevel import errors, runs
from lowlevel.exported import Exported, interpreter, read_manifest, size  # noqa: F401 - export.Exported, ...
from lowlevel._tf import quiet_stderr
from lowlevel.config import Parser

# format -> file or folder name in the export folder
FILES = {"savedmodel": "savedmodel", "tflite-float": "float32.tflite", "tflite-dynamic": "dynamic.tflite",
         "tflite-int8": "int8.tflite", "tflite-int8-per-tensor": "int8-per-tensor.tflite"}
ALL = ("savedmodel", "tflite-float", "tflite-dynamic", "tflite-int8")
CALIBRATION_SEED = 0


def parser() -> Parser:
    p = Parser(prog="python -m lowlevel.export", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run folder, or one checkpoint prefix (.../ckpt-N)")
    p.add_argument("--best", action="store_true", help="with a run folder: its best checkpoint, not the latest")
    p.add_argument("--format", default="all", choices=["all", *FILES], help="what to write (default all: "
                                                                            + ", ".join(ALL) + ")")
    p.add_argument("--out", default="", help="the folder to write into (default: the run's export/)")
    p.add_argument("--calibration", type=int, default=0,
                   help="training images the int8 ranges are calibrated on, drawn with seed 0 (default 500, or "
                        "all of them if there are fewer)")
    p.add_argument("--data", default="", help="the data set's folder (default: the run's --data)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    formats = ALL if args.format == "all" else (args.format,)
    return errors.as_command("python -m lowlevel.export", lambda: export(
        args.checkpoint, formats, args.out, args.best, args.calibration, args.data))


# ---------------------------------------------------------------- the deployed function

def deployed(model, normalization):
    """A tf.Module serving `model`: `serve` (uint8 images, the SavedModel's signature) and `pixels`
    (the same from float32 pixel values, which the int8 converter needs to quantize the input itself)."""
    from lowlevel._tf import tf

    from lowlevel import quantize

    shape = list(model.input_shape)
    learned = isinstance(model, quantize.Quantized)  # a --qat run: the normalization's ranges too

    def outputs(images):
        """images [B, H, W, C], pixel values 0..255 -> probabilities float32 [B, K], classes int64 [B]."""
        x = quantize.normalization(normalization, images) if learned else normalization(images)  # float32
        logits = model.inference(x)
        return {"probabilities": tf.nn.softmax(logits), "classes": tf.argmax(logits, -1)}

    module = tf.Module(name="deployed")
    module.model, module.normalization = model, normalization
    module.serve = tf.function(outputs, autograph=False,
                               input_signature=[tf.TensorSpec([None, *shape], tf.uint8, name="images")])
    module.pixels = tf.function(outputs, autograph=False,
                                input_signature=[tf.TensorSpec([None, *shape], tf.float32, name="images")])
    return module


def to_tflite(module, fmt: str, calibration: np.ndarray | None = None) -> bytes:
    """The LiteRT flatbuffer of `module` in format fmt (tflite-float, -dynamic, -int8, -int8-per-tensor).

    int8: every weight and activation int8, ranges calibrated by running `calibration` (uint8
    [N, H, W, C]) through the float model; per-channel weight scales unless -per-tensor.  The input
    is uint8 holding the raw pixels: the converter quantizes the float pixels' range 0..255 with
    scale 1 and zero point 0 (checked), so no cast or rescale is left in the graph.
    calibration None with int8: a --qat run's network, whose fake quantization gives every range and
    weight scale (lowlevel/quantize.py); the file is checked to hold no float32 tensor but the
    probabilities.
    """
    from lowlevel._tf import tf

    integer = fmt.startswith("tflite-int8")
    fn = (module.pixels if integer else module.serve).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], module)
    if fmt != "tflite-float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # alone: dynamic-range
    if integer and calibration is None:
        # (not OpsSet.TFLITE_BUILTINS_INT8: in TF 2.21 that demands a representative dataset before it
        # looks for the fake quantization, and with one it calibrates over the learned ranges)
        converter.inference_input_type = tf.uint8
        flatbuffer = converter.convert()
        floats = [d["name"] for d in interpreter(flatbuffer).get_tensor_details() if d["dtype"] == np.float32]
        if len(floats) > 1:  # the probabilities (dequantized) alone
            raise runs.RunError(f"not integer throughout: {len(floats) - 1} tensors would stay float32 ({floats[0]}, "
                                f"...), outputs of operations quantization-aware training gives no range "
                                f"(lowlevel/quantize.py); export tflite-float or tflite-dynamic instead")
        scale, zero = interpreter(flatbuffer).get_input_details()[0]["quantization"]
        assert (scale, zero) == (1.0, 0), (scale, zero)  # quantize.normalization's pixel range, 0..255
        return flatbuffer
    if integer:
        converter.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        # the converter's own switch (private, as of TF 2.21), for the classifier too
        converter._experimental_disable_per_channel = fmt.endswith("per-tensor")
    flatbuffer = converter.convert()
    if integer:
        scale, zero = interpreter(flatbuffer).get_input_details()[0]["quantization"]
        if (scale, zero) != (1.0, 0):
            raise runs.RunError(f"the calibration images' pixels do not reach 255 (the int8 input would be scaled "
                                f"by {scale:.4g}, zero point {zero}); calibrate on more images with --calibration")
    return flatbuffer


def calibration_images(train_images: np.ndarray, n: int = 0) -> np.ndarray:
    """n training images (0: 500, or all if fewer) drawn without replacement with seed CALIBRATION_SEED,
    in index order."""
    n = n or min(500, len(train_images))
    if not 1 <= n <= len(train_images):
        raise runs.ConfigError(f"--calibration must be between 1 and {len(train_images)} (the training images), "
                               f"not {n}.")
    return train_images[np.sort(np.random.default_rng(CALIBRATION_SEED).choice(len(train_images), n, False))]


# ---------------------------------------------------------------- writing

def export(checkpoint: str, formats=ALL, out: str = "", best: bool = False, calibration: int = 0,
           data_path: str = "") -> Path:
    """Write `formats` of the run's checkpoint into `out`; returns the folder."""
    loaded = runs.load(checkpoint, best, data_path, precision="float32")
    if loaded.note:
        print(loaded.note)
    if loaded.weights == "averaged":
        print(f"exporting the averaged weights (the run's --ema {loaded.config.ema}) of {loaded.prefix}")
    folder = Path(out) if out else loaded.run / "export"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise runs.WriteError(folder, e) from None
    # one export at a time into a folder; released at exit
    held = runs.lock(folder, "exported into by", folder.with_name(f".{folder.name}.lock"))
    try:
        return _export(loaded, folder, formats, calibration)
    finally:
        held.close()


def _export(loaded, folder: Path, formats, calibration: int) -> Path:
    module = deployed(loaded.model, loaded.normalization)
    images, qat = None, loaded.config.qat
    if qat and "tflite-int8-per-tensor" in formats and qat != "per-tensor":
        raise runs.ConfigError(f"--format tflite-int8-per-tensor: {loaded.run} was trained with --qat {qat}, and "
                               f"its int8 file (tflite-int8) has the scales it learned; for per-tensor ones "
                               f"fine-tune with --qat per-tensor.")
    if any(f.startswith("tflite-int8") for f in formats) and not qat:
        images = calibration_images(loaded.data.train_images, calibration)
    for fmt in formats:
        path = folder / FILES[fmt]
        if fmt == "savedmodel":
            save_savedmodel(module, path)
        else:
            try:
                with quiet_stderr():  # the converter's own log lines; shown if it fails
                    flatbuffer = to_tflite(module, fmt, images)
            except runs.RunError as e:
                raise runs.RunError(f"{path}: {e}; nothing was written.") from None
            except Exception as e:  # noqa: BLE001 - the converter raises many kinds; none leaves a file
                raise runs.RunError(f"{path}: could not be converted ({errors.first_line(e)}); nothing was "
                                    f"written.") from None
            runs.atomic_write(path, lambda tmp: tmp.write_bytes(flatbuffer))
        print(f"wrote {path} ({size(path) / 1e6:.2f} MB)")
    write_manifest(folder, loaded, formats, len(images) if images is not None else 0)
    print(f"evaluate with: python -m lowlevel.evaluate --model {folder / FILES[formats[-1]]}")
    return folder


def save_savedmodel(module, path: Path) -> None:
    """tf.saved_model.save into a temporary folder beside `path`, then swap it in: a failure at any step
    leaves the previous export (or none) in place, whole, and no temporary folder."""
    from lowlevel._tf import tf

    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    for leftover in (tmp, old):  # a killed export's (the folder's lock keeps out a running one)
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        with quiet_stderr():
            tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        if path.exists():
            path.rename(old)
        try:
            tmp.rename(path)
        except OSError:
            if old.exists():
                old.rename(path)  # put the previous export back
            raise
    except (OSError, tf.errors.OpError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise runs.WriteError(path, e) from None
    shutil.rmtree(old, ignore_errors=True)


def write_manifest(folder: Path, loaded, formats, calibration: int) -> None:
    """export.json: what `evaluate --model` needs to find the test images, and where the files came from;
    formats exported earlier into the same folder stay listed."""
    try:
        manifest = read_manifest(folder) or {}
    except runs.RunError:  # damaged: rewritten from what is on disk
        manifest = {"files": {f: name for f, name in FILES.items() if (folder / name).exists()}}
    cfg = loaded.config
    mean, std = loaded.normalization.values()
    manifest.update(run=str(loaded.run), checkpoint=str(loaded.prefix), weights=loaded.weights, model=cfg.model,
                    alpha=cfg.alpha,
                    dataset=cfg.dataset, data=cfg.data, split_seed=cfg.split_seed,
                    input_shape=list(loaded.model.input_shape), label_names=list(loaded.data.label_names),
                    normalization={"mean": mean, "std": std})
    manifest.setdefault("files", {}).update({f: FILES[f] for f in formats})
    if calibration:
        manifest.update(calibration_images=calibration, calibration_seed=CALIBRATION_SEED)
    if cfg.qat and any(f.startswith("tflite-int8") for f in formats):
        manifest.update(int8_ranges=f"learned (--qat {cfg.qat})")
    runs.write_text(folder / "export.json", json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
