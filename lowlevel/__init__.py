"""lowlevel: MobileNet v1 on CIFAR-10 from raw TensorFlow 2 ops.

One module per concept (see README.md):

    cifar10   read and download the CIFAR-10 python batches, safely (no TensorFlow)
    pipeline  uint8 images -> normalized, augmented batches, as TF ops
    layers    Conv2D, DepthwiseConv2D, BatchNorm, Dense as tf.Modules
    mobilenet MobileNetV1, the architecture as a table
    summary   per-layer parameters and multiply-adds, counted from shapes
    optim     hand-written SGD and Adam, weight decay, learning-rate schedules
    config    the training configuration: defaults, CLI flags and config.json
    runs      the run folder: one writer, whole-file writes, verified checkpoints, loading a run
    train     python -m lowlevel.train: the compiled step, checkpoints, resume
    evaluate  python -m lowlevel.evaluate: test accuracy, per class, confusion matrix
    inspect   python -m lowlevel.inspect: per-layer statistics and pictures of a trained run
    plots     learning curves, confusion matrix, inspect's figures (matplotlib)
    bench     python -m lowlevel.bench: throughput against Keras (imports Keras)
    data      python -m lowlevel.data: download or check CIFAR-10

This file imports nothing, so `python -m lowlevel.data` starts without TensorFlow.
"""
__version__ = "0.1.0"
