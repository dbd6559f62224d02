"""Tiny CIFAR-10 folders in the official format, written by the tests themselves.

`py2` writes what the official files are: Python 2 protocol-2 pickles, keys as
byte strings, arrays reduced through `numpy.core.multiarray._reconstruct`.
Python 3 cannot emit those opcodes, so they are written by hand here.  The
other encodings are Python 3's own `pickle.dumps` at protocols 2, 3 and 5.
"""
import pickle

import numpy as np

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ENCODINGS = ("py2", "py3-protocol2", "py3-protocol3", "py3-protocol5")
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


def _p2(obj, out: bytearray) -> None:
    """Append the Python 2 protocol-2 opcodes of obj to out."""
    if isinstance(obj, dict):
        out += b"}("
        for k, v in obj.items():
            _p2(k, out)
            _p2(v, out)
        out += b"u"
    elif isinstance(obj, (list, tuple)):
        out += b"](" if isinstance(obj, list) else b"("
        for v in obj:
            _p2(v, out)
        out += b"e" if isinstance(obj, list) else b"t"
    elif obj is None:
        out += b"N"
    elif isinstance(obj, bool):
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, int):
        out += b"J" + obj.to_bytes(4, "little", signed=True)
    elif isinstance(obj, bytes):
        out += b"T" + len(obj).to_bytes(4, "little") + obj
    elif isinstance(obj, np.ndarray):
        assert obj.dtype == np.uint8
        out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        _p2((0,), out)
        _p2(b"b", out)
        out += b"\x87R(K\x01"
        _p2(obj.shape, out)
        out += b"cnumpy\ndtype\n"
        _p2((b"u1", 0, 1), out)
        out += b"R"
        _p2((3, b"|", None, None, None, -1, -1, 0), out)
        out += b"b\x89"
        _p2(obj.tobytes(), out)
        out += b"tb"
    else:
        raise TypeError(type(obj))


def dumps(obj: dict, encoding: str) -> bytes:
    if encoding == "py2":
        out = bytearray(b"\x80\x02")
        _p2(obj, out)
        return bytes(out + b".")
    protocol = int(encoding[-1])
    text = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}  # Python 3 keys are str
    return pickle.dumps(text, protocol=protocol)


def batch_dict(rows: np.ndarray, labels: np.ndarray, name: str) -> dict:
    return {b"data": rows, b"labels": [int(v) for v in labels], b"batch_label": name.encode(),
            b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}


def write(folder, encoding: str = "py2", per_batch: int = 20, n_test: int = 30, seed: int = 0,
          learnable: bool = False):
    """Write folder/{data_batch_1..5, test_batch, batches.meta}; return the raw rows and labels.

    Returns (train_rows uint8 [5*per_batch, 3072], train_labels, test_rows, test_labels).  The images
    are noise, their labels unrelated to them, unless `learnable`: then an image of class k is noise
    around colour k of a fixed table, which a tiny network learns in a few epochs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_rows = rng.integers(0, 256, (5 * per_batch, 3072), dtype=np.uint8)
    train_labels = np.arange(5 * per_batch) % 10
    rng.shuffle(train_labels)
    test_rows = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_labels = np.arange(n_test) % 10
    if learnable:
        corners = [(r, g, b) for r in (40, 215) for g in (40, 215) for b in (40, 215)]
        colours = np.array([*corners, (128, 128, 128), (215, 128, 40)])  # [class, channel], far apart
        for rows, labels in ((train_rows, train_labels), (test_rows, test_labels)):
            noise = rng.normal(0, 30, (len(rows), 3, 1024))
            rows[:] = np.clip(colours[labels][:, :, None] + noise, 0, 255).reshape(len(rows), 3072)
    for i, name in enumerate(TRAIN_FILES):
        s = slice(i * per_batch, (i + 1) * per_batch)
        (folder / name).write_bytes(dumps(batch_dict(train_rows[s], train_labels[s], name), encoding))
    (folder / "test_batch").write_bytes(dumps(batch_dict(test_rows, test_labels, "test"), encoding))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in LABELS], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(dumps(meta, encoding))
    return train_rows, train_labels, test_rows, test_labels
