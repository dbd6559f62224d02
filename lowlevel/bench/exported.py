"""`python -m lowlevel.bench exported DIR`: the files `python -m lowlevel.export` wrote: batch-1 latency
(median of `--runs` calls) and batch-128 images/s, with 1 and 2 threads, each file and thread count
in a fresh process (thread pools are fixed once TensorFlow starts)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lowlevel._tf import tf

from lowlevel.bench.timing import best_time
from lowlevel.errors import ConfigError, RunError


def exported_speed(path: str, threads: int, runs: int = 200, warmup: int = 20, batch: int = 128,
                   repeats: int = 3) -> dict:
    """One exported model's speed with `threads` threads, on random uint8 images of its input shape:
    batch-1 latency, the median of `runs` timed calls after `warmup` untimed ones, and batch-`batch`
    images/s, the best of `repeats` calls.  For a SavedModel, TensorFlow's thread pools are set here,
    so this must run before TensorFlow's first op in the process (`exported_table` gives each its own)."""
    from lowlevel import exported

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    model = exported.Exported(path, threads)
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, [1, *model.input_shape], dtype=np.uint8)
    many = rng.integers(0, 256, [batch, *model.input_shape], dtype=np.uint8)
    for _ in range(warmup):
        model.predict(one)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict(one)
        times.append(time.perf_counter() - start)
    model.predict(many)
    return {"file": str(path), "bytes": exported.size(path), "threads": threads,
            "latency_ms": round(1000 * float(np.median(times)), 3),
            "images_per_s": round(batch / best_time(lambda: model.predict(many), repeats), 1)}


def exported_table(folder: str, threads: list[int], calls: int = 200) -> list[dict]:
    """exported_speed of every file export.json lists in `folder`, at each thread count, each in a new
    process (thread pools are fixed once TensorFlow starts, and no measurement warms another's caches)."""
    from lowlevel import exported

    manifest = exported.read_manifest(folder)
    if manifest is None:
        raise RunError(f"{folder}: has no readable export.json; give a folder python -m lowlevel.export wrote.")
    rows = []
    for fmt, name in manifest["files"].items():
        for n in threads:
            out = subprocess.run([sys.executable, "-m", "lowlevel.bench", "exported", str(Path(folder) / name),
                                  "--threads", str(n), "--runs", str(calls)], capture_output=True, text=True)
            if out.returncode != 0:
                last = out.stderr.strip().splitlines()[-1:] or [f"exit status {out.returncode}"]
                raise RunError(f"{Path(folder) / name}: could not be timed ({last[0].removeprefix('error: ')})")
            rows.append({"format": fmt, **json.loads(out.stdout.strip().splitlines()[-1])})
    return rows


def run(args) -> int:
    """One file at one thread count (a JSON line), or a folder's table."""
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        threads = [0]
    if min(threads) < 1 or args.runs < 1:
        raise ConfigError(f"--threads must be positive whole numbers such as 1,2 and --runs at least 1, not "
                          f"{args.threads!r} and {args.runs}.")
    if not (Path(args.path) / "export.json").is_file():
        print(json.dumps(exported_speed(args.path, threads[0], args.runs, repeats=args.repeats)))
        return 0
    rows = exported_table(args.path, threads, args.runs)
    print(f"{args.path}: batch-1 latency (median of {args.runs} calls after 20) and batch-128 images/s "
          f"(best of 3), on random images")
    print(f"{'format':<24s} {'MB':>7s} {'threads':>7s} {'latency ms':>10s} {'images/s':>9s}")
    for r in rows:
        print(f"{r['format']:<24s} {r['bytes'] / 1e6:7.2f} {r['threads']:7d} {r['latency_ms']:10.3f} "
              f"{r['images_per_s']:9.1f}")
    print(json.dumps(rows))
    return 0
