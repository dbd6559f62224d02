"""lowlevel: MobileNet v1 on CIFAR-10 from raw TensorFlow 2 ops, and the networks it is compared with.

One module per concept (see README.md):

    datasets  a reader per data set (cifar10, fashion_mnist, flowers17): exact checks, safe downloads
    pipeline  uint8 images -> normalized, augmented batches, as TF ops
    layers    Conv2D, DepthwiseConv2D, SeparableConv2D, BatchNorm, Dense, pools as tf.Modules and functions
    nets      the networks by name: mobilenet (MobileNetV1, the architecture as a table), stack (plain
              tables), fashion, vgg, alexnet, inception
    summary   per-layer parameters and multiply-adds, counted from shapes
    optim     hand-written SGD and Adam, weight decay, learning-rate schedules
    config    the training configuration: defaults, CLI flags and config.json
    runs      the run folder: one writer, whole-file writes, verified checkpoints, loading a run
    train     python -m lowlevel.train: the compiled step, checkpoints, resume
    evaluate  python -m lowlevel.evaluate: test accuracy, per class, confusion matrix
    inspect   python -m lowlevel.inspect: per-layer statistics and pictures of a trained run
    plots     learning curves, confusion matrix, inspect's figures (matplotlib)
    bench     python -m lowlevel.bench: throughput against Keras (imports Keras)
    compare   python -m lowlevel.compare: separable vs standard networks, trained and measured
    data      python -m lowlevel.data: download or check a data set

This file imports nothing, so `python -m lowlevel.data` starts without TensorFlow.
"""
__version__ = "0.1.0"
