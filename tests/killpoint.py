"""Run `python -m lowlevel.train` and SIGKILL it at one exact point of the end-of-epoch sequence.

    python killpoint.py POINT N TRAIN-ARGS...

The process kills itself (SIGKILL: no handler, no cleanup, as a power cut or the OOM
killer would) the N-th time it reaches POINT.  If it never gets there it exits with
status 3, so a test can tell a kill that happened from one that did not.
"""
import os
import signal
import sys
from pathlib import Path

from lowlevel._tf import tf
from lowlevel import figures, history, runs, train  # noqa: F401 - figures: so its os.replace is the one patched

# the end of an epoch:  validate -> history.csv -> best save -> latest save -> learning_curves.png
POINTS = {
    "after-history": "history.csv has the epoch's row; no checkpoint covers it yet",
    "best-written": "inside the best save: its files complete, best/checkpoint not yet naming them",
    "between-saves": "one of the epoch's two saves (best, latest) complete, the other not begun",
    "latest-torn": "inside the latest save: its data file half written, the checkpoint list not updated",
    "latest-written": "inside the latest save: its files complete, the checkpoint list not yet naming them",
    "before-sweep": "inside the latest save: the list names it, the oldest checkpoint not yet deleted",
    "inside-plot": "learning_curves.png's temporary file written, not yet renamed over the old one",
}


def main(point: str, target: int, args: list[str]) -> int:
    assert point in POINTS, point
    seen = {"n": 0}

    def reached(name: str) -> None:
        if name == point:
            seen["n"] += 1
            if seen["n"] == target:
                os.kill(os.getpid(), signal.SIGKILL)

    Manager = tf.train.CheckpointManager
    save, record, sweep = Manager.save, Manager._record_state, Manager._sweep
    calls = {}

    def patched_save(self, *args, **kwargs):
        # with a best saved at every epoch's end (the test makes sure), saves come in pairs: at the
        # second of each pair, the first save of that epoch is complete and the other not begun
        calls["saves"] = calls.get("saves", 0) + 1
        if calls["saves"] % 2 == 0:
            reached("between-saves")
        return save(self, *args, **kwargs)

    def patched_record(self):
        # TensorFlow records the list twice per save, before and after deleting old checkpoints
        key = Path(self.directory).name == "best"
        calls[key] = calls.get(key, 0) + 1
        if calls[key] % 2 == 1:
            if key:
                reached("best-written")
            else:
                if point == "latest-torn" and seen["n"] + 1 == target:
                    data = Path(f"{self._latest_checkpoint}.data-00000-of-00001")
                    os.truncate(data, data.stat().st_size // 2)
                reached("latest-torn")
                reached("latest-written")
        return record(self)

    def patched_sweep(self):
        if Path(self.directory).name != "best":
            reached("before-sweep")
        return sweep(self)

    write_history = history.write

    def patched_write_history(path, rows):
        write_history(path, rows)
        if rows:
            reached("after-history")

    replace = os.replace

    def patched_replace(src, dst):
        if Path(dst).name == "learning_curves.png":
            reached("inside-plot")
        return replace(src, dst)

    Manager.save, Manager._record_state, Manager._sweep = patched_save, patched_record, patched_sweep
    history.write = patched_write_history
    os.replace = patched_replace
    status = train.main(args)
    return 3 if status == 0 else status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
