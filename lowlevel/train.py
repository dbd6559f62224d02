"""`python -m lowlevel.train`: train a network (MobileNet v1 on CIFAR-10 by default) with a hand-written loop.

    python -m lowlevel.train --data cifar-10-batches-py --run-name first
    python -m lowlevel.train --run-name first --resume          # after Ctrl-C, a crash, a reboot
    python -m lowlevel.train --model vgg-blocks-separable --run-name vgg   # any network of lowlevel.nets

The command reads the flags (lowlevel/config.py), finds and opens the run folder
(lowlevel/runs.py), loads the data (lowlevel/datasets/) and runs the loop (lowlevel/loop.py),
whose compiled step is lowlevel/step.py.  A mistake in a flag or a file is one sentence and
exit status 2, before any work starts.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from lowlevel import datasets, distribute, errors, loop, runs
from lowlevel.config import Config
from lowlevel.errors import ConfigError, RunError, WriteError


def main(argv: list[str] | None = None) -> int:
    try:
        return errors.as_command("python -m lowlevel.train", lambda: train(argv))
    except KeyboardInterrupt:  # a second Ctrl-C
        print("stopped at once, without saving; --resume continues from the last checkpoint.", file=sys.stderr)
        return 130


def train(argv: list[str] | None) -> int:
    cfg, explicit = Config.from_args(argv)
    cfg = cfg.check()
    strategy = distribute.strategy(cfg.strategy)  # first: multi-worker starts this worker's server
    chief = distribute.is_chief(strategy)
    cfg, run = runs.run_config(cfg, explicit, chief)
    data = datasets.load(cfg.dataset, cfg.data, cfg.split_seed)
    cfg.check_data(len(data.train_images), data.train_images.shape[1])
    try:
        if not chief:  # another worker of a multi-worker run: it reads the run folder, writes a temporary one
            with tempfile.TemporaryDirectory(prefix="lowlevel-worker-") as scratch:
                return loop.run(cfg, run, data, strategy, out=Path(scratch))
        new = not run.exists()
        try:
            with runs.open_run(cfg, run):
                return loop.run(cfg, run, data, strategy)
        except ConfigError:  # refused before the first step: the same command, corrected, starts afresh
            if new:
                runs.discard_unstarted(run)
            raise
    except WriteError as e:
        raise RunError(f"{e}; {after_write_error(e, run)}") from None


def after_write_error(e: WriteError, run: Path | None) -> str:
    """What to do after a failed write: the run's checkpoints are intact, so say how to continue."""
    fix = errors.advice(e).removesuffix(" and run the command again.").removesuffix(" and run again.").rstrip(".")
    if run is None or not (run / "config.json").is_file():
        return errors.advice(e)
    try:
        last = runs.latest(run)
    except RunError:
        last = None
    kept = f"its last checkpoint, {last.name}, is intact" if last else "it has no checkpoint yet"
    return f"the run stopped and {kept}: {fix}, then continue with: {runs.command(run)}"



if __name__ == "__main__":
    sys.exit(main())
