"""The lightweight series built shorter, for tests whose checks do not depend on depth (the loop, export,
rounding and tf.distribute have no path of their own for any depth): every kind of block kept, fewer of
each.  Tracing and optimizing a whole network's step takes most of such a test's time.

    shorten(name, monkeypatch.setattr)   from now on in this process, for one test
    code(name)                           the same as Python source, for a process of its own (`python -c`)

`name` builds as before when SHORTER has no entry for it."""
import dataclasses
import importlib


def _rows(table, rows, most=2):
    """The table's first `rows` rows, each repeated at most `most` times."""
    return tuple(dataclasses.replace(r, n=min(r.n, most)) for r in table[:rows])


# network: (its module in lowlevel.nets, the table it is built from at each build, the shorter table)
SHORTER = {
    # the stem and the first 6 of the 13 separable blocks: strides 1, 2, 1, 2, 1, 2 on CIFAR
    "mobilenet": ("mobilenet", "BODY", lambda body: body[:6]),
    # Table 2's first 4 rows, at most 2 blocks each: 7 blocks, 3 of them with a residual sum
    "mobilenet-v2": ("mobilenet_v2", "TABLE2", lambda table: _rows(table, 4)),
    # Table 2's first 6 rows: relu and hard-swish, with and without a squeeze-and-excitation gate, 3 residual sums
    "mobilenet-v3-small": ("mobilenet_v3", "SMALL", lambda table: table[:6]),
    # Table 1's first 8 rows: the same kinds, 4 residual sums
    "mobilenet-v3-large": ("mobilenet_v3", "LARGE", lambda table: table[:8]),
    # stages of 2 units, not (4, 8, 4): a unit of stride 2, then one of stride 1 (the channel split)
    "shufflenet-v2": ("shufflenet", "REPEATS", lambda repeats: (2, 2, 2)),
    # Table 1's first 4 rows, at most 2 blocks each: 7 blocks of kernels 3 and 5, 3 of them residual (with
    # drop-path)
    "efficientnet-b0": ("efficientnet", "B0", lambda table: _rows(table, 4)),
}


def shorten(name: str, set_attribute=setattr) -> None:
    """Build `name` as SHORTER builds it from now on: set_attribute(module, table, shorter) (monkeypatch.setattr:
    for one test)."""
    if name in SHORTER:
        module, table, shorter = SHORTER[name]
        module = importlib.import_module(f"lowlevel.nets.{module}")
        set_attribute(module, table, shorter(getattr(module, table)))


def code(name: str) -> str:
    """Python source that runs shorten(name) in a process whose path holds this folder (conftest.ENV's)."""
    return f"\nimport shorter\nshorter.shorten({name!r})\n"
