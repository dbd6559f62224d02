"""`python -m lowlevel.plots RUN`: redraw a run's learning curves from its history.csv.

    python -m lowlevel.plots checkpoints/first      # writes checkpoints/first/learning_curves.png

The drawing is lowlevel/figures.py's.
"""
from __future__ import annotations

import sys
from pathlib import Path

from lowlevel import errors
from lowlevel.config import Parser


def parser() -> Parser:
    p = Parser(prog="python -m lowlevel.plots", description="Draw a run's learning curves from its history.csv.")
    p.add_argument("run", help="a run folder, e.g. checkpoints/first; writes RUN/learning_curves.png")
    return p


def main(argv: list[str] | None = None) -> int:
    run = Path(parser().parse_args(argv).run)
    from lowlevel import figures  # matplotlib: after the flags are read

    return errors.as_command("python -m lowlevel.plots", lambda: print(figures.learning_curves(run)))


if __name__ == "__main__":
    sys.exit(main())
