"""The deeper networks (MobileNet v1, the lightweight series, Inception-v2) built shorter, for tests whose
checks do not depend on depth (the loop, export, rounding and tf.distribute have no path of their own for
any depth): every kind of block kept, fewer of each.  Tracing and optimizing a whole network's step takes
most of such a test's time.

    shorten(name, monkeypatch.setattr)   from now on in this process, for one test
    code(name)                           the same as Python source, for a process of its own (`python -c`)

`name` builds as before when SHORTER has no entry for it."""
import dataclasses
import importlib


def _rows(table, rows, most=2):
    """The table's first `rows` rows, each repeated at most `most` times."""
    return tuple(dataclasses.replace(r, n=min(r.n, most)) for r in table[:rows])


# network: (its module in lowlevel.nets, what the module builds it from at each build, that made shorter)
SHORTER = {
    # the stem and the first 6 of the 13 separable blocks: strides 1, 2, 1, 2, 1, 2 on CIFAR
    "mobilenet": ("mobilenet", "BODY", lambda m: m.BODY[:6]),
    # its twins, the same table with other blocks
    "mobilenet-standard": ("mobilenet", "BODY", lambda m: m.BODY[:6]),
    "mobilenet-friendly": ("mobilenet", "BODY", lambda m: m.BODY[:6]),
    # Table 2's first 4 rows, at most 2 blocks each: 7 blocks, 3 of them with a residual sum
    "mobilenet-v2": ("mobilenet_v2", "TABLE2", lambda m: _rows(m.TABLE2, 4)),
    # Table 2's first 6 rows: relu and hard-swish, with and without a squeeze-and-excitation gate, 3 residual sums
    "mobilenet-v3-small": ("mobilenet_v3", "SMALL", lambda m: m.SMALL[:6]),
    # Table 1's first 8 rows: the same kinds, 4 residual sums
    "mobilenet-v3-large": ("mobilenet_v3", "LARGE", lambda m: m.LARGE[:8]),
    # stages of 2 units, not (4, 8, 4): a unit of stride 2, then one of stride 1 (the channel split)
    "shufflenet-v2": ("shufflenet", "REPEATS", lambda m: (2, 2, 2)),
    # Table 1's first 4 rows, at most 2 blocks each: 7 blocks of kernels 3 and 5, 3 of them residual (with
    # drop-path)
    "efficientnet-b0": ("efficientnet", "B0", lambda m: _rows(m.B0, 4)),
    # the stem, then 5 of the 10 mixed modules: 3a, both of stride 2 (3c, 4e), 4a and 5b (average and max
    # pooling branches, with and without a 1x1 branch), so the maps keep their sizes; the pooling and classifier
    "inception-v2": ("inception", "build", lambda m: m.factory(
        tuple(m.INCEPTION_V2[i] for i in (0, 1, 2, 3, 4, 5, 7, 8, 12, 14, 15, 16, 17)), "inception-v2",
        m.INPUT_SHAPE, m.NUM_CLASSES)),
}


def shorten(name: str, set_attribute=setattr) -> None:
    """Build `name` as SHORTER builds it from now on: set_attribute(module, attribute, shorter) (monkeypatch.setattr:
    for one test)."""
    if name in SHORTER:
        module, attribute, shorter = SHORTER[name]
        module = importlib.import_module(f"lowlevel.nets.{module}")
        set_attribute(module, attribute, shorter(module))


def code(name: str) -> str:
    """Python source that runs shorten(name) in a process whose path holds this folder (conftest.ENV's)."""
    return f"\nimport shorter\nshorter.shorten({name!r})\n"
