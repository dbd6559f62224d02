"""From uint8 images to normalized, augmented float batches, as TF ops on whole batches.

The images stay in one uint8 tensor [N, 32, 32, 3] for the whole run (150 MB
for CIFAR-10's training set); a batch is a `tf.gather` of its indices, done
inside the compiled training step, so no image passes through Python.

Every random choice is a pure function of (seed, epoch) or (seed, step):

    order of epoch e         = argsort(uniform(N; key = fold_in(seed, SHUFFLE, e)))
    crop offsets of step s   = uniform(...; key = fold_in(seed, AUGMENT, s))
    flips of step s          = uniform(...; key = fold_in(seed, FLIP, s))
    or, alternating, image i = uniform(...; key = fold_in(seed, FIRST_FLIP, 0))[i] xor (epoch is odd)
    cutout squares of step s = uniform(...; key = fold_in(seed, CUTOUT, s))
    cutmix box of step s     = uniform(...; key = fold_in(seed, CUTMIX, s)), partners likewise
    dropout masks of step s  = key fold_in(seed, DROPOUT, s)

so batch k of a run is the same whether or not the run was stopped and resumed,
and there is no hidden generator state for a checkpoint to miss.
"""
from __future__ import annotations

import numpy as np
from lowlevel._tf import tf

from lowlevel.config import FLIPS

PAD = 4  # pixels of zero padding before the random 32x32 crop
# the random streams' ids, so that no two share a key
_SHUFFLE, _AUGMENT, _DROPOUT, _CUTOUT, _FLIP, _CUTMIX, _PARTNER, _FIRST_FLIP = 1, 2, 3, 4, 5, 6, 7, 8


class Normalization(tf.Module):
    """Per-channel statistics of the training images, in [0, 1] units, and the map they define.

    mean and std are non-trainable variables [C], so a checkpoint holds the
    statistics a run trained with, and evaluation, inspection and export restore
    them instead of recomputing them from whatever copy of the data they are given.
    """

    def __init__(self, mean, std, name: str = "normalization"):
        super().__init__(name=name)
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"need one mean and one positive std per channel, not {mean} and {std}.")
        with self.name_scope:
            self.mean = tf.Variable(tf.constant(mean, tf.float32), trainable=False, name="mean")  # [C]
            self.std = tf.Variable(tf.constant(std, tf.float32), trainable=False, name="std")  # [C]

    @classmethod
    def of(cls, images: np.ndarray) -> "Normalization":
        """mean_c = mean over N, H, W of x/255; std_c likewise (population std)."""
        x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        return cls([float(v) for v in x.mean(0)], [float(v) for v in x.std(0)])

    @classmethod
    def placeholder(cls, channels: int) -> "Normalization":
        """mean 0, std 1: a slot for statistics about to be restored from a checkpoint."""
        return cls([0.0] * channels, [1.0] * channels)

    def values(self) -> tuple[list[float], list[float]]:
        """(mean, std) as Python floats."""
        return [float(v) for v in self.mean.numpy()], [float(v) for v in self.std.numpy()]

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """uint8 [B, H, W, C] -> float32 (x / 255 - mean) / std, [B, H, W, C]."""
        x = tf.cast(images, tf.float32) / 255.0
        return (x - self.mean) / self.std

    def black(self) -> tf.Tensor:
        """float32 [C]: a black pixel normalized, (0 - mean) / std (what the zero padding of `augment`'s
        crops becomes)."""
        return (0.0 - self.mean) / self.std


def split_validation(images: np.ndarray, labels: np.ndarray, val_size: int, seed: int = 0):
    """Hold `val_size` random training images out as a validation set.

    The split depends only on `seed` (default 0, not the run's seed), so runs
    with different seeds are validated on the same images.  Returns
    (train_images, train_labels, val_images, val_labels).
    """
    n = len(images)
    if not 0 <= val_size < n:
        raise ValueError(f"--val-size must be between 0 and {n - 1} (the training images), not {val_size}.")
    order = np.random.default_rng(seed).permutation(n)
    val, train = np.sort(order[:val_size]), np.sort(order[val_size:])
    return images[train], labels[train], images[val], labels[val]


def _key(seed, stream: int, counter) -> tf.Tensor:
    """A stateless random key [2] for (seed, stream, counter)."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(stream, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(counter, tf.int64))


def epoch_order(n: int, seed, epoch) -> tf.Tensor:
    """The shuffled order of the n training images in epoch `epoch`: int32 [n]."""
    noise = tf.random.stateless_uniform([n], seed=_key(seed, _SHUFFLE, epoch))
    return tf.argsort(noise)  # int32


def dropout_key(seed, step) -> tf.Tensor:
    """The [2] key of the dropout masks of step `step` (see layers.dropout)."""
    return _key(seed, _DROPOUT, step)


def crop_and_flip_draws(batch, seed, step) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The random choices of `augment` at `step`: offsets dy, dx, each uniform over 0..2*PAD,
    and a flip bit, true with probability 1/2, each int32/bool [B, 1] and drawn independently."""
    offsets = tf.random.stateless_uniform([batch, 2], seed=_key(seed, _AUGMENT, step), maxval=2 * PAD + 1,
                                          dtype=tf.int32)  # [B, 2]
    flip = tf.random.stateless_uniform([batch, 1], seed=_key(seed, _FLIP, step), maxval=2, dtype=tf.int32) == 1
    return offsets[:, 0:1], offsets[:, 1:2], flip


def first_flips(n: int, seed) -> tf.Tensor:
    """bool [n]: whether each of n training images is mirrored in the first epoch of the alternating
    flip (`alternating_flips`), a fair coin per image."""
    return tf.random.stateless_uniform([n], seed=_key(seed, _FIRST_FLIP, 0), maxval=2, dtype=tf.int32) == 1


def alternating_flips(first: tf.Tensor, idx: tf.Tensor, epoch) -> tf.Tensor:
    """The alternating flip (Jordan, "94% on CIFAR-10 in 3.29 seconds", 2024): image i is mirrored in
    epoch e if and only if

        flip(i, e) = first[i] xor (e is odd)

    so each image is seen once each way in every two epochs, where random flips show half of the images
    the same way in both.  first: bool [N] (`first_flips`), idx: int32 [B] -> bool [B, 1]."""
    odd = tf.cast(epoch, tf.int32) % 2 == 1
    return tf.not_equal(tf.gather(first, idx), odd)[:, None]


def augment(images: tf.Tensor, seed, step, flip: tf.Tensor | None = None) -> tf.Tensor:
    """Random crop after 4-pixel zero padding, and random horizontal flip.

    images: uint8 [B, H, W, C] -> uint8 [B, H, W, C].  Each image gets its own
    offsets dy, dx in 0..8 and flip bit (`crop_and_flip_draws`), or the flip bits
    `flip` (bool [B, 1]) when given.  The crop is two batched gathers of row and
    column indices into the padded batch; a flip is the same crop with its columns
    read right to left, so it costs nothing extra.
    """
    b, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
    dy, dx, drawn = crop_and_flip_draws(b, seed, step)  # [B, 1] each
    flip = drawn if flip is None else flip
    padded = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])  # [B, H+8, W+8, C]
    rows = dy + tf.range(h)[None, :]  # [B, H]
    cols = dx + tf.where(flip, tf.range(w - 1, -1, -1)[None, :], tf.range(w)[None, :])  # [B, W]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W+8, C]
    return tf.gather(out, cols, axis=2, batch_dims=1)  # [B, H, W, C]


def cutout_centres(batch, h: int, w: int, seed, step) -> tuple[tf.Tensor, tf.Tensor]:
    """The random centres of `cutout` at `step`: rows cy uniform over 0..h-1, columns cx over 0..w-1,
    int32 [B, 1] each, drawn independently."""
    centre = tf.random.stateless_uniform([batch, 2], seed=_key(seed, _CUTOUT, step), maxval=h * w,
                                         dtype=tf.int32)  # uniform in [0, h*w): h*w is a multiple of h and of w
    return centre[:, 0:1] % h, centre[:, 1:2] % w


def cutout(x: tf.Tensor, size: int, seed, step) -> tf.Tensor:
    """Cutout (DeVries and Taylor, 2017): zero one random size x size square of each image.

    x: float32 [B, H, W, C], already normalized, so a zeroed pixel is the mean
    colour -> float32 [B, H, W, C].  Each image gets its own centre (cy, cx),
    uniform over all H x W pixels (`cutout_centres`); the square covers rows cy - size//2 ..
    cy - size//2 + size - 1 (likewise columns), clipped at the border, so a
    square near an edge hides less:

        x'[b, i, j, c] = x[b, i, j, c] * (1 - [i in rows_b and j in cols_b])
    """
    b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    cy, cx = cutout_centres(b, h, w, seed, step)  # [B, 1] each
    top, left = cy - size // 2, cx - size // 2  # [B, 1] each
    i, j = tf.range(h)[None, :], tf.range(w)[None, :]  # [1, H], [1, W]
    inside_rows = (i >= top) & (i < top + size)  # [B, H]
    inside_cols = (j >= left) & (j < left + size)  # [B, W]
    hidden = inside_rows[:, :, None] & inside_cols[:, None, :]  # [B, H, W]
    return x * tf.cast(~hidden, x.dtype)[..., None]


def cutmix_draws(batch, seed, step) -> tuple[tf.Tensor, tf.Tensor]:
    """The random choices of `cutmix` at `step`: u float32 [4], uniform over [0, 1) (whether the batch is
    mixed, the box's size, its centre row and column), and the partners, a random permutation int32 [B]."""
    u = tf.random.stateless_uniform([4], seed=_key(seed, _CUTMIX, step))
    return u, tf.argsort(tf.random.stateless_uniform([batch], seed=_key(seed, _PARTNER, step)))


def cutmix(x: tf.Tensor, y: tf.Tensor, prob: float, seed, step) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """CutMix (Yun et al., 2019): with probability `prob` the batch is mixed: one random box of every
    image is replaced by the same box of its partner, another image of the batch, and the target
    becomes the two labels in proportion to their pixels.

    x: float32 [B, H, W, C], y: int32 [B] -> (x' [B, H, W, C], partner labels y' [B], share: float32 []).
    With the draws u of `cutmix_draws`: mixed = u0 < prob; lam = u1 (Beta(1, 1), the paper's CIFAR
    setting); the box has sides floor(H sqrt(1 - lam)) x floor(W sqrt(1 - lam)) around a centre
    (floor(u2 H), floor(u3 W)), placed and clipped as `cutout`'s square;

        x'[b] = x[b] outside the box, x[perm[b]] inside;   y'[b] = y[perm[b]]
        share = 1 - box area / (H W)   (1 when the batch is not mixed: x' = x)

    and the loss takes the target share * onehot(y) + (1 - share) * onehot(y') (step.cross_entropy).
    """
    b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    u, perm = cutmix_draws(b, seed, step)
    mixed = u[0] < prob
    cut = tf.sqrt(1.0 - u[1])
    rows, cols = tf.cast(cut * h, tf.int32), tf.cast(cut * w, tf.int32)  # the box's sides before clipping
    top, left = tf.cast(u[2] * h, tf.int32) - rows // 2, tf.cast(u[3] * w, tf.int32) - cols // 2
    inside_rows = (tf.range(h) >= top) & (tf.range(h) < top + rows) & mixed  # [H]
    inside_cols = (tf.range(w) >= left) & (tf.range(w) < left + cols)  # [W]
    box = inside_rows[:, None] & inside_cols[None, :]  # [H, W]
    share = 1.0 - tf.reduce_mean(tf.cast(box, tf.float32))
    return tf.where(box[None, :, :, None], tf.gather(x, perm), x), tf.gather(y, perm), share


class Batches:
    """Training and evaluation batches from one uint8 tensor held on the device.

    Training: `steps_per_epoch = N // batch_size` batches of exactly
    `batch_size` images per epoch, in the order `epoch_order(N, seed, epoch)`
    (the remainder, different images each epoch, waits for the next epoch).
    Evaluation: every image exactly once, in order, the last batch partial.
    `flip`: "random" (`crop_and_flip_draws`) or "alternate" (`alternating_flips`).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, norm: Normalization, batch_size: int,
                 seed: int = 0, augment: bool = True, cutout: int = 0, cutmix: float = 0.0, flip: str = "random"):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, H, W, C], not {images.dtype} {list(images.shape)}.")
        if batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, not {batch_size}.")
        self.images = tf.constant(images)  # uint8 [N, H, W, C]
        self.labels = tf.constant(labels, tf.int32)  # [N]
        self.n = len(images)
        if not 0 <= cutout <= min(images.shape[1:3]):
            raise ValueError(f"--cutout must be between 0 and {min(images.shape[1:3])} pixels, not {cutout}.")
        self.norm, self.batch_size, self.seed, self.augment = norm, batch_size, seed, augment
        if not 0.0 <= cutmix <= 1.0:
            raise ValueError(f"--cutmix must be a probability between 0 and 1, not {cutmix}.")
        self.cutout, self.cutmix = cutout, cutmix
        if flip not in FLIPS:
            raise ValueError(f"--flip must be one of {', '.join(FLIPS)}, not {flip!r}.")
        self.first_flips = first_flips(self.n, seed) if flip == "alternate" else None  # bool [N]
        self.steps_per_epoch = self.n // batch_size

    def order(self, epoch) -> tf.Tensor:
        """int32 [N]: which image each position of epoch `epoch` reads."""
        return epoch_order(self.n, self.seed, epoch)

    def train_batch(self, order: tf.Tensor, step) -> tuple[tf.Tensor, tf.Tensor]:
        """Batch `step % steps_per_epoch` of the epoch whose order is `order`.

        Returns (float32 [B, H, W, C] normalized images, int32 [B] labels); the
        augmentation (crop and flip, then cutout when `cutout` > 0) is keyed by
        the global `step`; with the alternating flip, each image's flip by its epoch.
        """
        step32 = tf.cast(step, tf.int32)
        epoch, k = step32 // self.steps_per_epoch, step32 % self.steps_per_epoch
        idx = order[k * self.batch_size:(k + 1) * self.batch_size]  # [B]
        x = tf.gather(self.images, idx)  # uint8 [B, H, W, C]
        if self.augment:
            flip = None if self.first_flips is None else alternating_flips(self.first_flips, idx, epoch)
            x = augment(x, self.seed, step, flip)
        x = self.norm(x)
        if self.cutout:
            x = cutout(x, self.cutout, self.seed, step)
        return x, tf.gather(self.labels, idx)

    def mixed_batch(self, order: tf.Tensor, step) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """`train_batch`, then CutMix when `cutmix` > 0: (x [B, H, W, C], labels [B], partner labels [B],
        share []), the target of image b being share * onehot(labels[b]) + (1 - share) * onehot(partner[b]).
        Without CutMix: partner = labels and share = 1."""
        x, y = self.train_batch(order, step)
        if not self.cutmix:
            return x, y, y, tf.constant(1.0)
        x, partner, share = cutmix(x, y, self.cutmix, self.seed, step)
        return x, y, partner, share

    @property
    def num_eval_batches(self) -> int:
        return -(-self.n // self.batch_size)

    def eval_batch(self, k) -> tuple[tf.Tensor, tf.Tensor]:
        """Batch k of `num_eval_batches`, in order, no augmentation; the last one may be smaller."""
        return eval_batch(self.images, self.labels, self.norm, k, self.batch_size)


def eval_batch(images, labels, norm: Normalization, k, batch_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Batch k of ceil(N / batch_size) of uint8 images [N, H, W, C] and labels [N], in order, normalized,
    not augmented: (float32 [<=B, H, W, C], [<=B]); the last one may be smaller."""
    start = tf.cast(k, tf.int32) * batch_size
    return norm(images[start:start + batch_size]), labels[start:start + batch_size]
