"""`python -m lowlevel.bench`: how fast is the raw-op step, against Keras, against the machine, and
under each choice of kernels, devices and formats?  A subcommand each:

    python -m lowlevel.bench [step]        lowlevel's training and inference against Keras'  (bench/speed.py)
    python -m lowlevel.bench kernels       the same under each kernel set, a fresh process each (bench/kernels.py)
    python -m lowlevel.bench profile       milliseconds per training step by op type        (bench/profile.py)
    python -m lowlevel.bench strategy      the step under tf.distribute against one device  (bench/devices.py)
    python -m lowlevel.bench summaries     the step with TensorBoard summaries off and on   (bench/devices.py)
    python -m lowlevel.bench exported DIR  the exported files' latency and images/s         (bench/exported.py)
    python -m lowlevel.bench networks      several networks' training and inference, a row each (bench/networks.py)

Each measures on random data of CIFAR's shape, with the compiled step `python -m lowlevel.train`
runs (bench/timing.py: one fixture and one timed loop), after warm-up calls, around whole calls
that end in a value read back to Python (a synchronization), the best of `--repeats`.  The last
line printed is one JSON object for scripts.  The benchmarks import Keras, as the reference;
the rest of the package never imports them.
"""
from __future__ import annotations

import argparse
import sys

from lowlevel import errors, nets
from lowlevel.config import Parser
from lowlevel.errors import ConfigError
from lowlevel.nets.mobilenet import PRECISIONS

COMMANDS = ("step", "kernels", "profile", "strategy", "summaries", "exported", "networks")


def parser() -> Parser:
    ap = Parser(prog="python -m lowlevel.bench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    common.add_argument("--alpha", type=float, default=1.0, help="width multiplier (default 1.0)")
    common.add_argument("--steps", type=int, default=20, help="steps per timed call (default 20)")
    common.add_argument("--repeats", type=int, default=3, help="timed calls; the fastest counts (default 3)")
    common.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="lowlevel's --precision, and Keras' matching mixed policy (default float32)")
    common.add_argument("--quick", action="store_true", help="a seconds-long smoke run: alpha 0.25, batch 16, "
                                                             "2 steps")
    sub.add_parser("step", parents=[common], help="lowlevel's training and inference against Keras' (the default)")
    k = sub.add_parser("kernels", parents=[common], help="the step under each kernel set, a fresh process each")
    k.add_argument("--row", action="store_true", help=argparse.SUPPRESS)  # one row, in this process's kernels
    sub.add_parser("profile", parents=[common], help="milliseconds per training step by op type")
    s = sub.add_parser("strategy", parents=[common], help="the step under --strategy mirrored against one device")
    s.add_argument("--replicas", type=int, default=2, help="on CPUs: logical devices (default 2)")
    sub.add_parser("summaries", parents=[common], help="the step with TensorBoard summaries off and on")
    e = sub.add_parser("exported", parents=[common], help="the latency and images/s of exported files")
    e.add_argument("path", help="the folder python -m lowlevel.export wrote, or one file in it")
    e.add_argument("--threads", default="1,2", help="thread counts to measure (default 1,2)")
    e.add_argument("--runs", type=int, default=200, help="timed batch-1 calls (default 200)")
    n = sub.add_parser("networks", parents=[common], help="several networks' training and inference, a row each")
    series = ",".join(nets.SERIES)
    n.add_argument("--models", default=series, help=f"comma-separated (default {series}: docs/series.md)")
    return ap


def with_subcommand(argv: list[str]) -> list[str]:
    """argv with `step`, the default subcommand, in front when it names none."""
    return argv if argv and argv[0] in COMMANDS + ("-h", "--help") else ["step", *argv]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(with_subcommand(list(sys.argv[1:] if argv is None else argv)))
    if args.quick:
        args.alpha, args.batch_size, args.steps, args.repeats = 0.25, 16, 2, 1
    return errors.as_command(f"python -m lowlevel.bench {args.command}", lambda: run(args))


def run(args) -> int:
    if min(args.batch_size, args.steps, args.repeats, getattr(args, "replicas", 1)) < 1 or not args.alpha > 0:
        raise ConfigError("--batch-size, --steps, --repeats and --replicas must be at least 1 and --alpha above 0.")
    if args.command == "strategy" and args.batch_size % args.replicas:
        raise ConfigError(f"--batch-size {args.batch_size} does not divide among --replicas {args.replicas}; give "
                          f"a multiple of it.")
    from lowlevel.bench import devices, exported, kernels, networks, profile, speed

    run = {"step": speed.run, "kernels": kernels.run, "profile": profile.run, "strategy": devices.run_strategy,
           "summaries": devices.run_summaries, "exported": exported.run, "networks": networks.run}[args.command]
    return run(args)
