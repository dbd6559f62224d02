"""What a person watching a run sees: durations, the speed clock, the progress bar."""
from __future__ import annotations

import dataclasses
import time


def duration(seconds: float) -> str:
    """4 h 05 min, 12 min, 40 s."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


class Clock:
    """This process's training speed, timed from the end of its first call (which traces the step)."""

    ESTIMATE_AFTER = 3  # calls timed before the run's length is estimated

    def __init__(self):
        self.start = self.first_step = None
        self.calls = 0

    def tick(self, step: int) -> None:
        if self.start is None:
            self.start, self.first_step = time.perf_counter(), step
        else:
            self.calls += 1

    def seconds_per_step(self, step: int) -> float | None:
        if self.start is None or step <= self.first_step:
            return None
        return (time.perf_counter() - self.start) / (step - self.first_step)

    def left(self, step: int, until: int) -> str:
        per = self.seconds_per_step(step)
        return "?" if per is None else duration(per * (until - step))


@dataclasses.dataclass
class Bar:
    """The progress bar of one epoch, redrawn in place on stderr after every call of the step."""
    epoch: int  # 1-based
    epochs: int
    steps: int  # steps per epoch
    width: int = 30

    def line(self, done: int, loss: float, accuracy: float, rate: float, elapsed: float, epoch_left: str,
             run_left: str) -> str:
        """done: steps of the epoch done; rate: images/s; elapsed: seconds since the epoch's start."""
        filled = self.width * done // self.steps
        return (f"\repoch {self.epoch}/{self.epochs} [{'=' * filled}{'.' * (self.width - filled)}] "
                f"{done}/{self.steps} loss {loss:.3f} acc {100 * accuracy:.1f}% {rate:.0f} img/s  "
                f"{duration(elapsed)} elapsed, {epoch_left} left in the epoch, {run_left} in the run ")
