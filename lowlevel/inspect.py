"""`python -m lowlevel.inspect`: look inside a trained run, layer by layer.

    python -m lowlevel.inspect --checkpoint checkpoints/RUN [--best] [--images N] [--image K] [--block B]
    python -m lowlevel.inspect --checkpoint checkpoints/RUN --graph

Restores the run (lowlevel.runs.load), passes N test images (default 1,000) through the
model in inference mode with every layer tapped (`model(x, taps="pre")`), and writes into
checkpoints/RUN/inspect-<step>/:

  layers.csv   one row per convolution (27 for MobileNet v1, 14 for its standard variant):
    shape                  one image's output, H x W x C
    act_mean, act_std      of the output after batch norm and relu6
    zero_fraction          outputs at 0 (relu6 cut them), clipped_fraction: outputs at 6
    dead_channels          channels never above 0 on any of the N images, at any position
    always_clipped         channels at 6 everywhere
    gamma_min/median/max   of |gamma|, the batch norm's learned scale
    bn_mean_shift          RMS over channels of (mean_N - moving_mean) / sqrt(moving_variance + eps),
                           the N images' batch-norm input against the moving statistics: a train/test skew
    bn_var_ratio           median over channels of var_N / moving_variance
    kernel_norm            Frobenius norm of the kernel
    weight_range_ratio     max over output channels of max|W_c| / its median, W the kernel with the batch norm
                           folded in (BatchNorm.fold): large values make per-tensor int8 quantization lose
                           accuracy (Sheng et al. 2018, "A Quantization-Friendly Separable Convolution for MobileNets")
    grad_norm              norm of the loss's gradient with respect to the kernel, one batch of 100
                           images, inference mode (the batch norms use their moving statistics)
  blocks.csv   for the later networks, one row per block with a squeeze-and-excitation gate or a
               residual connection (Blocks): the gates' mean and spread, the residual branch's share
  quantization.csv  (every network but Inception-v2, whose batch norms cannot fold) a row per convolution
               and one for the logits: SQNR of the folded weights rounded to int8 per channel and per tensor,
               and of the layer's output in the int8 network against float (quantize_errors.layer_errors:
               columns, activation ranges)
  PNGs         stem_filters, depthwise_filters (block B), feature_maps (test image K), histograms,
               dead_and_ranges, batch_norms

and prints a short summary.  With --graph, it instead traces the compiled training step into
inspect-<step>/graph/ for TensorBoard and prints the op counts, by type, of the training step and
of inference.  A missing, damaged or incompatible checkpoint is one sentence, exit status 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lowlevel import errors, runs
from lowlevel.config import ConfigError, Parser

HIST_BINS = np.linspace(0.0, 6.0, 61)  # relu6 outputs lie in [0, 6]


def parser() -> Parser:
    p = Parser(prog="python -m lowlevel.inspect", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run folder, or one checkpoint prefix (.../ckpt-N)")
    p.add_argument("--best", action="store_true", help="with a run folder: its best checkpoint, not the latest")
    p.add_argument("--data", default="", help="cifar-10-batches-py or its parent (default: the run's --data)")
    p.add_argument("--images", type=int, default=1000, help="test images to pass through (default 1000)")
    p.add_argument("--image", type=int, default=0, help="the test image whose feature maps are drawn (default 0)")
    p.add_argument("--block", type=int, default=0, help="which depthwise convolution's filters are drawn, counting "
                                                        "from 0 (default 0: MobileNet's blocks[0])")
    p.add_argument("--graph", action="store_true", help="instead: write the compiled training step's graph for "
                                                        "TensorBoard and print the op counts of training and inference")
    return p


# ---------------------------------------------------------------- the statistics

class Accumulator:
    """Statistics of one layer's output and batch-norm input, accumulated over batches.

    output [B, H, W, C] after relu6; bn_input [B, H, W, C] before the batch norm.
    """

    def __init__(self, channels: int):
        self.n = 0  # values per channel seen
        self.sum = self.sum_sq = 0.0  # over all values, for the mean and std
        self.zeros = self.sixes = 0
        self.channel_max, self.channel_min = np.full(channels, -np.inf), np.full(channels, np.inf)
        self.in_sum, self.in_sum_sq = np.zeros(channels), np.zeros(channels)  # of the batch norm's input
        self.histogram = np.zeros(len(HIST_BINS) - 1, np.int64)

    def add(self, output: np.ndarray, bn_input: np.ndarray) -> None:
        out = output.reshape(-1, output.shape[-1]).astype(np.float64)  # [B*H*W, C]
        z = bn_input.reshape(-1, bn_input.shape[-1]).astype(np.float64)
        self.n += len(out)
        self.sum += out.sum()
        self.sum_sq += np.square(out).sum()
        self.zeros += int((out <= 0).sum())
        self.sixes += int((out >= 6).sum())
        self.channel_max = np.maximum(self.channel_max, out.max(0))
        self.channel_min = np.minimum(self.channel_min, out.min(0))
        self.in_sum += z.sum(0)
        self.in_sum_sq += np.square(z).sum(0)
        self.histogram += np.histogram(np.clip(out, 0, 6), HIST_BINS)[0]

    def row(self) -> dict:
        values = self.n * len(self.channel_max)
        mean = self.sum / values
        return {"act_mean": mean, "act_std": float(np.sqrt(max(self.sum_sq / values - mean ** 2, 0.0))),
                "zero_fraction": self.zeros / values, "clipped_fraction": self.sixes / values,
                "dead_channels": dead_channels(self.channel_max), "always_clipped": int((self.channel_min >= 6).sum())}

    def input_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and (biased) variance of the batch norm's input over the N images: [C] each."""
        mean = self.in_sum / self.n
        return mean, np.maximum(self.in_sum_sq / self.n - mean ** 2, 0.0)


class Blocks:
    """Inside the later networks' blocks (nets/mobilenet.py's tap_block), over the images passed:

      gate_mean, gate_std   of a squeeze-and-excitation block's gates g [B, 1, 1, C] (each in [0, 1])
      gates_off, gates_on   the share of gates below 0.1 (a channel switched off for that image) and
                            above 0.9 (passed whole)
      residual_share        mean over the images of |F(x)| / (|x| + |F(x)|) for a residual block's
                            output x + F(x), |.| the L2 norm over H, W, C: near 0 the block passes its
                            input on almost unchanged, near 1 its branch drowns the shortcut
    """

    def __init__(self):
        self.gates: dict[str, list[np.ndarray]] = {}  # block -> [B, C] per batch
        self.shares: dict[str, list[np.ndarray]] = {}  # block -> [B] per batch

    def add(self, taps: dict) -> None:
        for key, value in taps.items():
            block, _, what = key.partition(":")
            if what == "gate":
                self.gates.setdefault(block, []).append(value.numpy().reshape(len(value), -1))
            elif what == "branch":
                f, x = (np.sqrt(np.sum(np.square(t.numpy().astype(np.float64)), axis=(1, 2, 3)))
                        for t in (value, taps[f"{block}:shortcut"]))
                self.shares.setdefault(block, []).append(f / np.maximum(x + f, 1e-30))

    def table(self):
        """blocks.csv's rows, in the order of the blocks (empty for networks without either)."""
        import pandas as pd

        rows, nan = [], float("nan")
        for block in dict.fromkeys([*self.gates, *self.shares]):
            g = np.concatenate(self.gates[block]) if block in self.gates else None
            share = np.concatenate(self.shares[block]).mean() if block in self.shares else nan
            rows.append({"block": block, "gate_mean": nan if g is None else g.mean(),
                         "gate_std": nan if g is None else g.std(), "gates_off": nan if g is None else np.mean(g < 0.1),
                         "gates_on": nan if g is None else np.mean(g > 0.9), "residual_share": share})
        return pd.DataFrame(rows, columns=["block", "gate_mean", "gate_std", "gates_off", "gates_on",
                                           "residual_share"])


def dead_channels(channel_max: np.ndarray) -> int:
    """Channels whose output was never above 0: relu6 cut every value, so they pass nothing on."""
    return int((np.asarray(channel_max) <= 0).sum())


def weight_range_ratio(kernel: np.ndarray) -> float:
    """max over output channels c of r_c / median_c r_c, r_c = max |W[..., c]| (the last axis; a
    depthwise kernel [k, k, C, 1] is reshaped to [k, k, C] first)."""
    w = np.asarray(kernel)
    if w.ndim == 4 and w.shape[-1] == 1:
        w = w[..., 0]
    r = np.abs(w.reshape(-1, w.shape[-1])).max(0)  # [C_out]
    median = np.median(r)
    return float(r.max() / median) if median > 0 else float("inf")


def skew(mean: np.ndarray, var: np.ndarray, bn, folded: bool = False) -> tuple[float, float]:
    """(RMS of (mean - moving_mean) / sqrt(moving_variance + eps), median of var / moving_variance).
    folded (a --qat run, the batch norm in the kernel): the moments are of s x, s = gamma / sqrt(m_var + eps)."""
    moving_mean, moving_var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    if folded:
        s = bn.gamma.numpy() / np.sqrt(moving_var + bn.epsilon)
        mean, var = np.divide(mean, s, where=s != 0, out=np.zeros_like(mean)), var / np.maximum(s * s, 1e-24)
    shift = (mean - moving_mean) / np.sqrt(moving_var + bn.epsilon)
    return float(np.sqrt(np.mean(np.square(shift)))), float(np.median(var / np.maximum(moving_var, 1e-12)))


# ---------------------------------------------------------------- the pass

def inspect(checkpoint: str, best: bool = False, data_path: str = "", images: int = 1000, image: int = 0,
            block: int = 0, batch: int = 100) -> Path:
    """Write layers.csv and the PNGs for a run; return the folder they are in."""
    loaded = runs.load(checkpoint, best, data_path)
    if loaded.note:
        print(loaded.note)
    n = min(images, len(loaded.data.test_images))
    depthwise = check_choices(loaded.model, images, image, block, n)
    out = loaded.run / f"inspect-best-{runs.step_of(loaded.prefix)}" if loaded.prefix.parent.name == "best" else \
        loaded.prefix.parent / f"inspect-{runs.step_of(loaded.prefix)}"
    runs.check_writable(out.parent)  # before the work
    stats, example, blocks = pass_images(loaded, n, image, batch)
    table = layer_table(loaded, stats, example, batch, n)
    quantized = quantization_table(loaded, n, batch)
    try:
        out.mkdir(exist_ok=True)
    except OSError as e:
        raise runs.WriteError(out, e) from None
    runs.write_text(out / "layers.csv", table.to_csv(index=False))
    if len(quantized):
        runs.write_text(out / "quantization.csv", quantized.to_csv(index=False))
    inside = blocks.table()
    if len(inside):
        runs.write_text(out / "blocks.csv", inside.to_csv(index=False))
    draw(loaded, out, stats, example, table, depthwise[block] if depthwise else None, image, n)
    summarize(table, n, out, inside, quantized)
    ops = op_counts(loaded.model)
    print("inference graph: " + ", ".join(f"{count} {op}" for op, count in ops.items()
                                          if op in ("Conv2D", "DepthwiseConv2dNative", "BiasAdd", "Relu6", "MatMul")))
    return out


def check_choices(model, images: int, image: int, block: int, n: int) -> list:
    """Refuse --images, --image and --block values the run cannot show; returns the depthwise
    convolutions as (name, layer)."""
    from lowlevel.layers import DepthwiseConv2D

    if images < 1:
        raise ConfigError(f"--images must be at least 1, not {images}.")
    if not 0 <= image < n:
        raise ConfigError(f"--image must be between 0 and {n - 1} (one of the {n} images passed), not {image}.")
    depthwise = [(name, conv) for name, conv, _ in model.conv_layers() if isinstance(conv, DepthwiseConv2D)]
    if depthwise and not 0 <= block < len(depthwise) or not depthwise and block:
        raise ConfigError(f"--block must be between 0 and {len(depthwise) - 1} (this network's depthwise "
                          f"convolutions), not {block}." if depthwise else
                          f"--block {block}: this network has no depthwise convolution to draw.")
    return depthwise


def pass_images(loaded, n: int, image: int, batch: int) -> tuple[dict, dict, Blocks]:
    """The first n test images through the model: an Accumulator per convolution, every layer's
    output [H, W, C] for test image `image`, and what the blocks hold inside (Blocks)."""
    from lowlevel._tf import tf

    model, data = loaded.model, loaded.data
    layers = model.conv_layers()
    tapped = lambda x: model(x, training=False, taps="pre")  # noqa: E731
    tapped = tf.function(tapped, autograph=False) if n > batch else tapped  # one batch: eager, cheaper than a trace
    stats = {name: Accumulator(conv.out_channels) for name, conv, _ in layers}
    example, blocks = None, Blocks()
    for start in range(0, n, batch):
        x = loaded.normalization(data.test_images[start:min(start + batch, n)])
        taps = tapped(x)
        for name, _, _ in layers:
            stats[name].add(taps[name].numpy(), taps.get(f"{name}:bn_input", taps[name]).numpy())
        blocks.add(taps)
        if start <= image < start + batch:
            example = {name: taps[name][image - start].numpy() for name, _, _ in layers}  # [H, W, C] each
    return stats, example, blocks


def quantization_table(loaded, n: int, batch: int):
    """quantization.csv (quantize_errors.layer_errors) over the first n test images."""
    import pandas as pd
    from lowlevel import quantize_errors
    x = [loaded.normalization(loaded.data.test_images[s:min(s + batch, n)]) for s in range(0, n, batch)]
    return pd.DataFrame(quantize_errors.layer_errors(loaded.model, x))


def layer_table(loaded, stats: dict, example: dict, batch: int, n: int):
    """layers.csv: a row per convolution (activations, batch-norm skew, folded weight range, gradient norm)."""
    import pandas as pd

    from lowlevel._tf import tf
    from lowlevel.layers import DepthwiseConv2D
    from lowlevel.step import cross_entropy

    model, data = loaded.model, loaded.data
    layers = model.conv_layers()
    x = loaded.normalization(data.test_images[:min(batch, n)])
    y = tf.constant(data.test_labels[:min(batch, n)], tf.int32)
    with tf.GradientTape() as tape:
        loss = cross_entropy(model(x, training=False), y, loaded.config.label_smoothing)
    grads = tape.gradient(loss, [conv.kernel for _, conv, _ in layers])
    rows, nan = [], float("nan")
    for (name, conv, bn), g in zip(layers, grads):
        kernel = conv.kernel
        if bn is not None and model.folds_batch_norm:
            kernel, _ = bn.fold(conv.kernel, depthwise=isinstance(conv, DepthwiseConv2D))
        row = {"gamma_min": nan, "gamma_median": nan, "gamma_max": nan, "bn_mean_shift": nan, "bn_var_ratio": nan}
        if bn is not None:
            gamma = np.abs(bn.gamma.numpy())
            shift, ratio = skew(*stats[name].input_moments(), bn, getattr(conv, "quantization", None) is not None)
            row = {"gamma_min": gamma.min(), "gamma_median": float(np.median(gamma)), "gamma_max": gamma.max(),
                   "bn_mean_shift": shift, "bn_var_ratio": ratio}
        h, w, c = example[name].shape
        rows.append({"layer": name, "op": type(conv).__name__, "shape": f"{h}x{w}x{c}", **stats[name].row(), **row,
                     "kernel_norm": float(tf.norm(conv.kernel)), "weight_range_ratio": weight_range_ratio(kernel.numpy()),
                     "grad_norm": float(tf.norm(g))})
    return pd.DataFrame(rows)


def draw(loaded, out: Path, stats: dict, example: dict, table, depthwise, image: int, n: int) -> None:
    """The PNGs: stem and depthwise filters, feature maps, histograms, dead channels and ranges, batch norms."""
    from lowlevel import figures

    data, layers = loaded.data, loaded.model.conv_layers()
    title = f"{loaded.run.name} {loaded.prefix.name}, {n} test images"
    first, first_conv, _ = layers[0]
    figures.stem_filters(first_conv.kernel.numpy(), out / "stem_filters.png", first)
    if depthwise is not None:  # a standard network has no depthwise filters to draw
        figures.depthwise_filters(depthwise[1].kernel.numpy(), out / "depthwise_filters.png", depthwise[0])
    figures.feature_maps(example, data.test_images[image], out / "feature_maps.png",
                       f"test image {image} ({data.label_names[data.test_labels[image]]})")
    figures.histograms({name: stats[name].histogram for name, _, _ in layers}, HIST_BINS, out / "histograms.png", title)
    figures.dead_and_ranges(table, out / "dead_and_ranges.png", title)
    moving = {name: (bn.moving_mean.numpy(), bn.moving_variance.numpy()) for name, _, bn in layers if bn is not None}
    if moving:  # (networks without batch norms have none to draw)
        figures.batch_norms(moving, out / "batch_norms.png", title)


def op_counts(model, batch: int = 1) -> dict[str, int]:
    """How many ops of each type the traced inference function (`model.inference`, batch norms folded)
    is made of, most frequent first: the raw TensorFlow ops the network is built from."""
    from lowlevel._tf import tf

    inference = tf.function(model.inference, autograph=False)
    return count_ops(inference.get_concrete_function(tf.TensorSpec([batch, *model.input_shape])))


def count_ops(concrete) -> dict[str, int]:
    """Op types of a traced function, its nested functions (loop bodies, conditions) included."""
    import collections
    graph = concrete.graph.as_graph_def()
    counts = collections.Counter(node.op for node in graph.node)
    for function in graph.library.function:
        counts.update(node.op for node in function.node_def)
    return dict(counts.most_common())


def graph(checkpoint: str, best: bool = False, data_path: str = "") -> Path:
    """Trace one call of the run's compiled training step into TensorBoard's graph view
    (inspect-<step>/graph/), and print the op counts of the training step and of inference."""
    from lowlevel import pipeline
    from lowlevel._tf import tf
    from lowlevel.step import Trainer

    loaded = runs.load(checkpoint, best, data_path)
    cfg, data = loaded.config, loaded.data
    n = 2 * cfg.batch_size  # two batches: the graph does not depend on the data's size
    batches = pipeline.Batches(data.train_images[:n], data.train_labels[:n], loaded.normalization, cfg.batch_size,
                               cfg.seed, augment=cfg.augment, cutout=cfg.cutout, cutmix=cfg.cutmix, flip=cfg.flip)
    trainer = Trainer(cfg, batches, num_classes=len(data.label_names))
    out = loaded.run / f"inspect-{runs.step_of(loaded.prefix)}" / "graph"
    try:
        writer = tf.summary.create_file_writer(str(out))
        tf.summary.trace_on(graph=True)
        trainer.train_steps(batches.order(0), tf.constant(1))
        with writer.as_default():
            tf.summary.trace_export("train_steps", step=0)
        writer.close()
    except (OSError, tf.errors.OpError) as e:
        raise runs.WriteError(out, e) from None
    main_ops = ("Conv2D", "DepthwiseConv2dNative", "FusedBatchNormV3", "Relu6", "MatMul", "Conv2DBackpropFilter",
                "Conv2DBackpropInput", "DepthwiseConv2dNativeBackpropFilter", "DepthwiseConv2dNativeBackpropInput",
                "FusedBatchNormGradV3", "Relu6Grad", "BiasAdd", "AssignVariableOp", "AssignSubVariableOp")
    for what, ops in (("training step (one call, its loop body included)",
                       count_ops(trainer.train_steps.get_concrete_function(batches.order(0), tf.constant(1)))),
                      ("inference (batch norms folded)", op_counts(loaded.model))):
        shown = ", ".join(f"{count} {op}" for op, count in ops.items() if op in main_ops)
        print(f"{what}: {sum(ops.values())} ops; {shown}")
    print(f"wrote the training step's graph to {out} (tensorboard --logdir {out}, Graphs tab)")
    return out


def summarize(table, n: int, out: Path, inside, quantized) -> None:
    dead = table.dead_channels.sum()
    worst = table.loc[table.weight_range_ratio.idxmax()]
    skewed = table.loc[table.bn_mean_shift.idxmax()] if table.bn_mean_shift.notna().any() else None
    print(f"{len(table)} convolutions, {n} test images: {dead} dead channels of "
          f"{sum(int(s.split('x')[2]) for s in table['shape'])}"
          + (f" (most in {table.loc[table.dead_channels.idxmax()].layer})" if dead else ""))
    print(f"widest folded weight range: {worst.layer}, max channel {worst.weight_range_ratio:.1f}x the median")
    if skewed is not None:
        print(f"largest train/test batch-norm shift: {skewed.layer}, {skewed.bn_mean_shift:.2f} moving standard "
              f"deviations")
    if inside.gate_mean.notna().any():
        gated = inside[inside.gate_mean.notna()]
        print(f"squeeze-and-excitation gates ({len(gated)} blocks): mean {gated.gate_mean.mean():.2f}, "
              f"{gated.gates_off.mean():.0%} below 0.1, {gated.gates_on.mean():.0%} above 0.9")
    if inside.residual_share.notna().any():
        low = inside.loc[inside.residual_share.idxmin()]
        print(f"residual branches ({inside.residual_share.notna().sum()} blocks): median share "
              f"{inside.residual_share.median():.2f} of |x| + |F(x)|, lowest {low.block} ({low.residual_share:.2f})")
    if len(quantized):
        logits, weak = quantized.iloc[-1], quantized.loc[quantized.iloc[:-1].output_sqnr_tensor_db.idxmin()]
        print(f"int8 logits against float: {logits.output_sqnr_channel_db:.1f} dB SQNR with per-channel weights, "
              f"{logits.output_sqnr_tensor_db:.1f} dB per tensor; lowest per tensor: {weak.layer} "
              f"({weak.output_sqnr_tensor_db:.1f} dB; its folded weights {weak.weight_sqnr_tensor_db:.1f} dB)")
    csvs = [name for name, rows in (("blocks.csv", inside), ("quantization.csv", quantized)) if len(rows)]
    print(f"wrote {out}/{', '.join(['layers.csv', *csvs])} and {len(list(out.glob('*.png')))} PNGs")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.graph:
        return errors.as_command("python -m lowlevel.inspect", lambda: graph(args.checkpoint, args.best, args.data))
    return errors.as_command("python -m lowlevel.inspect", lambda: inspect(args.checkpoint, args.best, args.data,
                                                                         args.images, args.image, args.block))


if __name__ == "__main__":
    sys.exit(main())
