"""The raw-op vocabulary every network is built from: `tf.Module` layers and small functions.

Every layer is told its shapes in the constructor and creates its variables
there, so a checkpoint can be restored into a model that has never been called.
Tensors are NHWC: [B, H, W, C], the layout TensorFlow's CPU depthwise
convolution needs.

Initializers (He et al. 2015, "Delving Deep into Rectifiers"): a convolution
followed by a ReLU keeps the variance of its activations when its weights have

    Var(w) = 2 / fan_in,   w ~ Normal(0, sqrt(2 / fan_in))

where fan_in counts the inputs one output sums over:
    regular k x k convolution   fan_in = k * k * C_in
    depthwise k x k             fan_in = k * k      (each channel sees only itself)
    pointwise 1 x 1             fan_in = C_in
A dense layer before softmax (a classifier) or SELU uses Var(w) = 1 / fan_in
(LeCun; `Dense(gain=1)`, the default), one before a ReLU gain 2.  Biases start at zero.

Mixed precision (`compute_dtype`): Conv2D can multiply in bfloat16 or float16
while its variables, its input and output, and every other layer stay float32.
It casts x and W down, convolves and casts the result back up; the casts'
gradients cast the other way, so the kernel gets a float32 gradient.  How the
sums round is the kernel's business: on this CPU (oneDNN for bfloat16, Eigen
for float16) an output is off by about one 16-bit step at the scale of the
largest outputs, not of its own size, so the sums are rounded along the way
(tests/test_layers.py bounds it).  Only Conv2D, because only it gains: on this
AVX512-BF16 CPU a bfloat16 1x1 convolution's forward and backward run about
1.7x faster, while bfloat16 depthwise backward and relu6 run slower than
float32 (README, "Mixed precision"), and the classifier is too small to matter.
"""
from __future__ import annotations

import math

from lowlevel._tf import tf

from lowlevel import gradients


def _he_normal(shape, fan_in: int, gain: float = 2.0) -> tf.Tensor:
    return tf.random.normal(shape, stddev=math.sqrt(gain / fan_in))


class Conv2D(tf.Module):
    """y = conv(x, W) + b with SAME padding.

    x [B, H, W, C_in] -> y [B, ceil(H / s), ceil(W / s), C_out];
    W [k, k, C_in, C_out]; b [C_out] (only with use_bias).
    A 1x1 kernel makes it the pointwise convolution of MobileNet.
    compute_dtype: the dtype the convolution multiplies in (None: x's); y has x's dtype.
    gain: the initial Var(w) * fan_in (2: He, before a ReLU; 1: LeCun, before SELU).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 use_bias: bool = False, compute_dtype=None, gain: float = 2.0, name: str | None = None):
        super().__init__(name=name)
        self.in_channels, self.out_channels, self.compute_dtype = in_channels, out_channels, compute_dtype
        self.kernel_size, self.stride = kernel_size, stride
        shape = [kernel_size, kernel_size, in_channels, out_channels]
        with self.name_scope:
            self.kernel = tf.Variable(_he_normal(shape, kernel_size * kernel_size * in_channels, gain), name="kernel")
            self.bias = tf.Variable(tf.zeros([out_channels]), name="bias") if use_bias else None
        self.quantization = None  # quantization-aware training's (lowlevel/quantize.py), else None

    def __call__(self, x: tf.Tensor, kernel: tf.Tensor | None = None) -> tf.Tensor:
        """kernel: a stand-in for self.kernel (a batch norm folded into it, see BatchNorm.fold)."""
        dtype = self.compute_dtype or x.dtype
        if self.quantization is not None:  # x and the kernel (its batch norm folded in) rounded to 8 bits
            x, kernel = self.quantization(x, self.kernel if kernel is None else kernel, folded=kernel is not None)
        kernel = self.kernel if kernel is None else kernel
        y = tf.nn.conv2d(tf.cast(x, dtype), tf.cast(kernel, dtype), strides=self.stride,
                         padding="SAME")  # [B, H', W', C_out]
        y = tf.cast(y, x.dtype)
        if self.bias is None:
            return y
        return y + tf.cast(self.bias if self.quantization is None else self.quantization.bias(self.bias), x.dtype)


class DepthwiseConv2D(tf.Module):
    """Each channel convolved with its own k x k filter(s), SAME padding.

    x [B, H, W, C] -> y [B, ceil(H / s), ceil(W / s), C * m];
    W [k, k, C, m] (m, the depth multiplier, is 1 in MobileNet):
    y[b, i, j, c*m + q] = sum_{di, dj} x[b, s*i + di, s*j + dj, c] * W[di, dj, c, q].
    gain: the initial Var(w) * fan_in (2: He, before a ReLU; 1: no activation follows).
    """

    def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1, multiplier: int = 1,
                 gain: float = 2.0, name: str | None = None):
        super().__init__(name=name)
        self.in_channels, self.out_channels = channels, channels * multiplier
        self.kernel_size, self.stride = kernel_size, stride
        shape = [kernel_size, kernel_size, channels, multiplier]
        with self.name_scope:
            self.kernel = tf.Variable(_he_normal(shape, kernel_size * kernel_size, gain), name="kernel")
        self.quantization = None  # as Conv2D's

    def __call__(self, x: tf.Tensor, kernel: tf.Tensor | None = None) -> tf.Tensor:
        """kernel: a stand-in for self.kernel (a batch norm folded into it, see BatchNorm.fold)."""
        s = self.stride
        if self.quantization is not None:
            x, kernel = self.quantization(x, self.kernel if kernel is None else kernel, folded=kernel is not None)
        kernel = self.kernel if kernel is None else kernel
        # tf.nn.depthwise_conv2d, with a faster filter gradient on maps smaller than the kernel
        return gradients.depthwise_conv2d(x, tf.cast(kernel, x.dtype), s)  # [B, H', W', C * m]


def cross_replica_sum(values: list) -> list:
    """sum_r v_r over the R replicas of a tf.distribute strategy, for each value v of `values`
    (inside strategy.run; with one replica, the values themselves).  Its gradient is the same sum
    of the replicas' gradients, dL/dv_r = sum_s dL/dy_s, since every y_s = sum_r v_r.

    This is `get_replica_context().all_reduce` with the gradient written out.  TensorFlow's own
    wraps the all-reduce in `tf.custom_gradient`, which in a traced function walks the graph
    back from the sum to find the variables it uses; under MirroredStrategy the sum reads every
    replica's tensors, so each walk crosses the other replicas' whole graph, and a network with
    one all-reduce per batch norm traces in time quadratic in its depth.  Here the all-reduce
    reads `tf.stop_gradient` of its inputs, where such a walk ends.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx.num_replicas_in_sync == 1:
        return values

    def summed(tensors):
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tf.stop_gradient(t) for t in tensors])

    @tf.custom_gradient
    def total(*vs):
        return summed(vs), lambda *dys: summed(dys)

    return list(total(*values))


class BatchNorm(tf.Module):
    """Batch normalization (Ioffe and Szegedy 2015) with hand-written moving statistics.

    Training, with mu and var the batch's statistics per channel over N, H, W:

        mu  = mean(x),   var = mean((x - mu)^2)              (biased, as Keras)
        y   = gamma * (x - mu) / sqrt(var + eps) + beta
        moving_mean     <- momentum * moving_mean     + (1 - momentum) * mu
        moving_variance <- momentum * moving_variance + (1 - momentum) * var

    Inference: y = gamma * (x - moving_mean) / sqrt(moving_variance + eps) + beta.

    momentum = 0.99 (Keras' default) averages over about 1 / (1 - 0.99) = 100
    steps, a quarter of a CIFAR-10 epoch at batch 128: long enough to smooth the
    batch-to-batch noise, short enough to follow weights that change every step.
    eps = 1e-3 as in Keras' MobileNet, whose weights this layer must reproduce.

    `fused=True` computes the same training formula with the single kernel
    `tf.raw_ops.FusedBatchNormV3` (forward and its registered gradient), about
    1.7x faster on a CPU than the elementwise ops of `fused=False`, which spell
    the formula out.  The moving-average update is the code below in both.
    x, y: [B, H, W, C] (or [B, C] for the unfused form); gamma, beta,
    moving_mean, moving_variance: [C].

    Cross-replica ("sync") batch norm, under a tf.distribute strategy with R > 1
    replicas in training (unless `sync` is set False): replica r holds x_r, its slice of the
    global batch, with n_r values per channel.  Each computes per channel

        n_r,   S_r = sum(x_r),   Q_r = sum(x_r^2)

    and one all-reduce (`cross_replica_sum`, which also carries the gradients back)
    gives N = sum_r n_r, S = sum_r S_r, Q = sum_r Q_r, whence the global batch's

        mu = S / N,   var = Q / N - mu^2

    used to normalize and to update the moving statistics, identically on every replica:
    the layer computes what one device computes on the whole batch, to float32 rounding
    (var = Q/N - mu^2 loses digits when |mu| >> sigma; here mu is at most a few sigma).
    The normalization is then the elementwise form: the fused kernel computes its own,
    local statistics, and its gradient would not flow through the all-reduce.
    """

    def __init__(self, channels: int, momentum: float = 0.99, epsilon: float = 1e-3, fused: bool = True,
                 name: str | None = None):
        super().__init__(name=name)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"BatchNorm momentum must be in [0, 1), not {momentum}.")
        self.channels, self.momentum, self.epsilon, self.fused = channels, momentum, epsilon, fused
        self.sync = True  # across replicas, when there are several (see above)
        with self.name_scope:
            self.gamma = tf.Variable(tf.ones([channels]), name="gamma")
            self.beta = tf.Variable(tf.zeros([channels]), name="beta")
            # under a tf.distribute strategy every replica computes the same update (sync batch norm), so the
            # first replica's is kept; without sync, replica 0's statistics stand for all
            first = tf.VariableAggregation.ONLY_FIRST_REPLICA
            self.moving_mean = tf.Variable(tf.zeros([channels]), trainable=False, name="moving_mean", aggregation=first)
            self.moving_variance = tf.Variable(tf.ones([channels]), trainable=False, name="moving_variance",
                                               aggregation=first)
        # quantization-aware training's form, with this layer folded into its convolution's kernel
        # (lowlevel/quantize.py): quantization(self, x, training), or None
        self.quantization = None

    def __call__(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        if self.quantization is not None:
            return self.quantization(self, x, training)
        if not training:
            return self._normalize(x, self.moving_mean, self.moving_variance)
        replicas = tf.distribute.get_replica_context()
        if self.sync and replicas is not None and replicas.num_replicas_in_sync > 1:
            mean, variance = self._global_moments(x, replicas)
            y = self._normalize(x, mean, variance)
        elif self.fused and x.shape.rank == 4:
            y, mean, variance = self._fused_training(x)
        else:
            mean, variance = tf.nn.moments(tf.cast(x, tf.float32), axes=list(range(x.shape.rank - 1)))  # [C]
            y = self._normalize(x, mean, variance)
        self._update_moving_statistics(tf.stop_gradient(mean), tf.stop_gradient(variance))
        return y

    def _global_moments(self, x, replicas) -> tuple[tf.Tensor, tf.Tensor]:
        """(mu, var) [C] of the global batch from every replica's n_r, S_r, Q_r, one all-reduce."""
        x = tf.cast(x, tf.float32)
        axes = list(range(x.shape.rank - 1))
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        n, s, q = cross_replica_sum([n, tf.reduce_sum(x, axes), tf.reduce_sum(tf.square(x), axes)])
        mean = s / n
        return mean, tf.maximum(q / n - tf.square(mean), 0.0)

    def _normalize(self, x, mean, variance):
        """gamma * (x - mean) / sqrt(variance + eps) + beta, as one multiply and one add per element."""
        scale = self.gamma * tf.math.rsqrt(variance + self.epsilon)  # [C]
        shift = self.beta - mean * scale  # [C]
        return x * tf.cast(scale, x.dtype) + tf.cast(shift, x.dtype)

    def _fused_training(self, x):
        """The training formula in one kernel.  Its `batch_variance` is Bessel-corrected
        (divided by m - 1, m = B * H * W); multiplying by (m - 1) / m gives the biased one."""
        y, mean, unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=self.gamma, offset=self.beta, mean=tf.constant([], tf.float32),
            variance=tf.constant([], tf.float32), epsilon=self.epsilon, data_format="NHWC", is_training=True)
        m = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        return y, mean, unbiased * (m - 1.0) / m

    def fold(self, kernel: tf.Tensor, depthwise: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """The convolution before this layer and its inference formula as one convolution with a bias:

            BN(conv(x, W)) = conv(x, W) * s + (beta - moving_mean * s),   s = gamma / sqrt(moving_variance + eps)
                           = conv(x, W * s) + b

        s scales W's output channels: the last axis of a regular kernel [k, k, C_in, C_out]; both last
        axes of a depthwise kernel [k, k, C, m], whose output channel c*m + q is W[..., c, q].
        Returns (W * s, b), b [C_out]; conv + bias + relu6 then run as one fused kernel.
        """
        scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)  # [C_out]
        shift = self.beta - self.moving_mean * scale  # [C_out]
        return kernel * (tf.reshape(scale, kernel.shape[2:]) if depthwise else scale), shift

    def _update_moving_statistics(self, mean, variance):
        m = self.momentum
        self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * mean)
        self.moving_variance.assign(m * self.moving_variance + (1.0 - m) * variance)


class SeparableConv2D(tf.Module):
    """A depthwise-separable convolution as Keras' `SeparableConv2D` computes it: a k x k
    DepthwiseConv2D (stride s, no bias), then a 1x1 Conv2D (with a bias), no activation between:

        y = conv1x1(depthwise(x, W_d), W_p) + b
    x [B, H, W, C_in] -> [B, H/s, W/s, C_in] -> y [B, H/s, W/s, C_out];
    W_d [k, k, C_in, 1]; W_p [1, 1, C_in, C_out]; b [C_out].
    Parameters k*k*C_in + C_in*C_out + C_out, against k*k*C_in*C_out + C_out for a Conv2D.
    (MobileNet's blocks put a batch norm and relu6 between the two; see nets/mobilenet.py.)
    gain: the pointwise kernel's, as Conv2D's.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 use_bias: bool = True, compute_dtype=None, gain: float = 2.0, name: str | None = None):
        super().__init__(name=name)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        with self.name_scope:
            # no activation between the two halves, so the depthwise keeps the variance (gain 1)
            self.depthwise = DepthwiseConv2D(in_channels, kernel_size, stride, gain=1.0, name="depthwise")
            self.pointwise = Conv2D(in_channels, out_channels, 1, use_bias=use_bias, compute_dtype=compute_dtype,
                                    gain=gain, name="pointwise")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return self.pointwise(self.depthwise(x))  # [B, H/s, W/s, C_out]


class Dense(tf.Module):
    """y = x W + b.  x [B, C_in] -> y [B, C_out]; W [C_in, C_out]; b [C_out].
    gain: the initial Var(w) * fan_in (1: LeCun, before softmax or SELU; 2: He, before a ReLU)."""

    def __init__(self, in_features: int, out_features: int, gain: float = 1.0, name: str | None = None):
        super().__init__(name=name)
        self.in_features, self.out_features = in_features, out_features
        with self.name_scope:
            self.kernel = tf.Variable(_he_normal([in_features, out_features], in_features, gain=gain),
                                      name="kernel")
            self.bias = tf.Variable(tf.zeros([out_features]), name="bias")
        self.quantization = None  # as Conv2D's

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        kernel = self.kernel
        if self.quantization is not None:
            x, kernel = self.quantization(x, kernel, folded=False)
        bias = self.bias if self.quantization is None else self.quantization.bias(self.bias)
        return tf.matmul(x, tf.cast(kernel, x.dtype)) + tf.cast(bias, x.dtype)  # [B, C_out]


def relu6(x: tf.Tensor) -> tf.Tensor:
    """min(max(x, 0), 6): a ReLU capped at 6, which MobileNet uses throughout."""
    return tf.nn.relu6(x)


def relu(x: tf.Tensor) -> tf.Tensor:
    """max(x, 0)."""
    return tf.nn.relu(x)


def selu(x: tf.Tensor) -> tf.Tensor:
    """Scaled ELU (Klambauer et al. 2017): lambda * x for x > 0, lambda * alpha * (exp(x) - 1) otherwise,
    lambda = 1.0507..., alpha = 1.6733...: with LeCun-initialized weights it keeps activations near
    mean 0, variance 1 without batch norm."""
    return tf.nn.selu(x)


def max_pool(x: tf.Tensor, size: int, stride: int | None = None, padding: str = "VALID") -> tf.Tensor:
    """The maximum of each size x size window, windows `stride` apart (default: size, no overlap).

    x [B, H, W, C] -> [B, H', W', C]; VALID: H' = floor((H - size) / stride) + 1 (windows inside the
    image); SAME: H' = ceil(H / stride), the image padded with -inf so padding never wins.
    """
    return tf.nn.max_pool2d(x, size, stride or size, padding)


def average_pool(x: tf.Tensor, size: int, stride: int | None = None, padding: str = "VALID") -> tf.Tensor:
    """The mean of each size x size window; shapes as max_pool.  SAME averages only the pixels
    inside the image (a corner window of 3x3 at stride 1 averages 4 values, not 9 with zeros)."""
    return tf.nn.avg_pool2d(x, size, stride or size, padding)


def flatten(x: tf.Tensor) -> tf.Tensor:
    """[B, H, W, C] -> [B, H*W*C], row-major (C fastest), the order Keras' Flatten uses."""
    return tf.reshape(x, [-1, math.prod(x.shape[1:])])


def concat(tensors: list[tf.Tensor]) -> tf.Tensor:
    """Stack feature maps along channels: [B, H, W, C_1], ..., [B, H, W, C_n] -> [B, H, W, sum C_i]."""
    return tf.concat(tensors, axis=-1)


def global_average_pool(x: tf.Tensor, reader=None) -> tf.Tensor:
    """[B, H, W, C] -> [B, C]: the mean of each channel over the image.

    reader: the layer that reads the result (the classifier); under quantization-aware training its
    input range rounds the map too (lowlevel/quantize.py), so the int8 network's pooling (LiteRT's
    MEAN) reads the map on that scale and rounds the mean once, as the simulated network does."""
    if reader is not None and reader.quantization is not None:
        x = reader.quantization.pooled(x)
    return tf.reduce_mean(x, axis=[1, 2])


def dropout(x: tf.Tensor, rate: float, training: bool, seed=None) -> tf.Tensor:
    """In training, zero each element with probability `rate` and scale the rest by
    1 / (1 - rate), so the expected value is unchanged; at inference, the identity.

    `seed`, a [2] integer key, makes the mask a pure function of the key (the
    training step passes one made from (seed, step), so a resumed run draws the
    same masks); without one the mask comes from TensorFlow's global generator.
    Under a tf.distribute strategy with R > 1 replicas, x [B/R, ...] being replica r's
    slice of the global batch, the mask is the slice of the global batch's mask: the
    masks one device would draw.
    """
    if not training or rate == 0.0:
        return x
    if seed is None:
        return tf.nn.dropout(x, rate=rate)
    replicas = tf.distribute.get_replica_context()
    if replicas is not None and replicas.num_replicas_in_sync > 1:
        r, n, b = replicas.replica_id_in_sync_group, replicas.num_replicas_in_sync, tf.shape(x)[0]
        whole = tf.concat([[n * b], tf.shape(x)[1:]], 0)  # the global batch's shape
        mask = tf.nn.experimental.stateless_dropout(tf.ones(whole, x.dtype), rate=rate, seed=seed)  # 0 or 1/(1-rate)
        return x * mask[r * b:(r + 1) * b]
    return tf.nn.experimental.stateless_dropout(x, rate=rate, seed=seed)
