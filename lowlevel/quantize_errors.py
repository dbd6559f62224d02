"""Per-layer quantization error, lowlevel.inspect's quantization.csv: how far each layer's output in the
int8 network (lowlevel/quantize.py's simulation) lies from the float network's, in dB of SQNR."""
from __future__ import annotations

import numpy as np

from lowlevel._tf import tf

from lowlevel.layers import DepthwiseConv2D
from lowlevel.quantize import Quantized, fake_quant_weights, unfoldable


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """The signal-to-quantization-noise ratio 10 log10(sum r^2 / sum (r - a)^2), in dB (inf: no error)."""
    r = np.asarray(reference, np.float64)
    noise = np.sum((r - np.asarray(approximation, np.float64)) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(r ** 2) / noise))


# quantization.csv's output columns: what the network rounds, (weights, activations, scheme)
ROUNDED = {"output_sqnr_channel_db": (True, True, "per-channel"), "output_sqnr_tensor_db": (True, True, "per-tensor"),
           "output_sqnr_activations_db": (False, True, "per-channel")}


def layer_errors(model, batches: list, compiled: bool | None = None) -> list[dict]:
    """lowlevel.inspect's quantization.csv: a row per convolution (and one for the logits) of

        weight_sqnr_channel_db, _tensor_db   SQNR of its folded weights W' rounded per channel / per tensor
        output_sqnr_channel_db, _tensor_db   SQNR of its output (after the activation) in the int8 network
                                             against the float one, the rounding of every earlier layer included
        output_sqnr_activations_db           the same with the activations alone rounded (float weights)
        input_lo, input_hi                   the range its input is rounded to

    over `batches` (normalized images [B, H, W, C]).  `model`: a --qat run's (Quantized: its learned
    ranges), or a float network, whose activation ranges are the min and max over the batches; none for a
    network Quantized refuses (`unfoldable`).  `compiled`: each of the five passes traced once (tf.function)
    or run eagerly; by default traced for more than one batch, where the trace pays for itself (for one
    batch it costs more than the pass)."""
    if unfoldable(model):
        return []
    traced = len(batches) > 1 if compiled is None else compiled
    as_pass = (lambda f: tf.function(f, autograph=False)) if traced else (lambda f: f)
    q = model if isinstance(model, Quantized) else Quantized(model, "per-channel")
    try:
        if q is not model:
            calibrate = as_pass(q.calibrate)
            for x in batches:
                calibrate(x)
        rows = []
        for name, conv, bn in q.conv_layers():
            depthwise = isinstance(conv, DepthwiseConv2D)
            folded = conv.kernel if bn is None else bn.fold(conv.kernel, depthwise=depthwise)[0]
            rows.append({"layer": name, **{f"weight_sqnr_{s}_db": sqnr_db(folded, fake_quant_weights(
                folded, s == "channel", depthwise)) for s in ("channel", "tensor")},
                "input_lo": float(conv.quantization.input.lo.numpy()),
                "input_hi": float(conv.quantization.input.hi.numpy())})
        rows.append({"layer": "logits", "input_lo": float(q.output.lo.numpy()), "input_hi": float(q.output.hi.numpy())})
        settings = {**ROUNDED, "float": (False, False, q.scheme)}
        tapped = {column: as_pass(_tapped(q, *setting)) for column, setting in settings.items()}
        signal, noise = np.zeros(len(rows)), {column: np.zeros(len(rows)) for column in ROUNDED}
        for x in batches:
            reference = tapped["float"](x)
            signal += [np.sum(np.square(reference[r["layer"]].numpy(), dtype=np.float64)) for r in rows]
            for column in ROUNDED:
                out = tapped[column](x)
                noise[column] += [np.sum(np.square(reference[r["layer"]].numpy() - out[r["layer"]].numpy(),
                                                   dtype=np.float64)) for r in rows]
        for i, row in enumerate(rows):
            for column in ROUNDED:
                n = noise[column][i]
                row[column] = float("inf") if n == 0 else float(10 * np.log10(signal[i] / n))
        return rows
    finally:
        if q is not model:
            q.detach()


def _tapped(q: Quantized, weights: bool, activations: bool, scheme: str):
    """q(x, taps=True) with these switches (compiled: read as it is traced)."""
    def run(x):
        saved = q.weights, q.activations, q.scheme
        q.weights, q.activations, q.scheme = weights, activations, scheme
        try:
            return q(x, taps=True)
        finally:
            q.weights, q.activations, q.scheme = saved
    return run
