"""Exported models, read back: export.json, and an exported SavedModel or LiteRT file opened to predict.

`python -m lowlevel.export` writes them; `evaluate --model` and `bench exported` read them here.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lowlevel import errors


# export.json's keys that readers use, and their types
MANIFEST = {"files": dict, "dataset": str, "data": str, "split_seed": int, "label_names": list, "input_shape": list}


def read_manifest(folder: Path) -> dict | None:
    """The export.json of an export folder, or None if there is none; RunError if it is damaged."""
    path = Path(folder) / "export.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise errors.RunError(f"{path}: cannot be read ({errors.first_line(e)}); export again with "
                            f"python -m lowlevel.export.") from None
    wrong = [k for k, kind in MANIFEST.items() if not isinstance(manifest, dict) or
             not isinstance(manifest.get(k, kind()), kind) or isinstance(manifest.get(k), bool)]
    if not wrong and not all(isinstance(k, str) and isinstance(v, str) for k, v in manifest.get("files", {}).items()):
        wrong = ["files"]
    if wrong:
        raise errors.RunError(f"{path}: is damaged ({'not a JSON object' if not isinstance(manifest, dict) else wrong[0]} "
                            f"is not what python -m lowlevel.export writes); export again.")
    return manifest


def size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---------------------------------------------------------------- running an exported model

def interpreter(model, threads: int | None = None):
    """A LiteRT interpreter for a flatbuffer (bytes) or a .tflite path: ai-edge-litert's if installed,
    else TensorFlow's deprecated tf.lite.Interpreter."""
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import warnings

        from lowlevel._tf import tf
        with warnings.catch_warnings():  # its deprecation warning: litert_notice() says it in one line
            warnings.simplefilter("ignore")
            return tf.lite.Interpreter(**source, num_threads=threads)
    return Interpreter(**source, num_threads=threads)


def litert_notice() -> str:
    """A one-line notice when ai-edge-litert is missing, else ''."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        return ""
    except ImportError:
        return ('note: ai-edge-litert is not installed (pip install -e ".[export]"); using tf.lite.Interpreter, '
                'which TensorFlow deprecates in its favour.')


class Exported:
    """An exported model, opened: `predict(images uint8 [B, H, W, C]) -> probabilities float32 [B, K]`.

    path: a SavedModel folder or a .tflite file; threads: the LiteRT interpreter's (a SavedModel uses
    TensorFlow's, set for the process).  A file that is neither is a RunError.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if (self.path / "saved_model.pb").is_file():
            from lowlevel._tf import tf
            try:
                self._fn = tf.saved_model.load(str(self.path)).signatures["serving_default"]
            except (KeyError, ValueError, OSError, tf.errors.OpError) as e:
                raise errors.RunError(f"{self.path}: is not a SavedModel with a serving_default signature "
                                    f"({errors.first_line(e)}); export it again with python -m lowlevel.export.") from None
            spec = self._fn.structured_input_signature[1]["images"]
            self.kind, self.input_shape = "savedmodel", tuple(spec.shape[1:])
        elif self.path.suffix == ".tflite" and self.path.is_file():
            try:
                self._runner = interpreter(self.path, threads).get_signature_runner("serving_default")
                detail = self._runner.get_input_details()["images"]
            except (ValueError, RuntimeError, KeyError) as e:
                raise errors.RunError(f"{self.path}: is not a LiteRT model with a serving_default signature taking "
                                    f"images ({errors.first_line(e)}); export it again with "
                                    f"python -m lowlevel.export.") from None
            self.kind, self.input_shape = "tflite", tuple(int(d) for d in detail["shape_signature"][1:])
        else:
            raise errors.RunError(f"{self.path}: is neither a SavedModel folder (no saved_model.pb) nor a .tflite "
                                f"file; give a file that python -m lowlevel.export wrote.")

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, C] -> probabilities float32 [B, K]."""
        if self.kind == "savedmodel":
            return self._fn(images=images)["probabilities"].numpy()
        return self._runner(images=images)["probabilities"]
